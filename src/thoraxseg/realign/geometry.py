"""Geometry of rigid label transforms: parametrisation, cropped resampling, angles, world matrices.

Conventions (shared with :mod:`thoraxseg.data.transforms`):

* voxel coordinates are ``(x, y, z)`` in NIfTI order; a voxel's centre is its integer index;
* a 4×4 matrix ``F`` maps an **output** voxel to the **input** voxel it samples,
  ``out[o] = in[F @ o]`` (:func:`scipy.ndimage.affine_transform`);
* a *correction* ``F`` is applied to the moved label and restores the clean one:
  ``clean ≈ transform_mask(moved, F)``. If the corruption was ``moved = transform_mask(clean, M)``,
  then ``F = M⁻¹``;
* "rigid" means rigid in millimetres: ``F = S⁻¹ · G · S`` with ``S = diag(spacing)`` and ``G`` a
  rotation plus translation. With equal in-plane spacing an in-plane voxel rotation (the course
  corruption) is exactly such a transform.

Examples
--------
>>> import numpy as np
>>> F = rigid_voxel_matrix([0.0, 0.0, np.deg2rad(27.0)], [3.0, 0.0, 0.0], center=[10, 10, 5],
...                        spacing=[1.0, 1.0, 2.5])
>>> angle, axis, inplane = rotation_parameters(F, [1.0, 1.0, 2.5])
>>> round(angle, 6), np.round(axis, 6).tolist(), round(inplane, 6)
(27.0, [0.0, 0.0, 1.0], 27.0)
>>> np.round(displacement_at(F, [10, 10, 5]), 6).tolist()  # centre moves by the translation (mm → voxels)
[3.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from thoraxseg.data.overlap import iou

Bbox = tuple[np.ndarray, np.ndarray]


def mask_bbox(mask: np.ndarray) -> Bbox | None:
    """Bounding box of the True voxels: ``(lo, hi)`` with ``lo`` inclusive, ``hi`` exclusive (voxels).

    Returns None for an empty mask.

    >>> m = np.zeros((5, 6, 7), bool); m[1:3, 2, 4:6] = True
    >>> [b.tolist() for b in mask_bbox(m)]
    [[1, 2, 4], [3, 3, 6]]
    """
    lo = []
    hi = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)


def expand_bbox(bbox: Bbox, margin: Sequence[int] | int, shape: Sequence[int]) -> Bbox:
    """Grow ``bbox`` by ``margin`` voxels per side, clipped to a grid of ``shape``."""
    m = np.broadcast_to(np.asarray(margin, dtype=np.int64), (len(shape),))
    lo = np.maximum(bbox[0] - m, 0)
    hi = np.minimum(bbox[1] + m, np.asarray(shape, dtype=np.int64))
    return lo, hi


def bbox_slices(bbox: Bbox) -> tuple[slice, ...]:
    """Index slices selecting ``bbox`` from an array."""
    return tuple(slice(int(a), int(b)) for a, b in zip(bbox[0], bbox[1], strict=True))


def subsample_points(rng: np.random.Generator, pts: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the rows of ``pts``, drawn without replacement by ``rng``, in their original order.

    >>> subsample_points(np.random.default_rng(0), np.arange(10).reshape(5, 2), 3).shape
    (3, 2)
    """
    if pts.shape[0] <= n:
        return pts
    return pts[np.sort(rng.choice(pts.shape[0], size=n, replace=False))]


def near_mask(mask: np.ndarray, box: Bbox, spacing: np.ndarray, band_mm: float) -> np.ndarray | None:
    """Voxels of the box ``box`` within ``band_mm`` plus one largest voxel size (mm, centre to centre) of ``mask``.

    The band plus one voxel: a label that lost voxels to another organ lost them next to that organ, so
    its surface within a band of it is not the organ's own. ``None`` where ``mask`` has no voxel in the box.

    >>> m = np.zeros((5, 1, 1), bool); m[0] = True
    >>> near_mask(m, (np.zeros(3, int), np.array([5, 1, 1])), np.ones(3), 1.0)[:, 0, 0].tolist()
    [True, True, True, False, False]
    """
    crop = mask[bbox_slices(box)]
    if not crop.any():
        return None
    return ndimage.distance_transform_edt(~crop, sampling=spacing) <= band_mm + float(np.max(spacing))


