"""Apply an estimated label correction (``fix.json``) to every patient of a dataset.

Each ``GT.nii.gz`` gets only the chosen label moved back through the voxel matrix
(``scipy.ndimage.affine_transform`` convention, nearest neighbour, computed only around the
organ). Other labels keep every voxel: where the moved label lands on another organ, the other
organ wins and the overlap is counted. Images and every other file are copied byte for byte;
the output folder appears only when complete.

Patients without a clean reference are verified with the ``check`` heuristic: the **air
fraction** of the label, i.e. the fraction of its voxels whose CT value is below −400 HU
(:data:`thoraxseg.data.check.AIR_HU`; lung and outside air). A heart moved onto the lung has a
high air fraction; once fixed it should be near zero.

Examples
--------
>>> import numpy as np
>>> ct = np.full((4, 4, 4), 40, np.int16); ct[:2] = -850
>>> lab = np.zeros((4, 4, 4), np.uint8); lab[1:3] = 2
>>> label_air_fraction(ct, lab, 2)
0.5
"""

from __future__ import annotations

import gzip
import time
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from thoraxseg.data.check import AIR_HU, MAX_AIR_FRACTION, label_air_fraction
from thoraxseg.data.layout import Case
from thoraxseg.data.volume import Volume, load_label, same_geometry, save_label
from thoraxseg.errors import InputError
from thoraxseg.realign.dataset import output_path, rewrite_dataset
from thoraxseg.realign.estimate import APPLY_MODE
from thoraxseg.realign.fixfile import load_transform
from thoraxseg.realign.geometry import move_label_cropped

__all__ = ["AIR_HU", "apply_transform_to_dataset", "label_air_fraction", "max_air_fraction"]


def max_air_fraction(label: int) -> float | None:
    """The ``check`` threshold above which a label's air fraction is suspicious (None: no threshold)."""
    return MAX_AIR_FRACTION.get(int(label))


def apply_transform_to_dataset(
    transform: dict[str, Any] | str | Path,
    data: str | Path,
    out: str | Path,
    label: int = 2,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write a copy of ``data`` to ``out`` with ``label`` moved back in every ``GT.nii.gz``.

    Parameters
    ----------
    transform
        ``fix.json`` path or its content (needs ``matrix_voxel``, 4×4, output voxel → input voxel).
    data
        Source dataset (SegTHOR layout: ``train/Patient_XX/{Patient_XX.nii.gz, GT.nii.gz}`` or
        ``Patient_XX/`` folders).
    out
        Destination folder; must not exist unless ``overwrite``.
    label
        Label code to move back (default 2, heart).
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    list of dict
        One row per labelled patient: ``patient``, ``voxels_before``/``voxels_after`` (label
        voxels), ``overlap_voxels`` (label voxels that landed on another organ, which kept them),
        ``voxels_change`` (after − before: overlap and parts moved off the grid lose voxels,
        nearest-neighbour rotation gains or loses a few at the surface), ``air_before`` /
        ``air_after`` (fraction of the label on air, HU < −400), ``suspicious_after`` (air
        fraction above the ``check`` threshold), ``note`` and ``seconds``.

    Raises
    ------
    InputError
        Unparseable transform, unreadable files, image/label grid mismatch, existing output.
        Nothing is written then.
    """
    fix = load_transform(transform)
    matrix = fix.matrix
    src = Path(data)
    limit = max_air_fraction(label)

    def process(case: Case, new_root: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        assert case.label_path is not None
        lab = load_label(case.label_path)
        notes = []
        if fix.shape is not None and tuple(lab.shape[:2]) != tuple(fix.shape[:2]):
            notes.append(f"in-plane grid {lab.shape[0]}x{lab.shape[1]} differs from the reference "
                         f"{fix.shape[0]}x{fix.shape[1]}")
        before = lab.array
        n_before = int(np.count_nonzero(before == label))
        if n_before == 0:
            notes.append("label absent")
            after, overlap = before, 0
        else:
            after, overlap = move_label_cropped(before, label, matrix, APPLY_MODE)
        # the CT is read only over the slices the label occupies before or after (reading a gzipped
        # NIfTI stops at the last slice needed); the image grid must equal the label's
        ct, z0 = _ct_slab(case.image_path, lab, [before == label, after == label])
        save_label(after, lab, output_path(case.label_path, src, new_root))
        n_after = int(np.count_nonzero(after == label))
        z1 = z0 + ct.shape[2]
        air_before = label_air_fraction(ct, before[:, :, z0:z1], label)
        air_after = label_air_fraction(ct, after[:, :, z0:z1], label)
        return {
            "patient": case.patient_id,
            "voxels_before": n_before,
            "voxels_after": n_after,
            "overlap_voxels": int(overlap),
            "voxels_change": n_after - n_before,
            "air_before": _round_or_none(air_before),
            "air_after": _round_or_none(air_after),
            "suspicious_after": bool(limit is not None and np.isfinite(air_after) and air_after > limit),
            "note": "; ".join(notes),
            "seconds": round(time.perf_counter() - t0, 3),
        }

    return rewrite_dataset(src, out, process, f"realign apply (label {label})", overwrite)


def _ct_slab(image: Path, label: Volume, masks: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """CT values (HU) over the z-range of ``masks`` and the first slice index; checks the grid.

    Raises
    ------
    InputError
        Unreadable or truncated image, or an image grid that differs from the label's.
    """
    zs = [np.flatnonzero(m.any(axis=(0, 1))) for m in masks]
    zs = [z for z in zs if z.size]
    z0 = min((int(z[0]) for z in zs), default=0)
    z1 = max((int(z[-1]) + 1 for z in zs), default=0)
    try:
        img = nib.load(str(image))
        shape = img.shape
        grid = Volume(np.broadcast_to(np.zeros((), np.int16), shape[:3]), img.affine)
        diff = None if len(shape) not in (3, 4) else same_geometry(grid, label)
        if diff is not None:
            raise InputError(label.path or image, f"grid differs from image {image.name}: {diff}")
        index = (slice(None), slice(None), slice(z0, z1)) + ((0,) if len(shape) == 4 else ())
        slab = np.asarray(img.dataobj[index])
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(image, f"truncated or corrupt file ({exc})") from None
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(image, f"unreadable NIfTI file ({exc})") from None
    return slab, z0


def _round_or_none(value: float, digits: int = 4) -> float | None:
    return None if not np.isfinite(value) else round(float(value), digits)
