"""`thoraxseg check`: errors exit 1 with one line per bad file; misplaced labels warn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from thoraxseg.cli import main
from thoraxseg.data.check import _heart_cell, check_dataset, label_air_fraction
from thoraxseg.data.transforms import course_matrix, grid_scale, move_label
from thoraxseg.data.volume import Volume, load_image, load_label, save_label, save_volume
from thoraxseg.labels import Organ


def _make_case(root: Path, pid: str, shape=(32, 28, 12), seed: int = 0) -> tuple[Path, Path]:
    """A toy 'thorax': soft-tissue body with two air 'lungs', a heart, aorta, esophagus, trachea lumen."""
    rng = np.random.default_rng(seed)
    ct = (rng.normal(40, 15, shape)).astype(np.int16)
    ct[:4] = -1000
    ct[-4:] = -1000
    ct[5:12, 4:24] = -850
    ct[20:27, 4:24] = -850
    lab = np.zeros(shape, np.uint8)
    lab[13:19, 4:12, 2:8] = Organ.HEART
    lab[13:16, 18:21, :] = Organ.AORTA
    lab[17:19, 22:24, :] = Organ.ESOPHAGUS
    ct[15:17, 14:16, 6:] = -1000
    lab[15:17, 14:16, 6:] = Organ.TRACHEA
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    folder = root / "train" / pid
    folder.mkdir(parents=True)
    ref = Volume(ct, affine)
    save_volume(ref, folder / f"{pid}.nii.gz")
    save_label(lab, ref, folder / "GT.nii.gz")
    return folder / f"{pid}.nii.gz", folder / "GT.nii.gz"


def test_clean_dataset_exits_0_and_writes_json(tmp_path: Path, capsys) -> None:
    for i in (1, 2):
        _make_case(tmp_path / "d", f"Patient_{i:02d}", seed=i)
    code = main(["check", str(tmp_path / "d"), "--json", str(tmp_path / "check.json")])
    assert code == 0
    rep = json.loads((tmp_path / "check.json").read_text())
    assert rep["ok"] is True and rep["n_cases"] == 2 and rep["n_warnings"] == 0
    heart = next(o for o in rep["cases"][0]["organs"] if o["organ"] == "heart")
    assert heart["air_fraction"] == 0.0 and 0 < heart["mean_hu"] < 100


def test_bad_files_exit_1_with_one_line_each(tmp_path: Path, capsys) -> None:
    root = tmp_path / "d"
    img1, _ = _make_case(root, "Patient_01", seed=1)
    _, gt2 = _make_case(root, "Patient_02", seed=2)
    _, gt3 = _make_case(root, "Patient_03", seed=3)
    _make_case(root, "Patient_04", seed=4)
    # 1: truncated image; 2: GT with another shape; 3: GT containing label 7; 4: clean
    data = img1.read_bytes()
    img1.write_bytes(data[: len(data) // 3])
    ref = load_image(root / "train" / "Patient_02" / "Patient_02.nii.gz")
    save_volume(Volume(np.zeros((10, 10, 10), np.uint8), ref.affine), gt2)
    lab = load_label(gt3).array
    lab[0, 0, 0] = 7
    save_volume(Volume(lab, ref.affine), gt3)
    capsys.readouterr()
    code = main(["check", str(root)])
    err = capsys.readouterr().err
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("thoraxseg: error:")]
    assert len(lines) == 3, err
    assert any(str(img1) in ln and "truncated or corrupt" in ln for ln in lines)
    assert any(str(gt2) in ln and "shape" in ln for ln in lines)
    assert any(str(gt3) in ln and "labels outside 0-4: [7]" in ln for ln in lines)
    assert "Traceback" not in err


def test_missing_label_and_geometry_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _, gt = _make_case(root, "Patient_01")
    _, gt2 = _make_case(root, "Patient_02")
    gt.unlink()
    lab = load_label(gt2)
    shifted = lab.affine.copy()
    shifted[0, 3] += 4.0
    save_volume(Volume(lab.array, shifted), gt2)
    rep = check_dataset(root, progress=False)
    assert not rep.ok
    assert any("missing label file" in e for e in rep.cases[0].errors)
    assert any("origin" in e for e in rep.cases[1].errors)


def test_moved_heart_is_flagged_and_clean_is_not(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _, gt = _make_case(root, "Patient_01")
    _make_case(root, "Patient_02", seed=2)
    lab = load_label(gt)
    # move the heart 8 voxels along x (onto the right 'lung'); Patient_02 stays clean
    m = np.eye(4)
    m[0, 3] = 8.0
    moved, _ = move_label(lab.array, Organ.HEART, m)
    save_label(moved, lab, gt)
    rep = check_dataset(root, progress=False)
    assert rep.ok and rep.n_warnings == 1
    assert "heart label looks misplaced" in rep.cases[0].warnings[0]
    assert rep.cases[1].warnings == []


def test_label_air_fraction_absent_is_nan() -> None:
    assert np.isnan(label_air_fraction(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8), 2))


def test_realct_is_clean_and_course_corruption_is_flagged(tmp_path: Path, realct_dir: Path) -> None:
    rep = check_dataset(realct_dir, progress=False)
    assert rep.ok and rep.n_warnings == 0
    case = rep.cases[0]
    assert {o.organ for o in case.organs} == {"heart", "aorta"}
    assert any("organs absent: esophagus, trachea" in n for n in case.notes)
    # the course corruption, scaled to this grid, moves the heart onto lung/air
    work = tmp_path / "Patient_R1"
    shutil.copytree(realct_dir, work)
    gt = load_label(work / "GT.nii.gz")
    moved, _ = move_label(gt.array, Organ.HEART, course_matrix(scale=grid_scale(gt.shape)))
    save_label(moved, gt, work / "GT.nii.gz")
    rep2 = check_dataset(work, progress=False)
    assert rep2.ok and rep2.n_warnings == 1
    assert main(["check", str(work), "--strict"]) == 1


def test_unreadable_root(tmp_path: Path, capsys) -> None:
    assert main(["check", str(tmp_path / "nothing")]) == 1
    assert "folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"]])
def test_help_exits_cleanly(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


def _course_pair(root: Path, moved_file: str | None) -> tuple[Path, Path]:
    """Patient_27 with GT.nii.gz and GT2.nii.gz; ``moved_file`` names the one whose heart is moved onto the lung."""
    _, gt = _make_case(root, "Patient_27")
    lab = load_label(gt)
    m = np.eye(4)
    m[0, 3] = 8.0  # 8 voxels along x: the heart lands on the right 'lung'
    moved, _ = move_label(lab.array, Organ.HEART, m)
    gt2 = gt.parent / "GT2.nii.gz"
    save_label(moved if moved_file == "GT2.nii.gz" else lab.array, lab, gt2)
    if moved_file == "GT.nii.gz":
        save_label(moved, lab, gt)
    return gt, gt2


def test_course_pair_says_which_label_is_moved(tmp_path: Path, capsys) -> None:
    root = tmp_path / "d"
    gt, gt2 = _course_pair(root, "GT.nii.gz")
    rep = check_dataset(root, progress=False)
    (case,) = rep.cases
    assert rep.ok and case.reference is not None and case.reference.clean == str(gt2)
    assert case.reference.differing == ["heart"]  # only the heart was moved
    # the moved GT.nii.gz is warned about like any moved heart; the clean GT2.nii.gz never
    assert len(case.warnings) == 1 and str(gt) in case.warnings[0] and "GT2" not in case.warnings[0]
    (note,) = [n for n in case.notes if "reference pair" in n]
    assert "GT.nii.gz is the moved label, GT2.nii.gz the clean reference" in note
    # the toy heart sits on soft tissue only; moved by 8 voxels it lies wholly on the 'lung'
    assert "heart 100% in GT.nii.gz, 0% in GT2.nii.gz" in note
    clean_heart = next(o for o in case.reference.clean_organs if o.organ == "heart")
    assert clean_heart.air_fraction == 0.0 and not clean_heart.suspicious
    assert main(["check", str(root), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "GT.nii.gz is the moved label, GT2.nii.gz the clean reference" in out
    heart = next(o for o in case.organs if o.organ == "heart")
    assert _heart_cell(heart, case.reference) == "100% (GT2.nii.gz 0%)"  # the table's 'heart on air' cell
    saved = json.loads((tmp_path / "c.json").read_text())["cases"][0]["reference"]
    assert saved["clean"] == str(gt2) and saved["differing"] == ["heart"]


def test_course_pair_without_a_moved_label_needs_no_fix(tmp_path: Path) -> None:
    _course_pair(tmp_path / "same", None)
    (case,) = check_dataset(tmp_path / "same", progress=False).cases
    assert case.warnings == [] and case.reference.differing == []
    assert any("the two labels are identical: nothing to fix" in n for n in case.notes)


def test_course_pair_the_wrong_way_round_warns(tmp_path: Path) -> None:
    _course_pair(tmp_path / "d", "GT2.nii.gz")
    (case,) = check_dataset(tmp_path / "d", progress=False).cases
    (warning,) = case.warnings  # GT.nii.gz is clean here: the one on air is GT2.nii.gz
    assert "GT2.nii.gz is the one on air, not GT.nii.gz" in warning and "wrong way round" in warning
    assert not any("is the moved label" in n for n in case.notes)
