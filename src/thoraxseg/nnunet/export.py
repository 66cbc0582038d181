"""Export a SegTHOR-layout cohort to nnU-Net v2's raw dataset format.

Output, under ``RAW/DatasetXXX_Name/``::

    imagesTr/<case>_0000.nii.gz   the CT (channel 0, "CT" → nnU-Net's CT normalisation)
    labelsTr/<case>.nii.gz        the labels 0 background, 1 esophagus, 2 heart, 3 trachea, 4 aorta
    dataset.json                  channel_names, labels, numTraining, file_ending
    thoraxseg_cases.json          case → patient ID and source files

Case identifiers are ``<Name>_<NNN>`` (``SegTHOR_001``...) in natural patient
order; ``thoraxseg_cases.json`` maps them back to patient IDs. Files are byte
copies by default (a portable raw folder that survives moving or deleting the
source cohort); ``mode="symlink"`` links to the source files instead (no extra
disk, but the raw folder breaks when the source moves). Every case is checked
first: image readable, label values in 0..4, label on exactly the image's grid
(nnU-Net's own integrity check would reject a mismatch later, less clearly).

Examples
--------
>>> dataset_folder_name(55, "SegTHOR")
'Dataset055_SegTHOR'
>>> nnunet_dataset_json(3)["labels"]
{'background': 0, 'esophagus': 1, 'heart': 2, 'trachea': 3, 'aorta': 4}
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from thoraxseg.data.layout import Case, labelled_cases
from thoraxseg.data.volume import load_image, load_label, same_geometry
from thoraxseg.errors import ConfigError, InputError
from thoraxseg.labels import LABEL_NAMES
from thoraxseg.utils.atomic import atomic_dir, write_json_atomic
from thoraxseg.utils.progress import track

#: File written beside ``dataset.json`` that maps nnU-Net case IDs back to patients.
MAPPING_FILE = "thoraxseg_cases.json"
FILE_ENDING = ".nii.gz"
EXPORT_MODES = ("copy", "symlink")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's dataset folder name ``DatasetXXX_Name`` (ID 1..999, 3 digits)."""
    if not 1 <= int(dataset_id) <= 999:
        raise ConfigError(f"nnU-Net dataset ID must be in 1..999, got {dataset_id}")
    if not _NAME_RE.match(name):
        raise ConfigError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def nnunet_dataset_json(num_training: int, name: str = "SegTHOR") -> dict[str, Any]:
    """The ``dataset.json`` of a SegTHOR export (one CT channel, labels from :mod:`thoraxseg.labels`)."""
    return {
        "name": name,
        "description": "SegTHOR-layout cohort exported by thoraxseg (thoracic organs at risk in CT)",
        "channel_names": {"0": "CT"},
        "labels": {LABEL_NAMES[code]: code for code in sorted(LABEL_NAMES)},
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
    }


def case_identifier(name: str, index: int) -> str:
    """nnU-Net case ID of the ``index``-th case (1-based): ``SegTHOR_001``."""
    return f"{name}_{index:03d}"


def _check_case(case: Case) -> None:
    assert case.label_path is not None
    image = load_image(case.image_path)
    label = load_label(case.label_path)
    diff = same_geometry(image, label)
    if diff is not None:
        raise InputError(case.label_path, f"label grid differs from image {case.image_path.name}: {diff}")


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
    else:
        shutil.copyfile(src, dst)


def export_dataset(
    data: str | Path,
    out: str | Path,
    dataset_id: int = 55,
    name: str = "SegTHOR",
    mode: str = "copy",
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Write ``out/DatasetXXX_Name`` in nnU-Net v2 raw format from the labelled cases under ``data``.

    Parameters
    ----------
    data
        Any layout :func:`thoraxseg.data.layout.discover_cases` accepts; only
        cases with a ``GT.nii.gz`` are exported.
    out
        The nnU-Net raw folder (``nnUNet_raw``); created if missing.
    dataset_id, name
        Dataset number (1..999) and name.
    mode
        ``"copy"`` (default, portable) or ``"symlink"``.
    overwrite
        Replace an existing dataset folder; otherwise it is an error.
    check
        Read every case first (labels 0..4, label grid = image grid).

    Returns
    -------
    Path
        The dataset folder. It appears only once complete (written to a
        temporary folder and renamed).

    Raises
    ------
    InputError
        Unreadable case, bad labels or mismatched grids (naming the file).
    ConfigError
        Bad ID, name or mode, or the folder exists and ``overwrite`` is False.
    """
    if mode not in EXPORT_MODES:
        raise ConfigError(f"export mode must be one of {', '.join(EXPORT_MODES)}, got {mode!r}")
    folder_name = dataset_folder_name(dataset_id, name)
    cases = labelled_cases(data)
    raw = Path(out)
    target = raw / folder_name
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: already exists (--overwrite replaces it)")
    if raw.is_dir():
        clash = [p.name for p in raw.glob(f"Dataset{int(dataset_id):03d}_*") if p.name != folder_name]
        if clash:
            raise ConfigError(f"{raw}: dataset ID {dataset_id} is already used by {', '.join(clash)}")
    if check:
        for case in track(cases, "Checking cases"):
            _check_case(case)
    mapping: dict[str, dict[str, str]] = {}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for i, case in enumerate(track(cases, f"Exporting {folder_name}"), start=1):
            cid = case_identifier(name, i)
            assert case.label_path is not None
            _place(case.image_path, tmp / "imagesTr" / f"{cid}_0000{FILE_ENDING}", mode)
            _place(case.label_path, tmp / "labelsTr" / f"{cid}{FILE_ENDING}", mode)
            mapping[cid] = {
                "patient_id": case.patient_id,
                "image": str(case.image_path.resolve()),
                "label": str(case.label_path.resolve()),
            }
        write_json_atomic(tmp / "dataset.json", nnunet_dataset_json(len(cases), name))
        write_json_atomic(tmp / MAPPING_FILE, {"mode": mode, "cases": mapping})
    return target


def read_mapping(dataset_folder: str | Path) -> dict[str, str]:
    """``{case ID: patient ID}`` of an exported dataset folder."""
    path = Path(dataset_folder) / MAPPING_FILE
    if not path.is_file():
        raise InputError(path, "file not found (not a thoraxseg nnU-Net export)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return {cid: row["patient_id"] for cid, row in content["cases"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"unreadable case mapping ({exc})") from None