def centroid(mask: np.ndarray) -> np.ndarray:
    """Centre of mass of a non-empty mask, in voxels ``(x, y, z)``."""
    bbox = mask_bbox(mask)
    if bbox is None:
        raise ValueError("empty mask has no centroid")
    sub = mask[bbox_slices(bbox)]
    return np.asarray(ndimage.center_of_mass(sub), dtype=np.float64) + bbox[0]


def transform_mask_cropped(mask: np.ndarray, matrix: np.ndarray, mode: str = "constant") -> np.ndarray:
    """:func:`~thoraxseg.data.transforms.transform_mask`, computed only where it can be non-zero.

    Resamples ``mask`` through ``matrix`` (output voxel → input voxel, nearest neighbour,
    outside = False) on the same grid, but runs :func:`scipy.ndimage.affine_transform` only on the
    output box that maps into the mask's bounding box (plus a 2-voxel zero margin), so the cost
    scales with the organ, not the volume. Voxel-for-voxel identical to the full transform.

    Parameters
    ----------
    mask
        Boolean mask, axes ``(x, y, z)``.
    matrix
        4×4 output voxel → input voxel matrix.
    mode
        ``"constant"`` (scipy's default, as in the course corruption: a sample point must lie within
        ``[0, n − 1]`` on every axis) or ``"grid-constant"`` (plain nearest neighbour: points within
        half a voxel outside the grid still take the edge voxel). Realignment applies its
        corrections with ``"grid-constant"``, so that a correction that sends a voxel to −0.001
        does not drop the organ's edge slice.
    """
    shape = np.asarray(mask.shape, dtype=np.int64)
    out = np.zeros(mask.shape, dtype=bool)
    bbox = mask_bbox(mask)
    if bbox is None:
        return out
    m = np.asarray(matrix, dtype=np.float64)
    in_lo, in_hi = expand_bbox(bbox, 2, mask.shape)
    # Output voxels whose sample point lands inside the (margined) input box.
    corners = np.array([[a, b, c] for a in (in_lo[0] - 1, in_hi[0]) for b in (in_lo[1] - 1, in_hi[1])
                        for c in (in_lo[2] - 1, in_hi[2])], dtype=np.float64)
    inv = np.linalg.inv(m)
    pts = corners @ inv[:3, :3].T + inv[:3, 3]
    out_lo = np.clip(np.floor(pts.min(axis=0)).astype(np.int64) - 1, 0, shape)
    out_hi = np.clip(np.ceil(pts.max(axis=0)).astype(np.int64) + 2, 0, shape)
    if np.any(out_hi <= out_lo):
        return out
    sub_in = mask[bbox_slices((in_lo, in_hi))].astype(np.uint8)
    lin = m[:3, :3]
    offset = lin @ out_lo.astype(np.float64) + m[:3, 3] - in_lo
    sub_out = ndimage.affine_transform(sub_in, lin, offset=offset, output_shape=tuple(out_hi - out_lo),
                                       order=0, mode=mode, cval=0, output=np.uint8)
    out[bbox_slices((out_lo, out_hi))] = sub_out.astype(bool)
    return out


def move_label_cropped(labels: np.ndarray, label: int, matrix: np.ndarray, mode: str = "constant"
                       ) -> tuple[np.ndarray, int]:
    """:func:`~thoraxseg.data.transforms.move_label` using :func:`transform_mask_cropped`.

    Returns the new label array (other labels keep every voxel; where the moved label lands on
    another organ, that organ wins) and the number of such overlapping voxels. ``mode`` as in
    :func:`transform_mask_cropped`.
    """
    mask = labels == label
    out = labels.copy()
    out[mask] = 0
    moved = transform_mask_cropped(mask, matrix, mode)
    clash = moved & (out != 0)
    out[moved & ~clash] = label
    return out, int(clash.sum())


