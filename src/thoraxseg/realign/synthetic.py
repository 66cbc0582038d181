"""A minimal synthetic thorax for realignment tests and benchmarks (not the phantom cohort).

An asymmetric, heart-like label (a tilted ellipsoid with two atrial lobes and an apex bump, so
that no rotation maps it onto itself), an aorta and an esophagus tube, on a CT with body, lungs
and outside air. Everything is placed in mm relative to the grid, so the same anatomy can be
drawn on any grid (e.g. 512×512×200 at 0.9×0.9×2.5 mm, or a small test grid).

Examples
--------
>>> ct, lab = synthetic_thorax((64, 64, 32), (5.0, 5.0, 8.0))
>>> ct.dtype.name, lab.dtype.name, sorted(np.unique(lab).tolist())
('int16', 'uint8', [0, 1, 2, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from thoraxseg.labels import Organ


def _ellipsoid(coords: tuple[np.ndarray, ...], center: Sequence[float], radii: Sequence[float],
               tilt_deg: float = 0.0) -> np.ndarray:
    x, y, z = (c - c0 for c, c0 in zip(coords, center, strict=True))
    t = np.deg2rad(tilt_deg)
    xr = np.cos(t) * x + np.sin(t) * y
    yr = -np.sin(t) * x + np.cos(t) * y
    return (xr / radii[0]) ** 2 + (yr / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1.0


def synthetic_thorax(
    shape: Sequence[int] = (512, 512, 200),
    spacing: Sequence[float] = (0.9, 0.9, 2.5),
    seed: int = 0,
    heart_center_frac: Sequence[float] = (0.56, 0.55, 0.35),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a CT (int16 HU) and labels (uint8, SegTHOR codes) on a grid, axes ``(x, y, z)``.

    Parameters
    ----------
    shape
        Grid size in voxels ``(x, y, z)``.
    spacing
        Voxel size in mm.
    seed
        Seed of the CT noise (the anatomy itself is deterministic).
    heart_center_frac
        Heart centre as a fraction of the field of view along each axis.
    """
    shape = tuple(int(v) for v in shape)
    sp = np.asarray(spacing, dtype=np.float64)
    fov = np.asarray(shape) * sp
    coords = tuple(np.arange(n, dtype=np.float32)[tuple(slice(None) if a == i else None for a in range(3))]
                   * np.float32(sp[i]) for i, n in enumerate(shape))
    mid = fov / 2.0
    hc = np.asarray(heart_center_frac) * fov
    labels = np.zeros(shape, np.uint8)
    # Heart: main ventricles + two atrial lobes + an apex bump (mm).
    heart = _ellipsoid(coords, hc, (58.0, 42.0, 48.0), tilt_deg=35.0)
    heart |= _ellipsoid(coords, hc + np.array([-30.0, -22.0, 28.0]), (30.0, 24.0, 24.0))
    heart |= _ellipsoid(coords, hc + np.array([22.0, -30.0, 24.0]), (22.0, 18.0, 20.0))
    heart |= _ellipsoid(coords, hc + np.array([48.0, 26.0, -14.0]), (16.0, 14.0, 14.0))
    # Aorta: ascending tube from the heart top, descending tube beside the spine (mm).
    x, y, z = coords
    asc = ((x - (hc[0] - 12.0)) ** 2 + (y - (hc[1] - 38.0)) ** 2 <= 14.0**2) & (z >= hc[2] + 20.0)
    desc = ((x - (mid[0] + 25.0)) ** 2 + (y - (mid[1] + 0.3 * fov[1] * 0.5)) ** 2 <= 12.0**2)
    esoph = ((x - (mid[0] + 8.0)) ** 2 + (y - (mid[1] + 0.25 * fov[1] * 0.5)) ** 2 <= 7.0**2)
    labels[heart] = int(Organ.HEART)
    labels[esoph & ~heart] = int(Organ.ESOPHAGUS)
    labels[(asc | desc) & ~heart & ~esoph] = int(Organ.AORTA)
    # CT: outside air, body (soft tissue), two lungs, contrast in the aorta.
    rng = np.random.default_rng(seed)
    ct = np.full(shape, -1000.0, np.float32)
    body = ((x - mid[0]) / (0.45 * fov[0])) ** 2 + ((y - mid[1]) / (0.36 * fov[1])) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    ct[body] = 40.0
    for side in (-1.0, 1.0):
        lung = _ellipsoid(coords, (mid[0] + side * 0.2 * fov[0], mid[1], mid[2]),
                          (0.17 * fov[0], 0.26 * fov[1], 0.6 * fov[2]))
        ct[lung & ~(labels > 0)] = -850.0
    ct[labels == int(Organ.AORTA)] = 250.0
    ct[labels == int(Organ.HEART)] = 45.0
    ct += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16), labels


def synthetic_affine(spacing: Sequence[float], origin: Sequence[float] = (120.0, 140.0, -300.0)) -> np.ndarray:
    """An LPS-like voxel → mm affine (x and y flipped, as in SegTHOR/DICOM-derived NIfTI)."""
    affine = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])
    affine[:3, 3] = origin
    return affine


def write_case(
    folder: str | Path,
    ct: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    clean: np.ndarray | None = None,
) -> Path:
    """Write one SegTHOR case folder ``folder/{<name>.nii.gz, GT.nii.gz[, GT_clean.nii.gz]}``.

    The image is named after the folder (``Patient_01/Patient_01.nii.gz``). Returns the folder.
    """
    from thoraxseg.data.layout import CLEAN_LABEL_NAME, LABEL_NAME
    from thoraxseg.data.volume import Volume, save_label, save_volume

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ref = Volume(np.asarray(ct, dtype=np.int16), synthetic_affine(spacing))
    save_volume(ref, out / f"{out.name}.nii.gz")
    save_label(labels, ref, out / LABEL_NAME)
    if clean is not None:
        save_label(clean, ref, out / CLEAN_LABEL_NAME)
    return out
