"""Reproduce the SegTHOR course's label corruption on any dataset (for testing and teaching).

Every ``GT.nii.gz`` gets one label moved by the course transform
``M = C R(φ) C⁻¹ T`` (see :mod:`thoraxseg.data.transforms`), exactly as the course did it:
``scipy.ndimage.affine_transform(mask, M, order=0)`` with scipy's default ``constant`` mode.
Centre and shift are given on the 512×512 in-plane grid and scaled to each patient's grid with
:func:`~thoraxseg.data.transforms.grid_scale`. Where the moved label lands on another organ the
other organ keeps its voxels. The untouched label is kept as ``GT_clean.nii.gz`` for the first
patient (the reference pair, like patient 27 of the course), for all, or for none, and
``corruption.json`` at the output root records the parameters and, per patient, the exact
corruption matrix and its inverse (the ideal fix).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.data.layout import CLEAN_LABEL_NAME, Case
from thoraxseg.data.transforms import (
    COURSE_CENTER,
    COURSE_ROTATION_DEG,
    COURSE_SHIFT,
    course_matrix,
    grid_scale,
)
from thoraxseg.data.volume import load_label, save_label
from thoraxseg.realign.dataset import output_path, rewrite_dataset
from thoraxseg.realign.geometry import move_label_cropped
from thoraxseg.utils.atomic import write_json_atomic

#: Choices for which patients keep a clean copy of their label.
KEEP_CLEAN: tuple[str, ...] = ("first", "all", "none")


def corrupt_dataset(
    data: str | Path,
    out: str | Path,
    label: int = 2,
    rotation_deg: float = COURSE_ROTATION_DEG,
    center: Sequence[float] = COURSE_CENTER,
    shift: Sequence[float] = COURSE_SHIFT,
    keep_clean: str = "first",
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write a copy of ``data`` to ``out`` with ``label`` moved by the course transform.

    Parameters
    ----------
    data, out
        Source dataset and destination folder (created atomically; must not exist unless
        ``overwrite``).
    label
        Label code to move (default 2, heart).
    rotation_deg
        In-plane rotation φ in degrees (course: −27).
    center
        Rotation centre in voxels ``(x, y, z)`` on the 512-grid (course: 275, 200, 0).
    shift
        Translation in voxels ``(x, y, z)`` on the 512-grid (course: 50, 40, 15).
    keep_clean
        ``"first"`` (default), ``"all"`` or ``"none"``: which patients get ``GT_clean.nii.gz``
        (a byte copy of their original ``GT.nii.gz``).
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    list of dict
        One row per labelled patient: ``patient``, ``voxels_before``, ``voxels_after``,
        ``overlap_voxels`` (landed on another organ), ``voxels_change`` (after − before: overlap
        and parts moved off the grid), ``clean_copy``, ``matrix_voxel`` (the corruption ``M``) and ``fix_voxel`` (``M⁻¹``).
    """
    if keep_clean not in KEEP_CLEAN:
        raise ValueError(f"keep_clean must be one of {KEEP_CLEAN}, got {keep_clean!r}")
    src = Path(data)
    first: list[bool] = [True]
    params = {"label": int(label), "rotation_deg": float(rotation_deg),
              "center_512": [float(v) for v in center], "shift_512": [float(v) for v in shift]}

    def process(case: Case, new_root: Path) -> dict[str, Any]:
        assert case.label_path is not None
        lab = load_label(case.label_path)
        matrix = course_matrix(rotation_deg, center, shift, scale=grid_scale(lab.shape))
        before = lab.array
        n_before = int(np.count_nonzero(before == label))
        after, overlap = move_label_cropped(before, label, matrix, "constant")
        dest = output_path(case.label_path, src, new_root)
        save_label(after, lab, dest)
        keep = keep_clean == "all" or (keep_clean == "first" and first[0])
        first[0] = False
        if keep:
            shutil.copyfile(case.label_path, dest.parent / CLEAN_LABEL_NAME)
        n_after = int(np.count_nonzero(after == label))
        return {
            "patient": case.patient_id,
            "voxels_before": n_before,
            "voxels_after": n_after,
            "overlap_voxels": int(overlap),
            "voxels_change": n_after - n_before,
            "clean_copy": bool(keep),
            "matrix_voxel": np.round(matrix, 12).tolist(),
            "fix_voxel": np.round(np.linalg.inv(matrix), 12).tolist(),
        }

    def record(new_root: Path, rows: list[dict[str, Any]]) -> None:
        write_json_atomic(new_root / "corruption.json", {
            **params,
            "convention": "scipy.ndimage.affine_transform: output voxel (x, y, z) -> input voxel, order=0",
            "patients": rows,
        })

    return rewrite_dataset(src, out, process, f"realign corrupt (label {label})", overwrite, record)