def rigid_voxel_matrix(
    rotvec: Sequence[float], translation_mm: Sequence[float], center: Sequence[float], spacing: Sequence[float]
) -> np.ndarray:
    """Voxel matrix of a mm-rigid transform: rotate about ``center`` then translate.

    ``F @ p`` (voxels) equals ``S⁻¹ (R (S p − S c) + S c + t)`` with ``S = diag(spacing)``.

    Parameters
    ----------
    rotvec
        Rotation vector (axis × angle, radians) in the mm frame aligned with the voxel axes.
    translation_mm
        Translation ``t`` in mm along ``(x, y, z)``.
    center
        Rotation centre ``c`` in voxels.
    spacing
        Voxel size in mm along ``(x, y, z)``.
    """
    # Element-wise products and sums in a fixed order, no BLAS: the same bits on every CPU kernel.
    s = np.asarray(spacing, dtype=np.float64)
    c_mm = np.asarray(center, dtype=np.float64) * s
    rot = Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_matrix()
    rot_c = rot[:, 0] * c_mm[0] + rot[:, 1] * c_mm[1] + rot[:, 2] * c_mm[2]
    f = np.eye(4)
    f[:3, :3] = rot * s[None, :] / s[:, None]
    f[:3, 3] = (c_mm - rot_c + np.asarray(translation_mm, dtype=np.float64)) / s
    return f


