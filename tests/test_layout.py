"""Discovery of SegTHOR layouts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thoraxseg.data.layout import CLEAN_LABEL_NAMES, discover_cases, find_case_image, labelled_cases
from thoraxseg.errors import InputError


def _touch(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def test_segthor_train_and_test_layout(tmp_path: Path) -> None:
    for i in (2, 10, 1):
        _touch(tmp_path / "train" / f"Patient_{i:02d}" / f"Patient_{i:02d}.nii.gz")
        _touch(tmp_path / "train" / f"Patient_{i:02d}" / "GT.nii.gz")
    _touch(tmp_path / "train" / "Patient_01" / "GT_clean.nii.gz")
    _touch(tmp_path / "test" / "Patient_41.nii.gz")
    cases = discover_cases(tmp_path)
    assert [c.patient_id for c in cases] == ["Patient_01", "Patient_02", "Patient_10", "Patient_41"]
    assert cases[0].clean_label_path is not None and cases[1].clean_label_path is None
    assert cases[-1].split == "test" and cases[-1].label_path is None
    assert [c.patient_id for c in labelled_cases(tmp_path)] == ["Patient_01", "Patient_02", "Patient_10"]


def test_plain_case_folders_flat_files_and_single_case(tmp_path: Path) -> None:
    _touch(tmp_path / "plain" / "Patient_R1" / "Patient_R1.nii.gz")
    _touch(tmp_path / "plain" / "Patient_R1" / "GT.nii.gz")
    assert discover_cases(tmp_path / "plain")[0].label_path.name == "GT.nii.gz"
    assert discover_cases(tmp_path / "plain" / "Patient_R1")[0].patient_id == "Patient_R1"
    _touch(tmp_path / "flat" / "Patient_05.nii.gz")
    assert find_case_image(tmp_path / "flat", "Patient_05").name == "Patient_05.nii.gz"
    with pytest.raises(InputError, match="file not found"):
        find_case_image(tmp_path / "flat", "Patient_06")


def test_empty_and_missing_roots(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no cases found"):
        discover_cases(tmp_path)
    with pytest.raises(InputError, match="folder not found"):
        discover_cases(tmp_path / "absent")


def test_realct_folder_is_a_case(realct_dir: Path) -> None:
    (case,) = discover_cases(realct_dir)
    assert case.patient_id == "Patient_R1" and case.label_path.name == "GT.nii.gz"


def test_course_reference_label_gt2_is_the_clean_label(tmp_path: Path) -> None:
    # the course's copy: Patient_27 holds the moved GT.nii.gz and the clean GT2.nii.gz
    for pid in ("Patient_26", "Patient_27"):
        _touch(tmp_path / "train" / pid / f"{pid}.nii.gz")
        _touch(tmp_path / "train" / pid / "GT.nii.gz")
    _touch(tmp_path / "train" / "Patient_27" / "GT2.nii.gz")
    other, ref = discover_cases(tmp_path)
    assert other.clean_label_path is None
    assert ref.image_path.name == "Patient_27.nii.gz" and ref.label_path.name == "GT.nii.gz"
    assert ref.clean_label_path == tmp_path / "train" / "Patient_27" / "GT2.nii.gz"
    # a reference label without an image is not taken for the image
    _touch(tmp_path / "lone" / "Patient_05" / "GT2.nii.gz")
    with pytest.raises(InputError, match="has a label but no image"):
        discover_cases(tmp_path / "lone")


def test_two_reference_labels_in_one_folder_are_refused(tmp_path: Path) -> None:
    assert CLEAN_LABEL_NAMES[0] == "GT_clean.nii.gz" and "GT2.nii.gz" in CLEAN_LABEL_NAMES
    folder = tmp_path / "train" / "Patient_27"
    for name in ("Patient_27.nii.gz", "GT.nii.gz", "GT_clean.nii.gz", "GT2.nii.gz"):
        _touch(folder / name)
    with pytest.raises(InputError, match=re.escape("several clean reference labels: GT_clean.nii.gz, GT2.nii.gz")):
        discover_cases(tmp_path)
