"""Label QA (`thoraxseg qa`): verdicts, the fix gate, outputs, --fix atomicity, folds, bad input.

Fast tests use the synthetic thorax with a *known* reference (the clean label, or a deliberately
altered one), so every verdict is determined by construction. The slow tests at the end use the
session's shared phantom-trained CustomNet (``phantom_2d_run``) as the reference.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

from thoraxseg.cli import main
from thoraxseg.data.overlap import iou
from thoraxseg.data.volume import load_label
from thoraxseg.labels import Organ
from thoraxseg.qa import assess, run, synthetic
from thoraxseg.qa.assess import Gate, assess_case
from thoraxseg.qa.run import CSV_COLUMNS, cross_validated_reference, cv_folds, run_qa
from thoraxseg.realign import synthetic as thorax_synth
from thoraxseg.realign.estimate import APPLY_MODE
from thoraxseg.realign.geometry import centroid, move_label_cropped, rigid_voxel_matrix

HEART, AORTA, ESOPH = int(Organ.HEART), int(Organ.AORTA), int(Organ.ESOPHAGUS)
SHAPE = (64, 64, 32)
SPACING = (5.0, 5.0, 8.0)


@pytest.fixture(scope="module")
def thorax() -> tuple[np.ndarray, np.ndarray]:
    return thorax_synth.synthetic_thorax(SHAPE, SPACING, seed=3)


@pytest.fixture(autouse=True)
def no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THORAXSEG_NO_PROGRESS", "1")


def _move(labels: np.ndarray, organ: int, deg: float, shift_mm: tuple[float, float, float]) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    m = rigid_voxel_matrix([0.0, 0.0, np.deg2rad(deg)], shift_mm, centroid(labels == organ), SPACING)
    moved, _ = move_label_cropped(labels, organ, m)
    return moved, m


def _by_organ(rows: list[dict]) -> dict[str, dict]:
    return {r["organ"]: r for r in rows}


def test_doctests() -> None:
    for module in (assess, run, synthetic):
        assert doctest.testmod(module).failed == 0, module.__name__


# ----------------------------------------------------------------------------- verdicts and gate


def test_moved_heart_is_misplaced_and_fixed_to_the_exact_inverse(thorax) -> None:
    ct, clean = thorax
    moved, m = _move(clean, HEART, 25.0, (15.0, -10.0, 8.0))
    rows, fixed = assess_case(moved, clean, SPACING, ct)
    r = _by_organ(rows)
    assert r["heart"]["verdict"] == "misplaced" and r["heart"]["fix_accepted"]
    assert all(r[o]["verdict"] == "consistent" and not r[o]["fix_accepted"] for o in ("esophagus", "aorta"))
    assert r["trachea"]["verdict"] == "absent"  # the synthetic thorax has no trachea
    limit, _ = move_label_cropped(moved, HEART, np.linalg.inv(m), APPLY_MODE)
    # The reference is the clean label itself, so the fit must reach the nearest-neighbour limit of
    # the exact inverse up to the realign estimator's sub-voxel error (0.03 IoU, the target).
    assert iou(fixed == HEART, clean == HEART) >= iou(limit == HEART, clean == HEART) - 0.03
    assert r["heart"]["fit_move_mm"] > Gate().min_move_mm
    # other organs keep every voxel
    for code in (ESOPH, AORTA):
        assert np.array_equal(fixed == code, moved == code)


def test_clean_labels_are_consistent_and_unchanged(thorax) -> None:
    ct, clean = thorax
    rows, fixed = assess_case(clean, clean, SPACING, ct)
    assert {r["verdict"] for r in rows} == {"consistent", "absent"}
    assert not any(r["fix_accepted"] for r in rows)
    assert np.array_equal(fixed, clean)


def test_missing_extra_swapped_and_disagreement(thorax) -> None:
    ct, clean = thorax
    no_aorta = np.where(clean == AORTA, 0, clean).astype(np.uint8)
    assert _by_organ(assess_case(no_aorta, clean, SPACING, ct)[0])["aorta"]["verdict"] == "missing"
    assert _by_organ(assess_case(clean, no_aorta, SPACING, ct)[0])["aorta"]["verdict"] == "extra"
    swapped = clean.copy()
    swapped[clean == HEART] = AORTA
    swapped[clean == AORTA] = HEART
    rows, fixed = assess_case(swapped, clean, SPACING, ct)
    r = _by_organ(rows)
    assert r["heart"]["verdict"] == r["aorta"]["verdict"] == "swapped"
    assert np.array_equal(fixed, swapped)  # flagged, never fixed
    # A heart label cut in half (caudal half only): no rigid move makes it agree with the reference.
    half = clean.copy()
    zc = round(float(centroid(clean == HEART)[2]))
    half[:, :, zc:][half[:, :, zc:] == HEART] = 0
    rows, fixed = assess_case(half, clean, SPACING, ct)
    r = _by_organ(rows)["heart"]
    assert r["verdict"] == "disagreement" and not r["fix_accepted"]
    assert np.array_equal(fixed, half)


def test_fix_that_would_put_the_label_on_air_is_rejected(thorax) -> None:
    ct, clean = thorax
    # The reference is wrong: its heart sits 40 mm to the side, partly on the lung. The correct
    # label "agrees after a rigid fit", but the fit would raise its on-air fraction: rejected.
    wrong_ref, _ = _move(clean, HEART, 0.0, (45.0, 0.0, 0.0))
    rows, fixed = assess_case(clean, wrong_ref, SPACING, ct)
    r = _by_organ(rows)["heart"]
    assert r["verdict"] == "misplaced" and not r["fix_accepted"]
    assert r["air_after"] > r["air_fraction"] + Gate().air_tolerance
    assert "fix rejected" in r["note"]
    assert np.array_equal(fixed, clean)


def test_fix_that_would_push_the_label_out_of_the_grid_is_rejected(thorax) -> None:
    _, clean = thorax
    # The reference's heart sits 60 mm higher, its upper part cut off by the grid's last slice (a model
    # that misplaces the organ along z). The fit follows it: 15 % of the label's voxels would leave the
    # grid. A CT of uniform soft tissue keeps the on-air gate and the CT refinement out of the decision.
    ref, _ = _move(clean, HEART, 0.0, (0.0, 0.0, 60.0))
    assert (ref == HEART).sum() < 0.9 * (clean == HEART).sum()
    soft = np.full(SHAPE, 40, dtype=np.int16)
    rows, fixed = assess_case(clean, ref, SPACING, soft)
    r = _by_organ(rows)["heart"]
    assert r["verdict"] == "misplaced" and not r["fix_accepted"] and "would lose" in r["note"]
    assert np.array_equal(fixed, clean)
    # the same with the gate opened: the fix goes through and the label is cut (the gate decides)
    rows, fixed = assess_case(clean, ref, SPACING, soft, gate=Gate(max_lost_fraction=1.0))
    assert _by_organ(rows)["heart"]["fix_accepted"]
    assert (fixed == HEART).sum() < (1 - Gate().max_lost_fraction) * (clean == HEART).sum()


def test_a_reference_of_another_extent_is_not_a_misplacement(thorax) -> None:
    ct, clean = thorax
    # The reference kept only the cranial half of the esophagus, drawn 10 mm off (a model that misses
    # slices): the clean label's best rigid fit slides it along that piece (and partly out of the grid),
    # gaining Dice far beyond the thresholds (here 0.10 -> 0.65; the fit_dice is 0.45). The volumes differ
    # ~1.9x (half the organ, by construction), more than max_volume_ratio: a rigid move keeps the volume.
    m = clean == ESOPH
    cut = int(np.searchsorted(np.cumsum(m.sum(axis=(0, 1))) / m.sum(), 0.5))
    ref = clean.copy()
    ref[:, :, :cut][ref[:, :, :cut] == ESOPH] = 0
    ref, _ = _move(ref, ESOPH, 0.0, (10.0, 0.0, 0.0))
    assert m.sum() / (ref == ESOPH).sum() > Gate().max_volume_ratio  # the premise
    rows, fixed = assess_case(clean, ref, SPACING, ct, organs=[ESOPH])
    (r,) = rows
    assert r["verdict"] == "disagreement" and not r["fix_accepted"]
    assert "label / reference volume" in r["note"]
    assert np.array_equal(fixed, clean)
    # opened wide, the same fit is called misplaced; the fix is then refused by the lost-voxel gate (the
    # slide pushes part of the label out of the grid), and with that gate opened too the label is moved
    rows, _ = assess_case(clean, ref, SPACING, ct, organs=[ESOPH], gate=Gate(max_volume_ratio=10.0))
    assert rows[0]["verdict"] == "misplaced" and not rows[0]["fix_accepted"] and "would lose" in rows[0]["note"]
    rows, fixed = assess_case(clean, ref, SPACING, ct, organs=[ESOPH],
                              gate=Gate(max_volume_ratio=10.0, max_lost_fraction=1.0))
    (wide,) = rows
    assert wide["verdict"] == "misplaced" and wide["fix_accepted"]
    assert wide["dice_fit_reference"] == r["dice_fit_reference"] >= Gate().fit_dice[ESOPH] + Gate().min_gain
    assert not np.array_equal(fixed, clean)


def test_a_move_the_ct_contradicts_is_flagged_not_fixed(thorax) -> None:
    ct, clean = thorax
    # The label is right (drawn on this CT); the reference has the aorta 10 mm off. The fit onto the
    # reference gains far beyond the gate (Dice 0.52 -> 0.97 on this phantom), but refined on the CT the
    # label goes back towards the aorta's edges and agrees with the reference no better than before
    # (0.45 here, 0.06 below; a margin the refinement's few-voxel end point cannot close): the CT
    # contradicts the reference, so the organ is flagged, not moved.
    ref, _ = _move(clean, AORTA, 0.0, (10.0, 0.0, 0.0))
    rows, fixed = assess_case(clean, ref, SPACING, ct, organs=[AORTA])
    (r,) = rows
    assert r["verdict"] == "disagreement" and not r["fix_accepted"]
    assert "the CT does not confirm the move" in r["note"]
    assert r["ct_refine"]["kept"] and r["ct_refine"]["dice_reference"] <= r["dice"]
    assert np.array_equal(fixed, clean)
    # without the refinement the same fit is called misplaced; the lost-voxel gate refuses it too (it would put
    # 17 % of the aorta under other organs), and with that gate opened it is applied: the CT is what decides
    rows, _ = assess_case(clean, ref, SPACING, ct, organs=[AORTA], gate=Gate(ct_refine=False))
    assert rows[0]["verdict"] == "misplaced" and "under other organs" in rows[0]["note"]
    rows, fixed = assess_case(clean, ref, SPACING, ct, organs=[AORTA], gate=Gate(ct_refine=False, max_lost_fraction=1))
    assert rows[0]["verdict"] == "misplaced" and rows[0]["fix_accepted"] and not np.array_equal(fixed, clean)
    # the same move of the label itself, against a right reference, is confirmed by the CT and fixed. On this
    # coarse phantom (8 mm slices; the aorta runs through the grid's last slice) the refinement also slides the
    # tube ~16 mm along its axis, which would cut 14 % of it off: the fit onto the reference is applied instead
    moved, _ = _move(clean, AORTA, 0.0, (10.0, 0.0, 0.0))
    (r,) = assess_case(moved, clean, SPACING, ct, organs=[AORTA])[0]
    assert r["verdict"] == "misplaced" and r["fix_accepted"]
    assert r["ct_refined"] or "would lose" in r["ct_refine"]["dropped"]
    assert r["dice_after"] >= r["dice"] + Gate().min_gain


def test_small_reference_speck_counts_as_absent(thorax) -> None:
    ct, clean = thorax
    ref = np.where(clean == AORTA, 0, clean).astype(np.uint8)
    ref[5, 5, 5] = AORTA  # 0.2 mL < min_reference_ml
    assert _by_organ(assess_case(clean, ref, SPACING, ct)[0])["aorta"]["verdict"] == "extra"


# ----------------------------------------------------------------------------- dataset level


def _dataset(root: Path, thorax, moves: dict[str, tuple[float, tuple[float, float, float]] | None]) -> tuple[
        Path, Path, dict[str, np.ndarray]]:
    """Cases with the heart moved as given; a reference folder holding the clean labels."""
    ct, clean = thorax
    ref_dir = root / "ref"
    ref_dir.mkdir(parents=True)
    matrices = {}
    for pid, move in moves.items():
        labels = clean
        if move is not None:
            labels, matrices[pid] = _move(clean, HEART, *move)
        folder = thorax_synth.write_case(root / "data" / "train" / pid, ct, labels, SPACING)
        from thoraxseg.data.volume import load_image, save_label

        save_label(clean, load_image(folder / f"{pid}.nii.gz"), ref_dir / f"{pid}.nii.gz")
    return root / "data", ref_dir, matrices


def test_run_qa_writes_tables_and_a_corrected_copy(tmp_path: Path, thorax) -> None:
    data, ref, _ = _dataset(tmp_path, thorax, {"Patient_01": (-20.0, (10.0, 10.0, 0.0)), "Patient_02": None})
    result = run_qa(data, reference=ref, out=tmp_path / "qa", fix=tmp_path / "fixed")
    assert result["summary"]["fixed_patients"] == ["Patient_01"]
    assert result["summary"]["flagged_patients"] == ["Patient_01"]
    lines = (tmp_path / "qa" / "qa.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS)
    assert len(lines) == 1 + 2 * 4  # two patients × four organs
    saved = json.loads((tmp_path / "qa" / "qa.json").read_text())
    assert saved["format"] == "thoraxseg-qa/1" and saved["fix"]["patients"] == ["Patient_01"]
    assert (tmp_path / "qa" / "overlays" / "Patient_01_heart.png").stat().st_size > 1000
    # images and the clean patient's label byte for byte; the fixed label: heart moved back, rest untouched
    for rel in ("train/Patient_01/Patient_01.nii.gz", "train/Patient_02/Patient_02.nii.gz",
                "train/Patient_02/GT.nii.gz"):
        assert (tmp_path / "fixed" / rel).read_bytes() == (data / rel).read_bytes()
    before = load_label(data / "train/Patient_01/GT.nii.gz").array
    after = load_label(tmp_path / "fixed/train/Patient_01/GT.nii.gz").array
    clean = thorax[1]
    assert iou(after == HEART, clean == HEART) > iou(before == HEART, clean == HEART) + 0.3
    for code in (ESOPH, AORTA):
        assert np.array_equal(after == code, before == code)


def test_fully_clean_dataset_changes_nothing(tmp_path: Path, thorax) -> None:
    data, ref, _ = _dataset(tmp_path, thorax, {"Patient_01": None, "Patient_02": None})
    result = run_qa(data, reference=ref, out=tmp_path / "qa", fix=tmp_path / "fixed")
    assert result["summary"]["fixed_patients"] == [] and result["summary"]["flagged_patients"] == []
    for f in sorted(data.rglob("*.nii.gz")):
        assert (tmp_path / "fixed" / f.relative_to(data)).read_bytes() == f.read_bytes()


def test_cv_folds_partition_the_patients() -> None:
    ids = [f"Patient_{i:02d}" for i in range(1, 8)]
    folds = cv_folds(ids, 3, seed=4)
    assert sorted(p for f in folds for p in f) == ids
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    assert cv_folds(ids, 3, seed=4) == folds


def test_cross_validation_predicts_each_patient_with_the_run_that_did_not_see_it(tmp_path: Path, thorax) -> None:
    data, _, _ = _dataset(tmp_path, thorax, {f"Patient_0{i}": None for i in range(1, 6)})
    trained: dict[str, list[str]] = {}
    predicted_by: dict[str, str] = {}
    modes: set[object] = set()

    def fake_train(model, train_data, out, **kw):  # records which patients the fold run saw
        out.mkdir(parents=True)
        trained[str(out)] = sorted(p.name for p in (Path(train_data) / "train").iterdir())
        return out

    def fake_predict(run_dir, images, out, **kw):  # "predicts" the GT of the patients it is given
        from thoraxseg.data.layout import discover_cases
        from thoraxseg.data.volume import load_image, save_label

        modes.add(kw["postprocess"])
        Path(out).mkdir(parents=True, exist_ok=True)
        for c in discover_cases(images):
            predicted_by[c.patient_id] = str(run_dir)
            gt = load_label(data / "train" / c.patient_id / "GT.nii.gz")
            save_label(gt.array, load_image(c.image_path), Path(out) / f"{c.patient_id}.nii.gz")

    result = run_qa(data, cross_validate=2, out=tmp_path / "qa",
                    cv_options={"train_fn": fake_train, "predict_fn": fake_predict})
    folds = result["reference"]["folds"]
    assert len(folds) == 2 and len(trained) == 2
    assert sorted(predicted_by) == [f"Patient_0{i}" for i in range(1, 6)]
    assert modes == {"largest"}  # the reference keeps each organ's largest component alone
    for pid, run_dir in predicted_by.items():
        assert pid not in trained[run_dir]  # never predicted by a run that trained on it
        assert len(trained[run_dir]) >= 2
    assert result["summary"]["flagged_patients"] == []
    # fold runs are kept in the QA folder; the temporary link folders are gone
    assert sorted(p.name for p in (tmp_path / "qa" / "cv").iterdir()) == ["fold_1", "fold_2"]
    assert [p.name for p in (tmp_path / "qa" / "cv" / "fold_1").iterdir()] == ["run"]
    assert cross_validated_reference is run.cross_validated_reference


# ----------------------------------------------------------------------------- bad input


def _error(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("thoraxseg: error: "), err
    return err


def test_bad_input_one_line_nothing_written(tmp_path: Path, thorax, capsys) -> None:
    data, ref, _ = _dataset(tmp_path, thorax, {"Patient_01": (20.0, (5.0, 0.0, 0.0)), "Patient_02": None})
    out, fix = tmp_path / "qa", tmp_path / "fixed"
    base = ["qa", "--data", str(data), "--out", str(out), "--fix", str(fix)]
    assert "folder not found" in _error(["qa", "--data", str(tmp_path / "nope"), "--reference", str(ref),
                                         "--out", str(out)], capsys)
    assert "config.yaml missing" in _error([*base, "--run", str(tmp_path)], capsys)
    assert "needs 2 to 2 folds" in _error([*base, "--cross-validate", "3"], capsys)
    (ref / "Patient_02.nii.gz").rename(tmp_path / "Patient_02.nii.gz")
    assert "no reference prediction Patient_02.nii.gz" in _error([*base, "--reference", str(ref)], capsys)
    # a reference on another grid: found while processing; the QA folder and the copy must not appear
    ct, clean = thorax
    thorax_synth.write_case(tmp_path / "other", ct[:, :, :20], clean[:, :, :20], SPACING)
    (tmp_path / "other" / "GT.nii.gz").rename(ref / "Patient_02.nii.gz")
    assert "grid differs from the reference prediction" in _error([*base, "--reference", str(ref)], capsys)
    assert "must be outside the dataset" in _error(["qa", "--data", str(data), "--reference", str(ref), "--out", str(data / "qa")],
                              capsys)
    assert not out.exists() and not fix.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Patient_02.nii.gz", "data", "other", "ref"]
    out.mkdir()
    assert "already exists" in _error([*base, "--reference", str(ref)], capsys)


def test_cli_no_ct_refine(tmp_path: Path, thorax, capsys) -> None:
    data, ref, _ = _dataset(tmp_path, thorax, {"Patient_01": (-20.0, (10.0, 10.0, 0.0)), "Patient_02": None})
    for flag, out in (([], "qa"), (["--no-ct-refine"], "qa_plain")):
        assert main(["qa", "--data", str(data), "--reference", str(ref), "--out", str(tmp_path / out), *flag]) == 0
    assert "Patient_01" in capsys.readouterr().out
    refined, plain = (json.loads((tmp_path / o / "qa.json").read_text()) for o in ("qa", "qa_plain"))
    assert refined["gate"]["ct_refine"] is True and plain["gate"]["ct_refine"] is False
    heart = [next(r for r in q["patients"][0]["organs"] if r["organ"] == "heart") for q in (refined, plain)]
    assert heart[0]["ct_refine"] is not None and heart[1]["ct_refine"] is None and heart[1]["ct_refined"] is None
    assert heart[0]["verdict"] == heart[1]["verdict"] == "misplaced"


def test_cli_argument_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["qa", "--data", str(tmp_path), "--cross-validate", "1"])
    assert exc.value.code == 2 and "at least 2 folds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["qa", "--data", str(tmp_path)])
    assert exc.value.code == 2 and "one of the arguments" in capsys.readouterr().err


# ----------------------------------------------------------------------------- study report


def test_report_shows_the_qa_section_with_overlays(tmp_path: Path, thorax) -> None:
    from thoraxseg.report import build_report

    data, ref, _ = _dataset(tmp_path, thorax, {"Patient_01": (-20.0, (10.0, 10.0, 0.0)), "Patient_02": None})
    study = tmp_path / "study"
    run_qa(data, reference=ref, out=study / "realign" / "qa")
    html = build_report(study, tmp_path / "report.html").read_text(encoding="utf-8")
    section = html.split('id="realign"', 1)[1].split("<section", 1)[0]
    assert "Label QA (realign/qa/qa.csv)" in section
    assert "misplaced → fixed" in section and "fixed (rigid fit accepted by the gate): Patient_01" in section
    assert section.count("data:image/png;base64,") == 1  # the one misplaced organ's overlay


def test_study_config_realign_qa(tmp_path: Path) -> None:
    from thoraxseg.errors import ConfigError
    from thoraxseg.study.config import StudyConfig

    base = {"data": {"phantom": {"cases": 3}}, "arms": {"customnet": {}}}
    cfg = StudyConfig.from_dict({**base, "realign": {"method": "qa", "qa_run": "runs/ref"}}, base_dir=tmp_path)
    assert cfg.realign.qa_run == str((tmp_path / "runs" / "ref").resolve())  # relative to the config file
    with pytest.raises(ConfigError, match=r"realign\.method qa needs realign\.qa_run"):
        StudyConfig.from_dict({**base, "realign": {"method": "qa"}})
    with pytest.raises(ConfigError, match=r"only used with realign\.method: qa"):
        StudyConfig.from_dict({**base, "realign": {"method": "sweep", "qa_run": "x"}})
    with pytest.raises(ConfigError, match="'icp' is not one of sweep, elastix, qa"):
        StudyConfig.from_dict({**base, "realign": {"method": "icp"}})


# ----------------------------------------------------------------------------- slow: a trained reference


def _assert_fixed_within_limit(result: dict, data: Path, fix: Path, truth: dict, bound: float,
                               max_rotation_deg: float = 180.0) -> int:
    """Every moved organ is found and fixed within ``bound`` IoU of the exact inverse and within
    ``max_rotation_deg`` of its rotation; returns how many."""
    from thoraxseg.data.phantom import generate_case
    from thoraxseg.realign.geometry import relative_rotation_deg

    n = 0
    for t in truth["patients"]:
        if t["organ"] is None:
            continue
        p = next(p for p in result["patients"] if p["patient"] == t["patient"])
        assert p["fixed"] == [t["organ"]], (t["patient"], p["organs"])
        code = int(Organ[t["organ"].upper()])
        clean = generate_case(truth["seed"], t["index"], truth["size"]).labels == code
        fixed = load_label(fix / "train" / t["patient"] / "GT.nii.gz")
        assert iou(fixed.array == code, clean) >= t["limit_iou"] - bound, t["patient"]
        row = next(r for r in p["organs"] if r["organ"] == t["organ"])
        rotation = relative_rotation_deg(np.asarray(row["matrix_voxel"]), np.linalg.inv(np.asarray(t["matrix_voxel"])),
                                         fixed.spacing)
        assert rotation < max_rotation_deg, (t["patient"], rotation)
        n += 1
    return n


@pytest.mark.slow
def test_qa_with_a_phantom_trained_run_finds_and_fixes_per_patient_moves(tmp_path: Path, phantom_2d_run) -> None:
    # Patients 22-25 of seed 7: the shared run trained on 0-9 and never saw them. move_seed 3 moves
    # organs of some of them (heart or aorta, each its own random move) and leaves the others clean.
    truth = synthetic.misplaced_cohort(tmp_path / "data", range(22, 26), seed=7, move_seed=3, moved_fraction=0.5)
    moved = [t for t in truth["patients"] if t["organ"]]
    assert 1 <= len(moved) < len(truth["patients"])  # the cohort holds both kinds
    result = run_qa(tmp_path / "data", run=phantom_2d_run, out=tmp_path / "qa", fix=tmp_path / "fixed")
    # The fit onto the reference (a 2D model, heart Dice ~0.9, aorta ~0.75) inherits the model's error: alone it
    # left IoU gaps to the nearest-neighbour limit of 0.02-0.41 (benchmarks/qa.py, 7 moved organs of 20 patients;
    # 0.12 on Patient_23 here). Refined on the CT: 0.01-0.09 there, 0.01-0.11 on these patients (0.01-0.13 there
    # with the fixture at fov_prob 0.6 and the registration's guard). 0.20 holds that with margin for a reference
    # trained on another CPU; the moved labels start 0.37-0.88 below the limit.
    assert _assert_fixed_within_limit(result, tmp_path / "data", tmp_path / "fixed", truth, 0.20) == len(moved)
    for t in truth["patients"]:
        if t["organ"] is None:  # clean patients: no fix, byte-identical label in the copy
            rel = Path("train") / t["patient"] / "GT.nii.gz"
            assert (tmp_path / "fixed" / rel).read_bytes() == (tmp_path / "data" / rel).read_bytes()
            p = next(p for p in result["patients"] if p["patient"] == t["patient"])
            assert not p["fixed"] and not any(r["verdict"] == "misplaced" for r in p["organs"])
    assert (tmp_path / "qa" / "reference" / "Patient_23.nii.gz").is_file()


@pytest.mark.slow
def test_qa_fixes_the_course_corruption_without_the_reference_pair(tmp_path: Path, phantom_2d_run) -> None:
    from thoraxseg.qa.synthetic import course_cohort

    truth = course_cohort(tmp_path / "data", (26, 27), seed=7)
    result = run_qa(tmp_path / "data", run=phantom_2d_run, out=tmp_path / "qa", fix=tmp_path / "fixed")
    # benchmarks/qa.py measured IoU gaps to the nearest-neighbour limit of -0.003-0.15 on 20 course-corrupted
    # hearts by the fit onto the reference alone (0.153 on Patient_27 here), 0.004-0.071 refined on the CT
    # (0.05 and 0.02 here; -0.000-0.054 with the fixture at fov_prob 0.6 and the registration's guard); the moved
    # hearts start ~0.9 IoU below the limit. 0.12: margin for another CPU.
    assert _assert_fixed_within_limit(result, tmp_path / "data", tmp_path / "fixed", truth, 0.12) == 2


@pytest.mark.slow
def test_qa_meets_the_correction_targets_on_the_segthor_grid(tmp_path: Path, phantom_2d_run) -> None:
    # The targets, judged on the SegTHOR-like grid (512 x 512, ~1 mm in-plane, 2-3 mm slices): every
    # fixed label within 0.03 IoU of the exact inverse (course hearts 0.02), rotation error < 0.5 degrees,
    # nothing changed on a clean patient. The reference is the shared small-grid run predicting this grid.
    # Measured with it (the fixture trained here, 2 threads): gaps 0.003 (heart) and 0.004 (aorta), rotation
    # errors 0.19 and 0.03 degrees, the course heart 0.000 and 0.04 degrees; benchmarks/qa.py's 27 organs of this
    # grid 0.000-0.020 and at most 0.37 degrees. The targets themselves are the bounds: the CT refinement, not
    # the reference, sets the result. The fixture retrained under ONEDNN_MAX_CPU_ISA=AVX2 (another trajectory,
    # the same validation Dice) gave 0.003 and 0.005, 0.16 and 0.04 degrees (course 0.000, 0.00), once the guard
    # of the registration (realign.estimate, step 5) kept its heart fit from ending at 68 degrees. Small
    # phantoms' 8-12 mm slices cannot resolve 0.5 degrees out of plane (README, qa section): judged here.
    truth = synthetic.misplaced_cohort(tmp_path / "data", (20, 21, 22), seed=7, move_seed=9, size="full")
    assert [t["organ"] for t in truth["patients"]] == [None, "heart", "aorta"]  # move_seed 9 draws both organs
    result = run_qa(tmp_path / "data", run=phantom_2d_run, out=tmp_path / "qa", fix=tmp_path / "fixed",
                    overlays=False)
    assert _assert_fixed_within_limit(result, tmp_path / "data", tmp_path / "fixed", truth, 0.03, 0.5) == 2
    assert result["patients"][0]["fixed"] == []
    rel = Path("train") / "Patient_21" / "GT.nii.gz"
    assert (tmp_path / "fixed" / rel).read_bytes() == (tmp_path / "data" / rel).read_bytes()
    # every organ the moves left alone is called consistent (no false alarm)
    moved = {(t["patient"], t["organ"]) for t in truth["patients"]}
    assert all(r["verdict"] == "consistent" for p in result["patients"] for r in p["organs"]
               if (p["patient"], r["organ"]) not in moved)

    course = synthetic.course_cohort(tmp_path / "course", (23,), seed=7, size="full")
    result = run_qa(tmp_path / "course", run=phantom_2d_run, out=tmp_path / "qa_course", fix=tmp_path / "fixed_course",
                    overlays=False)
    assert _assert_fixed_within_limit(result, tmp_path / "course", tmp_path / "fixed_course", course, 0.02, 0.5) == 1


@pytest.mark.slow
def test_study_with_realign_method_qa_fixes_before_the_split(tmp_path: Path, phantom_2d_run) -> None:
    import yaml

    from study_fixture import tiny_study_config

    truth = synthetic.misplaced_cohort(tmp_path / "raw", range(22, 26), seed=7, move_seed=3, moved_fraction=0.5)
    cfg = tiny_study_config({"root": str(tmp_path / "raw"), "test_cases": 99},
                            realign={"enabled": "auto", "label": "heart", "method": "qa",
                                     "qa_run": str(phantom_2d_run)})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    # data.test_cases 99 > the dataset: the split stage refuses, which shows realign let the study go on
    assert main(["study", "--config", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "study")]) == 1
    marker = json.loads((tmp_path / "study" / ".stages" / "realign.json").read_text())
    expected = sorted(t["patient"] for t in truth["patients"] if t["organ"])
    assert marker["applied"] is True and sorted(marker["fixed"]) == expected
    assert (tmp_path / "study" / "realign" / "qa" / "qa.csv").is_file()
    assert (tmp_path / "study" / "data" / "fixed" / "train").is_dir()


# ----------------------------------------------------------------------------- the CT refinement


def test_an_exact_fit_is_not_moved_by_the_ct_refinement(thorax) -> None:
    # The reference is the clean label, so the fit onto it is already the exact inverse. The synthetic
    # heart (45 HU) is barely brighter than the body (40 HU, noise 15 HU): the refinement finds no edge
    # worth a voxel of motion and must keep the exact fit (its sub-voxel wander is below the gate).
    ct, clean = thorax
    moved, _ = _move(clean, HEART, 25.0, (15.0, -10.0, 8.0))
    row = _by_organ(assess_case(moved, clean, SPACING, ct)[0])["heart"]
    assert row["verdict"] == "misplaced" and row["ct_refined"] is False
    assert row["ct_refine"]["motion_vox"] < 0.25 or row["ct_refine"]["gain_z"] < 3.0
    without = _by_organ(assess_case(moved, clean, SPACING, ct, gate=Gate(ct_refine=False))[0])["heart"]
    assert row["matrix_voxel"] == without["matrix_voxel"] and without["ct_refine"] is None


def test_a_label_on_two_slices_is_refined_in_plane_only() -> None:
    # A label on two slices has no surface across slices: a tilt or a z shift would be fitted to nothing
    # (before this guard a one-slice square was tilted by 3.8°). Its in-plane offset is still found.
    from thoraxseg.realign.intensity import refine_on_image

    mask = np.zeros((40, 40, 6), bool)
    mask[10:22, 12:26, 2:4] = True
    ct = np.where(np.roll(mask, 2, axis=0), 200.0, -50.0)  # the organ on the CT lies 2 voxels further along x
    matrix, info = refine_on_image(mask, ct, np.eye(4), (1.0, 1.0, 2.0))
    assert info["in_plane_only"] and info["kept"], info
    assert info["rotation_deg"][:2] == [0.0, 0.0] and info["shift_mm"][2] == 0.0
    # frozen: exactly no tilt and no z motion; in-plane the square's edges fix the shift to within half a
    # voxel and leave no turn worth more than the revert threshold (bound 1°: a bar, not a measured value)
    assert np.allclose(matrix[2, :3], [0.0, 0.0, 1.0]) and matrix[2, 3] == 0.0, matrix
    assert abs(info["rotation_deg"][2]) < 1.0, info
    assert abs(matrix[0, 3] + 2.0) < 0.5 and abs(matrix[1, 3]) < 0.5, matrix



def _realct_moved(realct_dir: Path, organ: int) -> tuple:
    """The real CT with ``organ`` moved by the tests' rigid move (20° in-plane, 2°/−3° tilts, (8, −6, 4) mm).

    Returns the label image, the CT (HU), the clean labels, the spacing (mm), the organ's centroid (voxels),
    the moved labels and the exact correction (the move's inverse)."""
    from thoraxseg.data.volume import load_image

    image, labels = load_image(realct_dir / "Patient_R1.nii.gz"), load_label(realct_dir / "GT.nii.gz")
    ct, clean, sp = image.array, labels.array, np.asarray(labels.spacing)
    c = centroid(clean == organ)
    move = rigid_voxel_matrix(np.deg2rad([2.0, -3.0, 20.0]), (8.0, -6.0, 4.0), c, sp)
    moved, _ = move_label_cropped(clean, organ, move)
    return labels, ct, clean, sp, c, moved, np.linalg.inv(move)


@pytest.mark.realct
@pytest.mark.parametrize("organ", [HEART, AORTA])
def test_ct_refinement_corrects_a_biased_reference_on_the_real_ct(realct_dir: Path, organ: int) -> None:
    """A model's reference is off by a few mm and degrees; the fit onto it inherits that, the CT refinement not."""
    from thoraxseg.realign.geometry import relative_rotation_deg

    labels, ct, clean, sp, c, moved, truth = _realct_moved(realct_dir, organ)
    # the "model": the clean organ turned by 3° in-plane and shifted by (2.5, -2.5, 2) mm
    biased, _ = move_label_cropped(clean, organ, rigid_voxel_matrix(np.deg2rad([0.0, 0.0, 3.0]), (2.5, -2.5, 2.0), c, sp))
    limit, _ = move_label_cropped(moved, organ, truth, APPLY_MODE)
    best = iou(limit == organ, clean == organ)
    result = {}
    for refine in (False, True):
        rows, fixed = assess_case(moved, biased, sp, ct, labels.affine, organs=[organ], gate=Gate(ct_refine=refine))
        assert rows[0]["verdict"] == "misplaced" and rows[0]["fix_accepted"], rows[0]
        result[refine] = (best - iou(fixed == organ, clean == organ),
                          relative_rotation_deg(np.asarray(rows[0]["matrix_voxel"]), truth, sp), rows[0])
    (gap_ref, rot_ref, _), (gap_ct, rot_ct, row) = result[False], result[True]
    assert row["ct_refined"], row["ct_refine"]
    # Measured on this CT (1.5 mm voxels; moves as above with random biases of 3°/3 mm, 12 cases): the fit onto
    # the biased reference keeps its 3° and IoU gaps of 0.07-0.25 to the nearest-neighbour limit; refined on
    # the CT, gaps 0.014-0.064 and rotation errors 0.04-1.2°. Started at the exact inverse, the refinement
    # itself settles the heart 0.05 IoU away (the model-made label is not exactly on the CT's edges): that
    # floor, not the reference, bounds it. Bounds with margin on both.
    assert rot_ref > 2.5 and gap_ref > 0.06
    assert gap_ct < 0.10 and gap_ct < 0.7 * gap_ref, (gap_ref, gap_ct)
    assert rot_ct < 2.0, (rot_ref, rot_ct)


@pytest.mark.realct
def test_ct_refinement_reaches_a_start_beyond_the_fine_trust_region(realct_dir: Path) -> None:
    """A fit onto a model's reference can be 10° or more off; the coarse stage brings it into the fine stage's reach."""
    from thoraxseg.realign.geometry import relative_rotation_deg
    from thoraxseg.realign.intensity import COARSE_BAND_MM, refine_on_image

    _, ct, _, sp, c, moved, truth = _realct_moved(realct_dir, HEART)
    mask = moved == HEART
    # the start: the exact correction off by 10° in-plane and (4, -3, 0) mm, beyond the fine stage's 5°
    start = truth @ rigid_voxel_matrix(np.deg2rad([0.0, 0.0, 10.0]), (4.0, -3.0, 0.0), c, sp)
    occluder = (moved != 0) & ~mask
    errors = {}
    for coarse in (None, COARSE_BAND_MM):
        matrix, info = refine_on_image(mask, ct, start, sp, occluder=occluder, coarse_band_mm=coarse)
        assert (info["coarse"] is None) == (coarse is None), info
        errors[coarse] = relative_rotation_deg(matrix, truth, sp)
    # the fine stage alone cannot turn back more than its 5° trust region (≥ 5° left, exactly so when it goes
    # all the way); with the path via the coarse stage (taken here) the heart ends near the exact correction,
    # not on it: the model-made label is not exactly on the CT's edges. Measured 5.17° and 0.78° (also under
    # OPENBLAS_CORETYPE=Haswell, 1 thread: 5.17° and 0.62°); 2.5°: margin for the band-point subsample and the
    # optimiser's end point (the coarse stage alone, without the comparison, ended at 1.4°).
    assert errors[None] > 4.5 and errors[COARSE_BAND_MM] < 2.5, errors


@pytest.mark.realct
def test_the_coarse_path_does_not_pull_away_an_exact_start(realct_dir: Path) -> None:
    """Started at the exact correction, the aorta stays: the wide band's pull elsewhere loses the comparison."""
    from thoraxseg.realign.intensity import refine_on_image

    _, ct, clean, sp, _, moved, truth = _realct_moved(realct_dir, AORTA)
    limit, _ = move_label_cropped(moved, AORTA, truth, APPLY_MODE)
    matrix, info = refine_on_image(moved == AORTA, ct, truth, sp, occluder=(moved != 0) & (moved != AORTA))
    assert info["coarse"] is not None, info  # 1.5 mm pixels: both paths ran
    fixed, _ = move_label_cropped(moved, AORTA, matrix, APPLY_MODE)
    # Measured: the direct path keeps the exact start (gap 0.000); the path via the 6 mm coarse stage ends
    # 0.03 IoU away (bright contrast beside the aorta inside the wide band) and must not be taken. 0.01: half
    # of that, above the sub-voxel wander a kept direct refinement could add.
    assert iou(limit == AORTA, clean == AORTA) - iou(fixed == AORTA, clean == AORTA) < 0.01, info