def mm_frame_matrix(matrix: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``S F S⁻¹``: the voxel matrix expressed in mm along the voxel axes (rigid if ``F`` is mm-rigid)."""
    s = np.r_[np.asarray(spacing, dtype=np.float64), 1.0]
    return np.diag(s) @ np.asarray(matrix, dtype=np.float64) @ np.diag(1.0 / s)


def rotation_parameters(matrix: np.ndarray, spacing: Sequence[float]) -> tuple[float, np.ndarray, float]:
    """Rotation angle (degrees, ≥ 0), unit axis and signed in-plane angle of a voxel matrix.

    The linear part is taken in the mm frame (:func:`mm_frame_matrix`) and projected onto the
    nearest rotation (polar decomposition), so affine estimates get their rotational part.

    Returns
    -------
    angle_deg
        Rotation angle in degrees (0–180).
    axis
        Unit rotation axis ``(x, y, z)`` in the mm frame along the voxel axes (``z`` = slice axis).
    inplane_deg
        Signed rotation in the x–y (transverse) plane, ``atan2(R[1,0], R[0,0])`` in degrees —
        the sign convention of :func:`~thoraxseg.data.transforms.rotation_matrix_z`.
    """
    rot = nearest_rotation(mm_frame_matrix(matrix, spacing)[:3, :3])
    rv = Rotation.from_matrix(rot).as_rotvec()
    angle = float(np.linalg.norm(rv))
    axis = rv / angle if angle > 1e-12 else np.array([0.0, 0.0, 1.0])
    inplane = float(np.degrees(np.arctan2(rot[1, 0], rot[0, 0])))
    return float(np.degrees(angle)), axis, inplane


def nearest_rotation(linear: np.ndarray) -> np.ndarray:
    """The rotation matrix closest to a 3×3 matrix (polar decomposition via SVD)."""
    u, _, vt = np.linalg.svd(np.asarray(linear, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def world_matrix(matrix: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The same transform in world (mm) coordinates: ``A F A⁻¹`` with ``A`` the voxel → mm affine.

    ``W @ x`` (mm) is the world position sampled for the output world position ``x``.
    """
    a = np.asarray(affine, dtype=np.float64)
    return a @ np.asarray(matrix, dtype=np.float64) @ np.linalg.inv(a)


def displacement_at(matrix: np.ndarray, point: Sequence[float]) -> np.ndarray:
    """``F p − p`` in voxels: where the output voxel ``p`` samples from, relative to itself."""
    p = np.asarray(point, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return m[:3, :3] @ p + m[:3, 3] - p


def relative_rotation_deg(estimate: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Angle (degrees) of the rotation taking ``truth``'s rotational part to ``estimate``'s (mm frame)."""
    r_est = nearest_rotation(mm_frame_matrix(estimate, spacing)[:3, :3])
    r_true = nearest_rotation(mm_frame_matrix(truth, spacing)[:3, :3])
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(r_est @ r_true.T).as_rotvec())))


def translation_error_vox(estimate: np.ndarray, truth: np.ndarray, point: Sequence[float]) -> float:
    """Distance (voxels) between where ``estimate`` and ``truth`` send ``point``: ``|F̂p − Fp|``."""
    p = np.r_[np.asarray(point, dtype=np.float64), 1.0]
    return float(np.linalg.norm((np.asarray(estimate) @ p - np.asarray(truth) @ p)[:3]))


# Directions (mm frame) along which :func:`identifiable_rotation_deg` scans: the three axes, both
# senses, and the four tilts between x and y (out of plane: what thick slices resolve worst).
_SCAN_AXES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1],
                       [1, 1, 0], [1, -1, 0], [-1, 1, 0], [-1, -1, 0]], dtype=np.float64)


def identifiable_rotation_deg(moved: np.ndarray, clean: np.ndarray, matrix: np.ndarray, spacing: Sequence[float],
                              *, max_deg: float = 2.0, step_deg: float = 0.05, noise_deg: float = 0.1,
                              mode: str = "grid-constant") -> tuple[float, float]:
    """How finely a mask pair determines the rotation of a correction near ``matrix``.

    Nearest-neighbour resampling makes the IoU of ``transform_mask(moved, F)`` with ``clean`` a
    noisy, piecewise-constant function of ``F``: rotations of at most ``noise_deg`` about the
    clean centroid (which move the surface by a small fraction of a voxel) change it only through
    which voxel centres round which way. The spread of the IoU over those rotations is the
    *resampling noise*; a rotation whose IoU stays within that noise of ``matrix``'s own cannot be
    told apart from ``matrix`` by the data. This function scans rotations about the clean centroid
    in ``step_deg`` steps along ten directions (±x, ±y, ±z and the four x–y tilts, mm frame) and
    returns, for the flattest direction, the first angle at which the IoU falls below
    ``IoU(matrix) − noise``: an estimate can be expected to lie within that angle of ``matrix``
    (e.g. the exact inverse of a known corruption), whatever the machine's floating-point rounding.

    Parameters
    ----------
    moved, clean
        Boolean masks on one grid, axes ``(x, y, z)``.
    matrix
        Correction voxel matrix (output voxel → input voxel), e.g. the exact inverse.
    spacing
        Voxel size in mm along ``(x, y, z)``.
    max_deg, step_deg, noise_deg
        Largest angle scanned, scan step, and the angle below which IoU changes count as noise (degrees).
    mode
        Resampling mode of :func:`transform_mask_cropped`.

    Returns
    -------
    bound_deg
        Identifiable rotation (degrees); ``max_deg`` when the IoU never leaves the noise band.
    noise_iou
        The resampling noise of the IoU (max − min over rotations within ``noise_deg``).

    Examples
    --------
    Nearest-neighbour resampling of a 28 × 16 × 6-voxel ellipsoid does not change a single voxel for
    rotations of a few degrees, so the data cannot pin its rotation down more finely than that:

    >>> x, y, z = np.mgrid[:40, :40, :20]
    >>> ell = ((x - 20) / 14) ** 2 + ((y - 20) / 8) ** 2 + ((z - 10) / 6) ** 2 < 1
    >>> bound, noise = identifiable_rotation_deg(ell, ell, np.eye(4), (1.0, 1.0, 2.0), max_deg=8.0)
    >>> 2.0 < bound < 8.0, noise
    (True, 0.0)
    """
    center = centroid(clean)
    matrix = np.asarray(matrix, dtype=np.float64)

    def iou_at(rotvec_deg: np.ndarray) -> float:
        d = rigid_voxel_matrix(np.deg2rad(rotvec_deg), (0.0, 0.0, 0.0), center, spacing)
        return iou(transform_mask_cropped(moved, matrix @ d, mode), clean)

    ref = iou_at(np.zeros(3))
    axes = _SCAN_AXES / np.linalg.norm(_SCAN_AXES, axis=1, keepdims=True)
    small = np.arange(step_deg, noise_deg + 1e-9, step_deg)
    near = [ref] + [iou_at(a * s) for a in axes for s in small]
    noise = float(max(near) - min(near))
    bound = 0.0
    for a in axes:
        first = max_deg
        for angle in np.arange(step_deg, max_deg + 1e-9, step_deg):
            if iou_at(a * angle) < ref - noise:
                first = float(angle)
                break
        bound = max(bound, first)
    return round(bound, 6), noise
