"""Phantom cohorts with per-patient misplaced organ labels, for the QA tests and benchmark.

Each patient of :func:`misplaced_cohort` is a phantom (:func:`thoraxseg.data.phantom.generate_case`)
whose label of one organ (heart or aorta) gets its own random rigid move — in-plane rotation of
10–40° (either sign), out-of-plane tilts within ±5°, about the organ's centroid, then a shift
within ±25 mm per axis — or none. The truth (the exact matrices) goes to ``truth.json``.

Examples
--------
>>> m = random_move(np.random.default_rng(0), (60.0, 60.0, 20.0), (4.0, 4.0, 10.0))
>>> from thoraxseg.realign.geometry import rotation_parameters
>>> 10.0 <= abs(rotation_parameters(m, (4.0, 4.0, 10.0))[2]) <= 40.0
True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.data.overlap import iou
from thoraxseg.data.phantom import PhantomCase, corruption_matrix, generate_case
from thoraxseg.data.volume import save_label, save_volume
from thoraxseg.labels import Organ, label_name
from thoraxseg.realign.estimate import APPLY_MODE
from thoraxseg.realign.geometry import centroid, move_label_cropped, rigid_voxel_matrix
from thoraxseg.utils.atomic import atomic_dir, write_json_atomic

#: Organs that :func:`misplaced_cohort` moves.
MOVABLE: tuple[int, ...] = (int(Organ.HEART), int(Organ.AORTA))


def random_move(rng: np.random.Generator, center: Sequence[float], spacing: Sequence[float],
                inplane_deg: tuple[float, float] = (10.0, 40.0), tilt_deg: float = 5.0,
                shift_mm: float = 25.0) -> np.ndarray:
    """A random mm-rigid corruption matrix (output voxel → input voxel) about ``center`` (voxels).

    In-plane angle uniform in ``inplane_deg`` with a random sign, tilts about x and y uniform in
    ``±tilt_deg``, shift uniform in ``±shift_mm`` per axis.
    """
    angle = rng.uniform(*inplane_deg) * rng.choice([-1.0, 1.0])
    tilts = rng.uniform(-tilt_deg, tilt_deg, size=2)
    shift = rng.uniform(-shift_mm, shift_mm, size=3)
    rotvec = np.deg2rad(np.r_[tilts, angle])
    return rigid_voxel_matrix(rotvec, shift, center, spacing)


def _write_image(tmp: Path, seed: int, index: int, size: str) -> tuple[PhantomCase, Path]:
    """Generate phantom ``index`` of cohort ``seed`` and write its CT to ``tmp/train/<patient>/``."""
    case = generate_case(seed, index, size)
    folder = tmp / "train" / case.patient_id
    folder.mkdir(parents=True)
    save_volume(case.image, folder / f"{case.patient_id}.nii.gz")
    return case, folder


def _move_with_limit(labels: np.ndarray, organ: int, m: np.ndarray) -> tuple[np.ndarray, float]:
    """``labels`` with ``organ`` moved by the voxel matrix ``m``, and the nearest-neighbour limit of a fix:
    the IoU with the clean organ of the moved organ moved back by ``m⁻¹`` (as ``apply`` resamples)."""
    moved, _ = move_label_cropped(labels, organ, m)
    back, _ = move_label_cropped(moved, organ, np.linalg.inv(m), APPLY_MODE)
    return moved, iou(back == organ, labels == organ)


def misplaced_cohort(out: str | Path, indices: Sequence[int], seed: int = 7, move_seed: int = 0,
                     moved_fraction: float = 0.5, organs: Sequence[int] = MOVABLE,
                     size: str = "small") -> dict[str, Any]:
    """Write phantoms ``indices`` of cohort ``seed`` with some labels moved; return the truth.

    Parameters
    ----------
    out
        Output folder (SegTHOR layout ``train/Patient_XX/{Patient_XX.nii.gz, GT.nii.gz}``, plus
        ``truth.json``); written atomically.
    indices
        Phantom indices (0-based) of cohort ``seed``.
    seed
        Phantom cohort seed.
    move_seed
        Seed of which patients are moved, which organ, and how.
    moved_fraction
        Probability that a patient gets a moved organ (0: a fully clean cohort).
    organs
        Organs to choose from (default heart and aorta).
    size
        Phantom size.

    Returns
    -------
    dict
        ``truth.json``: per patient ``patient``, ``organ`` (name or None), ``matrix_voxel`` (the
        corruption ``M``; its inverse is the exact fix), ``limit_iou`` (IoU with the clean label of
        the moved label moved back by ``M⁻¹``: the nearest-neighbour limit), ``iou_moved``.
    """
    rng = np.random.default_rng(move_seed)
    rows: list[dict[str, Any]] = []
    with atomic_dir(Path(out)) as tmp:
        for i in indices:
            case, folder = _write_image(tmp, seed, int(i), size)
            labels = case.labels
            row: dict[str, Any] = {"patient": case.patient_id, "index": int(i), "organ": None,
                                   "matrix_voxel": None, "limit_iou": None, "iou_moved": None}
            if rng.random() < moved_fraction:
                organ = int(rng.choice(np.asarray(organs)))
                clean = labels == organ
                m = random_move(rng, centroid(clean), case.image.spacing)
                labels, limit = _move_with_limit(labels, organ, m)
                row.update(organ=label_name(organ), matrix_voxel=np.round(m, 12).tolist(),
                           limit_iou=round(limit, 6), iou_moved=round(iou(labels == organ, clean), 6))
            save_label(labels, case.image, folder / "GT.nii.gz")
            rows.append(row)
        truth = {"seed": int(seed), "move_seed": int(move_seed), "size": size, "patients": rows}
        write_json_atomic(tmp / "truth.json", truth)
    return truth


def course_cohort(out: str | Path, indices: Sequence[int], seed: int = 7, size: str = "small") -> dict[str, Any]:
    """Write phantoms ``indices`` of cohort ``seed`` with every heart moved by the course corruption.

    No clean label is kept (no reference pair). ``out`` and the returned ``truth.json`` are as in
    :func:`misplaced_cohort` (``organ`` is always ``heart``).
    """
    heart = int(Organ.HEART)
    rows: list[dict[str, Any]] = []
    with atomic_dir(Path(out)) as tmp:
        for i in indices:
            case, folder = _write_image(tmp, seed, int(i), size)
            m = corruption_matrix(case.image.shape)
            moved, limit = _move_with_limit(case.labels, heart, m)
            save_label(moved, case.image, folder / "GT.nii.gz")
            rows.append({"patient": case.patient_id, "index": int(i), "organ": "heart", "matrix_voxel": m.tolist(),
                         "limit_iou": limit})
        truth = {"seed": int(seed), "size": size, "patients": rows}
        write_json_atomic(tmp / "truth.json", truth)
    return truth
