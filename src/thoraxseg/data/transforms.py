"""Rigid voxel-space transforms of one organ's label, in ``scipy.ndimage.affine_transform`` convention.

All matrices here are 4×4 homogeneous matrices ``M`` in voxel coordinates
``(x, y, z)`` (NIfTI order, see :mod:`thoraxseg.data`) that map an **output**
voxel to the **input** voxel it samples: ``out[o] = in[M @ o]`` — exactly the
convention of :func:`scipy.ndimage.affine_transform`.

The course corruption of SegTHOR's heart labels is

``M = C @ R(φ) @ C⁻¹ @ T``  with φ = −27° (in-plane, x–y), ``C`` the
translation to the centre (275, 200, 0) and ``T`` the translation by
(50, 40, 15) voxels, applied as ``affine_transform(heart, M, order=0)``.
Undoing it means applying ``M⁻¹`` the same way.

Examples
--------
>>> import numpy as np
>>> M = course_matrix()
>>> np.round(M[:3, 3], 3).tolist()
[1.885, 159.587, 15.0]
>>> bool(np.allclose(np.linalg.inv(M) @ M, np.eye(4)))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: The course parameters (voxel units on a 512×512 in-plane grid).
COURSE_ROTATION_DEG: float = -27.0
COURSE_CENTER: tuple[float, float, float] = (275.0, 200.0, 0.0)
COURSE_SHIFT: tuple[float, float, float] = (50.0, 40.0, 15.0)
COURSE_GRID: int = 512


def translation_matrix(shift: Sequence[float]) -> np.ndarray:
    """4×4 homogeneous translation by ``shift`` (voxels, ``(x, y, z)``)."""
    m = np.eye(4)
    m[:3, 3] = np.asarray(shift, dtype=np.float64)
    return m


def rotation_matrix_z(angle_deg: float) -> np.ndarray:
    """4×4 rotation by ``angle_deg`` in the x–y (transverse) plane, about the voxel origin."""
    phi = np.deg2rad(angle_deg)
    c, s = np.cos(phi), np.sin(phi)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def course_matrix(
    rotation_deg: float = COURSE_ROTATION_DEG,
    center: Sequence[float] = COURSE_CENTER,
    shift: Sequence[float] = COURSE_SHIFT,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """The course corruption matrix ``C @ R @ C⁻¹ @ T`` (output → input voxel).

    Parameters
    ----------
    rotation_deg
        In-plane rotation angle in degrees.
    center
        Rotation centre in voxels ``(x, y, z)`` on the 512-grid.
    shift
        Translation in voxels ``(x, y, z)``.
    scale
        Per-axis factor applied to ``center`` and ``shift`` — for grids other than
        SegTHOR's (e.g. ``n/512`` for an ``n×n`` in-plane grid).
    """
    sc = np.asarray(scale, dtype=np.float64)
    c1 = translation_matrix(np.asarray(center, dtype=np.float64) * sc)
    return c1 @ rotation_matrix_z(rotation_deg) @ np.linalg.inv(c1) @ translation_matrix(np.asarray(shift) * sc)


def grid_scale(shape: Sequence[int], reference_grid: int = COURSE_GRID) -> tuple[float, float, float]:
    """Scale factors that map the course's 512-grid parameters onto a grid of ``shape``.

    In-plane factors are ``nx/512`` and ``ny/512``; the z factor is their mean (a
    coarser in-plane grid of the same anatomy is coarser in z by the same factor).
    """
    sx, sy = shape[0] / reference_grid, shape[1] / reference_grid
    return (sx, sy, (sx + sy) / 2.0)


def transform_mask(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample a boolean mask through ``matrix`` (nearest neighbour, outside = False).

    ``out[o] = mask[matrix @ o]`` as in :func:`scipy.ndimage.affine_transform` with ``order=0``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    out = ndimage.affine_transform(mask.astype(np.uint8), m[:3, :3], offset=m[:3, 3], order=0,
                                   mode="constant", cval=0, output=np.uint8)
    return out.astype(bool)


def move_label(labels: np.ndarray, label: int, matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """Move one label through ``matrix``; every other label keeps its voxels.

    Returns
    -------
    moved
        New label array (same dtype). Voxels of ``label`` that land on another
        organ are dropped there (the other organ wins).
    overlap
        Number of such voxels.
    """
    mask = labels == label
    out = labels.copy()
    out[mask] = 0
    moved = transform_mask(mask, matrix)
    clash = moved & (out != 0)
    out[moved & ~clash] = label
    return out, int(clash.sum())
