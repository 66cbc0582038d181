"""The study's realign stage: it finds the reference pair under either name and never trains on flagged labels.

Every study here points ``data.root`` at a small synthetic dataset (``study_fixture.build_raw_dataset``:
moved hearts lie 46–59 % on air, clean ones 0 %) and stops before training — either on purpose
(the message under test) or at the split stage, because ``data.test_cases`` is larger than the
dataset, which shows that realign let the study go on.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cli_output import messages
from study_fixture import build_raw_dataset, tiny_study_config
from thoraxseg.cli import main

IDS = ["Patient_01", "Patient_02", "Patient_27"]
TOO_MANY = 99  # data.test_cases beyond the dataset: the split stage refuses, so nothing trains


def _study(tmp_path: Path, data: Path, realign: dict | None = None, test_cases: int = TOO_MANY) -> list[str]:
    cfg = tiny_study_config({"root": str(data), "test_cases": test_cases},
                            realign={"enabled": "auto", "label": "heart", "method": "sweep", **(realign or {})})
    path = tmp_path / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return ["study", "--config", str(path), "--out", str(tmp_path / "study")]


def _marker(tmp_path: Path, stage: str) -> dict | None:
    p = tmp_path / "study" / ".stages" / f"{stage}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _nothing_trained(tmp_path: Path) -> bool:
    study = tmp_path / "study"
    return not (study / "data" / "trainset").exists() and not (study / "arms").exists()


def test_flagged_hearts_without_a_reference_pair_stop_the_study(tmp_path: Path, capsys) -> None:
    data = build_raw_dataset(tmp_path / "raw", IDS)
    assert main(_study(tmp_path, data)) == 1
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("thoraxseg: error: realign.enabled: auto: ")
    assert "check flags the heart label of 3 case(s) as misplaced (Patient_01, Patient_02, Patient_27;" in err[0]
    assert "no case has a reference pair (GT.nii.gz + GT_clean.nii.gz or GT2.nii.gz)" in err[0]
    assert "realign.reference" in err[0] and "realign.enabled: false" in err[0]
    assert _marker(tmp_path, "check") is not None and _marker(tmp_path, "realign") is None
    assert not (tmp_path / "study" / "data" / "fixed").exists() and _nothing_trained(tmp_path)


def test_realign_false_goes_on_with_the_labels_as_they_are(tmp_path: Path, capsys) -> None:
    data = build_raw_dataset(tmp_path / "raw", IDS)
    assert main(_study(tmp_path, data, {"enabled": False})) == 1
    assert f"data.test_cases={TOO_MANY}" in capsys.readouterr().err  # stopped at the split, after realign
    assert _marker(tmp_path, "realign")["applied"] is False and _nothing_trained(tmp_path)


def test_clean_dataset_without_a_pair_goes_on(tmp_path: Path, capsys) -> None:
    data = build_raw_dataset(tmp_path / "raw", IDS, moved=False)
    assert main(_study(tmp_path, data)) == 1
    assert f"data.test_cases={TOO_MANY}" in capsys.readouterr().err
    assert _marker(tmp_path, "realign")["applied"] is False


def test_course_pair_gt2_is_found_and_the_fix_applied_to_all(tmp_path: Path, capsys) -> None:
    data = build_raw_dataset(tmp_path / "raw", IDS, reference="Patient_27", clean_name="GT2.nii.gz")
    assert main(_study(tmp_path, data)) == 1
    out, err = capsys.readouterr()
    assert f"data.test_cases={TOO_MANY}" in err
    assert "reference pair Patient_27 (GT.nii.gz + GT2.nii.gz): GT.nii.gz is the moved label" in out
    marker = _marker(tmp_path, "realign")
    assert marker["applied"] is True and marker["reference"] == "Patient_27" and marker["verdict"] == "label-moved"
    assert marker["reference_label"] == str(data / "train" / "Patient_27" / "GT2.nii.gz")
    rows = json.loads((tmp_path / "study" / "realign" / "apply.json").read_text())
    assert [r["patient"] for r in rows] == IDS
    after = json.loads((tmp_path / "study" / "check_fixed.json").read_text())
    hearts = [o for c in after["cases"] for o in c["organs"] if o["organ"] == "heart"]
    # the fixture moves every heart by one transform, so the fix estimated on Patient_27 puts every heart
    # back on soft tissue: below check's 8 % threshold (the clean hearts are 0 % on air)
    assert len(hearts) == 3 and not any(h["suspicious"] for h in hearts)


def test_pair_without_a_moved_heart_is_not_fixed_and_flagged_cases_stop(tmp_path: Path, capsys) -> None:
    # Patient_27's GT.nii.gz and GT2.nii.gz are both clean, every other heart is moved
    data = build_raw_dataset(tmp_path / "raw", IDS, reference="Patient_27", clean_name="GT2.nii.gz",
                             reference_moved=False)
    assert main(_study(tmp_path, data)) == 1
    out, err = capsys.readouterr()
    assert "reference pair Patient_27 (GT.nii.gz + GT2.nii.gz): neither label looks moved (heart)" in out
    assert "check flags the heart label of 2 case(s)" in err
    assert "shows no moved heart to estimate the fix on" in err
    assert not (tmp_path / "study" / "realign" / "fix.json").exists() and _nothing_trained(tmp_path)
    # the same pair on a clean dataset: said so, nothing fixed, the study goes on
    clean = build_raw_dataset(tmp_path / "clean", IDS, moved=False, reference="Patient_27", clean_name="GT2.nii.gz")
    assert main(_study(tmp_path / "c", clean)) == 1
    assert f"data.test_cases={TOO_MANY}" in capsys.readouterr().err
    marker = _marker(tmp_path / "c", "realign")
    assert marker["applied"] is False and marker["verdict"] == "neither-moved"


def test_swapped_pair_and_unknown_reference_are_refused(tmp_path: Path, capsys) -> None:
    # GT2.nii.gz moved and GT.nii.gz clean: the pair is the wrong way round
    data = build_raw_dataset(tmp_path / "raw", IDS, moved=False, reference="Patient_27", clean_name="GT2.nii.gz")
    gt, gt2 = data / "train" / "Patient_27" / "GT.nii.gz", data / "train" / "Patient_27" / "GT2.nii.gz"
    moved = build_raw_dataset(tmp_path / "moved", IDS) / "train" / "Patient_27" / "GT.nii.gz"
    gt2.write_bytes(moved.read_bytes())
    assert main(_study(tmp_path, data)) == 1
    (err,) = messages(capsys.readouterr().err)
    assert err.startswith(f"thoraxseg: error: {gt2}: reference pair Patient_27 (GT.nii.gz + GT2.nii.gz)")
    assert "the heart of GT2.nii.gz is the one on air" in err and gt.is_file()
    assert main(_study(tmp_path / "r", data, {"reference": "Patient_01"})) == 1
    err = capsys.readouterr().err.strip()
    assert "realign.reference 'Patient_01': no case with both GT.nii.gz and a clean label" in err
    assert "GT_clean.nii.gz or GT2.nii.gz" in err
