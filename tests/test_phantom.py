"""Tests of the synthetic thorax cohort (``thoraxseg phantom``).

Axis conventions checked here: arrays ``(x, y, z)``, voxel axes towards the
patient's left (+x), posterior (+y) and cranial (+z).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thoraxseg.cli import main
from thoraxseg.data.layout import discover_cases
from thoraxseg.data.phantom import (
    Anatomy,
    PatientParams,
    corruption_matrix,
    course_indices,
    generate_case,
    generate_cohort,
    grid_for,
    sample_patient,
)
from thoraxseg.data.phantom.generator import case_seeds, render
from thoraxseg.data.phantom.geometry import Grid, ellipse_sdf, occupancy, thin_factor
from thoraxseg.data.transforms import course_matrix, grid_scale, move_label
from thoraxseg.data.volume import load_image, load_label
from thoraxseg.errors import InputError
from thoraxseg.labels import Organ

SEED = 3
ORGAN_CODES = (Organ.ESOPHAGUS, Organ.HEART, Organ.TRACHEA, Organ.AORTA)


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small patients written through the CLI."""
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    code = main(["phantom", "--out", str(out), "--cases", "2", "--size", "small", "--seed", str(SEED)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "corrupt"
    return generate_cohort(out, 2, size="small", seed=SEED, corrupt_heart=True, progress=False)


@pytest.fixture(scope="module")
def case_with_masks():
    """Patient 1 of the cohort, regenerated in memory with tissue masks."""
    return generate_case(SEED, 0, "small", tissue_masks=True)


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


# -- layout, dtypes, manifest ----------------------------------------------------------
def test_layout_dtypes_and_geometry(cohort: Path) -> None:
    cases = discover_cases(cohort)
    assert [c.patient_id for c in cases] == ["Patient_01", "Patient_02"]
    assert all(c.split == "train" and c.label_path is not None for c in cases)
    for c in cases:
        img = nib.load(str(c.image_path))
        lab = nib.load(str(c.label_path))
        assert img.get_data_dtype() == np.int16
        assert lab.get_data_dtype() == np.uint8
        assert img.shape == lab.shape and img.shape[:2] == (128, 128) and 30 <= img.shape[2] <= 75
        assert np.allclose(img.affine, lab.affine)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        arr = np.asanyarray(lab.dataobj)
        assert set(np.unique(arr).tolist()) == {0, 1, 2, 3, 4}
        ct = np.asanyarray(img.dataobj)
        assert ct.min() >= -1024 and ct.max() <= 3071
    assert not (cohort / "train" / "Patient_01" / "GT_clean.nii.gz").exists()
    # ordinary permissions (umask), not the owner-only mode of temporary files
    umask = os.umask(0)
    os.umask(umask)
    assert cases[0].image_path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert cohort.stat().st_mode & 0o777 == 0o777 & ~umask


def test_manifest(cohort: Path) -> None:
    man = json.loads((cohort / "phantom.json").read_text())
    assert man["seed"] == SEED and man["size"] == "small" and man["cases"] == 2
    assert man["corrupt_heart"] is False and man["corruption"] is None
    first = man["patients"][0]
    assert first["patient_id"] == "Patient_01"
    params = PatientParams.from_dict(first["params"])
    assert params == PatientParams.from_dict(sample_patient(np.random.default_rng(case_seeds(SEED, 0)[0])).to_dict())
    img = load_image(cohort / "train" / "Patient_01" / "Patient_01.nii.gz")
    assert tuple(first["shape"]) == img.shape
    assert np.allclose(first["spacing_mm"], img.spacing, atol=1e-5)


def test_same_seed_gives_identical_bytes(cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort(tmp_path / "again", 1, size="small", seed=SEED, progress=False)
    for name in ("Patient_01.nii.gz", "GT.nii.gz"):
        a = (cohort / "train" / "Patient_01" / name).read_bytes()
        b = (again / "train" / "Patient_01" / name).read_bytes()
        assert a == b, name
    other = generate_case(SEED + 1, 0, "small")
    first = load_image(cohort / "train" / "Patient_01" / "Patient_01.nii.gz")
    assert other.image.shape != first.shape or not np.array_equal(other.image.array, first.array)


# -- intensities -----------------------------------------------------------------------
def test_hu_per_tissue(case_with_masks) -> None:
    c = case_with_masks
    ct = c.image.array.astype(np.float64)
    lab, p, m = c.labels, c.params, c.masks
    assert -900 <= np.median(ct[m["lung"]]) <= -750
    assert 300 <= ct[m["bone"]].mean() <= 1200
    assert p.hu_cortex > p.hu_marrow >= 300
    assert 20 <= np.median(ct[m["muscle"]]) <= 70
    if m["fat"].sum() > 50:
        assert -130 <= np.median(ct[m["fat"]]) <= -60
    assert np.median(ct[lab == Organ.TRACHEA]) < -700  # the label is the air lumen
    assert 150 <= p.hu_contrast <= 350
    assert abs(np.median(ct[lab == Organ.AORTA]) - p.hu_contrast) < 60
    assert 0 <= ct[lab == Organ.HEART].mean() <= 350
    assert 10 <= np.median(ct[lab == Organ.ESOPHAGUS]) <= 80
    # the esophagus differs from its peri-esophageal tissue by a few HU only
    assert 4 <= p.hu_esophagus - p.hu_sleeve <= 12
    # air outside the body: −1000 with 10–30 HU noise (robust SD; the -1024 clip only touches the tail)
    air = ct[:, :8, :]
    air = air[air > -1024]
    assert abs(np.median(air) + 1000) < 10
    sd = 1.4826 * np.median(np.abs(air - np.median(air)))
    assert 10 <= p.noise_sd <= 30 and 0.6 * p.noise_sd <= sd <= 1.3 * p.noise_sd


def test_partial_volume_edges() -> None:
    """The noise-free rendering has intermediate values across the skin (air ↔ fat/muscle)."""
    params = sample_patient(np.random.default_rng(case_seeds(SEED, 1)[0]))
    grid = grid_for(params, "small")
    img, _ = render(Anatomy(params), grid, np.random.default_rng(0))
    row = img[:, grid.shape[1] // 2 - 10, grid.shape[2] // 2]
    body = np.nonzero(row > -500)[0]
    for edge in (row[body[0] - 2: body[0] + 2], row[body[-1] - 1: body[-1] + 3]):
        mixed = (edge > -990) & (edge < -150)  # neither air nor fat: a partial-volume voxel
        assert 1 <= mixed.sum() <= 2


# -- anatomy -------------------------------------------------------------------------------
def test_organ_positions(case_with_masks) -> None:
    lab = case_with_masks.labels
    heart, trachea = lab == Organ.HEART, lab == Organ.TRACHEA
    eso, aorta = lab == Organ.ESOPHAGUS, lab == Organ.AORTA
    hc, tc, ec = _centroid(heart), _centroid(trachea), _centroid(eso)
    sx = case_with_masks.image.spacing[0]
    assert (hc[0] - tc[0]) * sx > 8.0  # heart centroid ≥ 8 mm to the patient's left of the trachea (midline)
    assert hc[1] < ec[1]  # heart anterior to the esophagus
    zt = np.nonzero(trachea.any(axis=(0, 1)))[0]
    zh = np.nonzero(heart.any(axis=(0, 1)))[0]
    assert zh.max() < zt.min()  # the heart lies below the carina (trachea label ends there)
    assert hc[2] < np.nonzero(eso.any(axis=(0, 1)))[0].mean()  # heart low in the chest
    for k in zt:  # esophagus behind the trachea wherever both are present
        if eso[:, :, k].any():
            assert _centroid(eso[:, :, k])[1] > _centroid(trachea[:, :, k])[1]
    # descending aorta beside the spine: left of and behind the esophagus below the heart centre
    k = int(hc[2]) - 2
    assert aorta[:, :, k].any() and eso[:, :, k].any()
    a_k, e_k = _centroid(aorta[:, :, k]), _centroid(eso[:, :, k])
    assert a_k[0] > e_k[0] and a_k[1] > e_k[1] - 3
    # the arch rises above the carina
    assert np.nonzero(aorta.any(axis=(0, 1)))[0].max() > zt.min() + 1


def test_organ_volumes_are_adult(case_with_masks) -> None:
    c = case_with_masks
    ml = np.prod(c.image.spacing) / 1000.0
    vol = {o: float((c.labels == o).sum() * ml) for o in ORGAN_CODES}
    assert 350 <= vol[Organ.HEART] <= 1100
    assert 60 <= vol[Organ.AORTA] <= 350
    assert 10 <= vol[Organ.TRACHEA] <= 60
    assert 10 <= vol[Organ.ESOPHAGUS] <= 120


@given(seed=st.integers(0, 2**31 - 1), index=st.integers(0, 60))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sampled_anatomy_is_plausible(seed: int, index: int) -> None:
    """Any seed: grids in the SegTHOR ranges and organs in their anatomical places (no rendering)."""
    p = sample_patient(np.random.default_rng(case_seeds(seed, index)[0]))
    full, small = grid_for(p, "full"), grid_for(p, "small")
    assert full.shape[:2] == (512, 512) and 135 <= full.shape[2] <= 284
    assert 0.9 <= full.spacing[0] <= 1.37 and 2.0 <= full.spacing[2] <= 3.7
    assert small.shape[:2] == (128, 128) and small.shape[2] == round(full.shape[2] / 4)
    fov_full = np.array(full.shape) * np.array(full.spacing)
    fov_small = np.array(small.shape) * np.array(small.spacing)
    assert np.allclose(fov_full[:2], fov_small[:2])
    a = Anatomy(p)
    hx, hy, hz = a.heart_center
    assert hx > 0 and hz < -40 and hy < a.y_car  # left, low, anterior to the airway
    ex, ey = a.esophagus_center(np.array([0.0, 50.0]))
    assert np.all(ey > a.y_car)  # behind the trachea
    assert np.all(ex > 0)  # left of the midline
    assert 150 <= p.hu_contrast <= 350 and 10 <= p.noise_sd <= 30
    assert 250 <= 2 * p.body_half_width <= 430  # adult chest width (mm)


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_seed_gives_all_four_organs(seed: int) -> None:
    c = generate_case(seed, 0, "small")
    counts = np.bincount(c.labels.ravel(), minlength=5)
    assert all(counts[int(o)] > 10 for o in ORGAN_CODES)
    assert c.image.array.dtype == np.int16


# -- corrupted hearts ---------------------------------------------------------------------
def test_corrupt_heart_moves_every_heart(corrupted: Path) -> None:
    man = json.loads((corrupted / "phantom.json").read_text())
    assert man["corrupt_heart"] is True
    for i, row in enumerate(man["patients"]):
        folder = corrupted / "train" / row["patient_id"]
        gt = load_label(folder / "GT.nii.gz").array
        ct = load_image(folder / f"{row['patient_id']}.nii.gz").array
        clean = generate_case(SEED, i, "small").labels
        matrix = corruption_matrix(gt.shape)
        assert np.allclose(man["corruption"]["matrix"], matrix)
        assert np.allclose(matrix, course_matrix(scale=grid_scale(gt.shape)))
        expected, _ = move_label(clean, int(Organ.HEART), matrix)
        assert np.array_equal(gt, expected)
        for o in (Organ.ESOPHAGUS, Organ.TRACHEA, Organ.AORTA):  # other organs untouched
            assert np.array_equal(gt == o, clean == o)
        moved, orig = gt == Organ.HEART, clean == Organ.HEART
        overlap = (moved & orig).sum() / orig.sum()
        assert overlap < 0.6
        # a moved heart lands largely on lung/air, a clean one does not (what `check` flags)
        assert (ct[moved] < -400).mean() > 0.15
        assert (ct[orig] < -400).mean() < 0.05
        assert (folder / "GT_clean.nii.gz").exists() == (i == 0)
    clean_file = load_label(corrupted / "train" / "Patient_01" / "GT_clean.nii.gz").array
    assert np.array_equal(clean_file, generate_case(SEED, 0, "small").labels)


# -- CLI and safety -------------------------------------------------------------------------
def test_cli_refuses_to_overwrite(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (cohort / "phantom.json").read_bytes()
    assert main(["phantom", "--out", str(cohort), "--cases", "1"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (cohort / "phantom.json").read_bytes() == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["phantom", "--out", str(other), "--cases", "1", "--overwrite"]) == 1
    assert (other / "notes.txt").read_text() == "keep me"
    assert "not a phantom cohort" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--overwrite", "--force"])  # --force: the old spelling, read with a note
def test_cli_overwrite_replaces_a_phantom_cohort(tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = generate_cohort(tmp_path / "c", 1, seed=1, progress=False)
    (out / "train" / "Patient_01" / "stale.txt").write_text("x")
    assert main(["phantom", "--out", str(out), "--cases", "1", "--seed", "2", flag]) == 0
    assert not (out / "train" / "Patient_01" / "stale.txt").exists()
    assert json.loads((out / "phantom.json").read_text())["seed"] == 2
    assert ("--force is now --overwrite" in capsys.readouterr().err) == (flag == "--force")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize("argv", [["--cases", "0"], ["--size", "huge"], ["--cases", "x"]])
def test_cli_rejects_bad_arguments(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()


def test_api_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 1"):
        generate_cohort(tmp_path / "a", 0)
    with pytest.raises(InputError, match="unknown size"):
        generate_cohort(tmp_path / "a", 1, size="medium")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        generate_cohort(tmp_path / "file", 1)


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import thoraxseg.data.phantom.generator as gen

    calls = {"n": 0}
    real = gen.generate_case

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "generate_case", flaky)
    with pytest.raises(RuntimeError):
        gen.generate_cohort(tmp_path / "half", 2, progress=False)
    assert list(tmp_path.iterdir()) == []


# -- geometry helpers ---------------------------------------------------------------------
def test_grid_affine_and_voxel_mapping() -> None:
    grid = Grid((64, 60, 20), (2.0, 2.0, 5.0), (60.0, 50.0), 10.0, 40.0)
    assert nib.aff2axcodes(grid.affine) == ("L", "P", "S")
    x, y = grid.xy(slice(0, 64), slice(0, 60))
    z = grid.z(slice(0, 20))
    i, j, k = 17, 23, 5
    v = grid.to_voxel(np.array([x[i, j, 0], y[i, j, 0], z[0, 0, k]]))
    assert np.allclose(v, [i, j, k], atol=1e-4)
    assert grid.box((-1000, -1000, -1000), (1000, 1000, 1000)) == (slice(0, 64), slice(0, 60), slice(0, 20))
    assert grid.box((5000, 5000, 5000), (6000, 6000, 6000)) is None


def test_sdf_and_occupancy() -> None:
    d = ellipse_sdf(np.array([0.0, 20.0, 10.0, 0.0]), np.array([0.0, 0.0, 0.0, 5.0]), 10.0, 5.0)
    assert np.allclose(d, [-5.0, 10.0, 0.0, 0.0], atol=1e-3)
    occ = occupancy(np.array([-3.0, -0.5, 0.0, 0.5, 3.0]), 2.0)
    assert occ.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert thin_factor(0.5, 4.0) == pytest.approx(0.0625) and thin_factor(3.0, 1.0) == 1.0


@pytest.mark.slow
def test_full_size_case(tmp_path: Path) -> None:
    """One SegTHOR-size case: 512×512×135–284, in-plane 0.9–1.37 mm, slices 2–3.7 mm, same anatomy."""
    c = generate_case(SEED, 0, "full")
    nx, ny, nz = c.image.shape
    sx, sy, sz = c.image.spacing
    assert (nx, ny) == (512, 512) and 135 <= nz <= 284
    assert 0.9 <= sx <= 1.37 and sx == sy and 2.0 <= sz <= 3.7
    counts = np.bincount(c.labels.ravel(), minlength=5)
    small = generate_case(SEED, 0, "small")
    ml_full = counts * np.prod(c.image.spacing) / 1000
    ml_small = np.bincount(small.labels.ravel(), minlength=5) * np.prod(small.image.spacing) / 1000
    for o in (Organ.HEART, Organ.AORTA):  # same patient on both grids
        assert abs(ml_full[int(o)] - ml_small[int(o)]) / ml_full[int(o)] < 0.2


def test_course_layout(corrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "segthor_train"
    assert main(["phantom", "--out", str(out), "--cases", "2", "--seed", str(SEED), "--corrupt-heart",
                 "--course-layout"]) == 0
    assert str(out / "train" / "Patient_27" / "GT2.nii.gz") in capsys.readouterr().out.replace("\n", "")
    # fewer than 27 patients keep the course's numbering: Patient_01..Patient_{N-1} and the reference Patient_27
    assert sorted(p.name for p in (out / "train").iterdir()) == ["Patient_01", "Patient_27"]
    assert sorted(p.name for p in (out / "train" / "Patient_27").iterdir()) == ["GT.nii.gz", "GT2.nii.gz",
                                                                               "Patient_27.nii.gz"]
    assert not list(out.rglob("GT_clean*"))
    first, ref = discover_cases(out)
    assert first.clean_label_path is None and ref.clean_label_path.name == "GT2.nii.gz"
    # Patient_01 is the ordinary cohort's Patient_01, byte for byte; Patient_27 is patient index 26
    for name in ("Patient_01.nii.gz", "GT.nii.gz"):
        assert (out / "train" / "Patient_01" / name).read_bytes() == (corrupted / "train" / "Patient_01" / name).read_bytes()
    case = generate_case(SEED, 26, "small")
    assert np.array_equal(load_label(ref.clean_label_path).array, case.labels)  # GT2: the clean label
    moved, _ = move_label(case.labels, int(Organ.HEART), corruption_matrix(case.image.shape))
    assert np.array_equal(load_label(ref.label_path).array, moved)  # GT: moved like every other patient
    man = json.loads((out / "phantom.json").read_text())
    assert man["layout"] == "course" and man["reference"] == "train/Patient_27/GT2.nii.gz"
    assert [p["patient_id"] for p in man["patients"]] == ["Patient_01", "Patient_27"]


def test_course_layout_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert main(["phantom", "--out", str(out), "--cases", "2", "--course-layout"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"thoraxseg: error: {out}: the course layout is the course's corrupted copy: it needs corrupt_heart (--corrupt-heart)"
    assert main(["phantom", "--out", str(out), "--cases", "41", "--course-layout", "--corrupt-heart"]) == 1
    assert "the course's copy has 40 patients; --cases 41 is more" in capsys.readouterr().err
    assert not out.exists()
    assert [i + 1 for i in course_indices(27)] == list(range(1, 28))
    assert course_indices(1) == [26]
