"""Estimate the rigid transform that moves a corrupted organ label back onto its clean copy.

Given one *reference pair* — the same patient's moved label (``GT.nii.gz``) and clean label
(``GT_clean.nii.gz``, or ``GT2.nii.gz`` in the course's copy) on one grid — find the voxel matrix ``F`` (``scipy.ndimage.affine_transform``
convention, output voxel → input voxel, axes ``(x, y, z)``) such that
``transform_mask(moved, F) ≈ clean``. If the corruption was ``moved = transform_mask(clean, M)``
then ``F = M⁻¹``. Two methods:

``sweep`` (default, hand-written; see ``benchmarks/realign.py`` for why)
    1. *Centroid alignment*: rotations are taken about the clean organ's centroid, which is
       sent to the moved organ's centroid.
    2. *Coarse-to-fine in-plane sweep*: both masks are block-averaged to ~4 mm voxels; the IoU
       is evaluated for in-plane angles −180°…180° in 2° steps (all at once, on points), and the
       three best local maxima are re-swept in 0.25° steps.
    3. *Local refinement of all six rigid parameters* (3 rotations, 3 translations, rigid in
       mm): robust least squares (``scipy.optimize.least_squares``, soft-L1 loss) on the
       difference of the two masks' signed distance maps (mm, Euclidean distance transform with
       the voxel spacing), sampled by trilinear interpolation at points of a ±2-voxel band around
       each surface, in both directions (clean → moved and moved → clean). Smooth in the
       parameters, so it converges from the sweep's result; points mapped within 2 voxels of the
       grid edge, and moved-label surface next to another organ, are ignored, so parts of the
       label moved off the grid or overwritten by another organ do not bias it.
    4. *Polish on the exact overlap*: Powell's method minimises the number of band points where
       the nearest-neighbour-resampled masks disagree (what IoU measures), with a weak pull
       towards step 3's estimate along directions the data cannot resolve. Distance maps of thick
       slices are staircases, so step 3 alone can be off by ~1° out of plane; step 4 removes that.

``elastix`` (for comparison)
    ``itk-elastix`` rigid (Euler, centre-of-gravity initialisation) then affine registration
    of Gaussian-smoothed masks (σ = 2 mm) with ``AdvancedMeanSquares``; the resulting ITK
    transform is sampled at four points and converted to the same voxel matrix convention.

The result is the content of ``fix.json`` (see :func:`estimate_transform`).

Examples
--------
>>> import numpy as np
>>> from thoraxseg.data.transforms import course_matrix, transform_mask
>>> x, y, z = np.mgrid[:64, :64, :24]
>>> clean = (((x - 30) / 14) ** 2 + ((y - 34) / 9) ** 2 + ((z - 12) / 7) ** 2 < 1) | (
...     ((x - 40) / 5) ** 2 + ((y - 28) / 5) ** 2 + ((z - 12) / 5) ** 2 < 1)
>>> M = course_matrix(-20.0, (32, 32, 0), (3, -2, 1))
>>> moved = transform_mask(clean, M)
>>> F, info = estimate_matrix(moved, clean, (1.0, 1.0, 2.0))
>>> from thoraxseg.realign.geometry import relative_rotation_deg
>>> relative_rotation_deg(F, np.linalg.inv(M), (1.0, 1.0, 2.0)) < 0.2
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from thoraxseg.data.overlap import iou
from thoraxseg.data.volume import Volume, load_label, same_geometry
from thoraxseg.errors import InputError
from thoraxseg.labels import label_name
from thoraxseg.realign.geometry import (
    Bbox,
    bbox_slices,
    centroid,
    displacement_at,
    expand_bbox,
    mask_bbox,
    mm_frame_matrix,
    near_mask,
    rigid_voxel_matrix,
    rotation_parameters,
    subsample_points,
    transform_mask_cropped,
    world_matrix,
)

#: Methods accepted by :func:`estimate_transform`.
METHODS: tuple[str, ...] = ("sweep", "elastix")
#: Resampling mode used to apply a correction (see :func:`~thoraxseg.realign.geometry.transform_mask_cropped`).
APPLY_MODE: str = "grid-constant"
#: Version tag written into ``fix.json``.
FIX_FORMAT: str = "thoraxseg-realign-fix/1"

_COARSE_MM = 4.0  # voxel size of the coarse sweep (mm)
_COARSE_STEP_DEG = 2.0
_FINE_STEP_DEG = 0.25
_N_CANDIDATES = 3
_BAND_VOX = 2.0  # half-width of the surface band, in units of the largest voxel size
_EDGE_VOX = 2  # points mapped this close to the grid edge are ignored
_MAX_POINTS = 60_000  # band points per side (seeded subsample) ...
_FIT_POINTS = 15_000  # ... of which the least-squares stage uses this many per side
_OUTER_ROUNDS = 3  # least-squares rounds (the usable point set is updated between rounds)
_POLISH_BAND_VOX = 1.0  # the overlap polish uses band points within this many (largest) voxels
_POLISH_PULL = 5.0  # tie-breaking pull towards the least-squares estimate (counts per unit²)
_POLISH_XTOL = 0.02  # Powell tolerance, in units of ~1 voxel of surface motion
_POLISH_MAX_EVALS = 400
#: The guard after the polish: the sweep's start is polished too where the result's coarse IoU fell this far
#: below the start's. A reference pair's heart (realign) ends within 0.004 of it, either way; a heart fitted onto a
#: model's prediction fell 0.011 at most on the small phantom grid, and 0.38 where the least squares left the
#: sweep's basin (a 33-degree move fitted at 68 degrees).
_GUARD_DROP = 0.05
# The least-squares estimate is rounded to this grid (radians, mm) before the polish. Its last digits
# depend on the BLAS/LAPACK kernel and thread count (SVD, QR in scipy's trust-region solver); the
# polish minimises a piecewise-constant count, so a difference of 1e-12 there could send it to another
# point of a flat optimum. 1e-6 rad moves a surface 100 mm from the centre by 0.1 µm.
_QUANTUM = np.r_[np.full(3, 1e-6), np.full(3, 1e-5)]


# ----------------------------------------------------------------------------- public API


def estimate_transform(
    moved: str | Path,
    clean: str | Path,
    label: int = 2,
    method: str = "sweep",
    seed: int = 0,
) -> dict[str, Any]:
    """Estimate the correction that maps the moved label back onto the clean one.

    Parameters
    ----------
    moved, clean
        Label files (NIfTI) of the same patient on the same grid: the corrupted ``GT.nii.gz``
        and the reference ``GT_clean.nii.gz`` (the course's ``GT2.nii.gz``).
    label
        Label code of the organ to realign (default 2, heart).
    method
        ``"sweep"`` (default) or ``"elastix"``.
    seed
        Seed of the point subsampling (sweep) / elastix's random sampler. Same seed → same result.

    Returns
    -------
    dict
        The ``fix.json`` content: ``matrix_voxel`` (4×4, output voxel → input voxel, apply to the
        moved label with ``scipy.ndimage.affine_transform``), ``matrix_world`` (the same in the
        files' world mm frame, ``A F A⁻¹``), ``rotation`` (angle in degrees, unit axis in the voxel
        (x, y, z) mm frame and in world, signed in-plane angle of the correction and of the
        corruption), ``translation_voxel``/``translation_mm`` (matrix offsets),
        ``shift_at_centroid_voxel``/``shift_at_centroid_mm`` (displacement of the organ centroid),
        ``iou_before``/``iou_after`` on the reference pair, ``method``, ``runtime_s`` and the grid.

    Raises
    ------
    InputError
        Unreadable file, different grids, label absent in either file, unknown method.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InputError(Path(moved), f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    mov = load_label(moved)
    cln = load_label(clean)
    diff = same_geometry(mov, cln)
    if diff is not None:
        raise InputError(mov.path or Path(moved), f"grid differs from {cln.path}: {diff}")
    mmask = mov.array == label
    cmask = cln.array == label
    name = _label_text(label)
    for vol, mask in ((mov, mmask), (cln, cmask)):
        if not mask.any():
            raise InputError(vol.path or Path(moved), f"label {name} is absent")
    t_load = time.perf_counter() - t0
    matrix, info = estimate_matrix(mmask, cmask, mov.spacing, method=method, seed=seed,
                                   occluder=(mov.array != 0) & ~mmask)
    fixed = transform_mask_cropped(mmask, matrix, APPLY_MODE)
    result = describe_transform(matrix, cln, label, cmask)
    result.update(
        method=method,
        moved=str(mov.path),
        clean=str(cln.path),
        iou_before=round(iou(mmask, cmask), 6),
        iou_after=round(iou(fixed, cmask), 6),
        voxels_moved=int(mmask.sum()),
        voxels_clean=int(cmask.sum()),
        runtime_s=round(time.perf_counter() - t0, 3),
        load_s=round(t_load, 3),
        details=info,
    )
    return result


def describe_transform(matrix: np.ndarray, reference: Volume, label: int, clean_mask: np.ndarray | None = None
                       ) -> dict[str, Any]:
    """The geometric part of ``fix.json`` for a voxel correction matrix on ``reference``'s grid."""
    spacing = np.asarray(reference.spacing)
    wm = world_matrix(matrix, reference.affine)
    angle, axis, inplane = rotation_parameters(matrix, spacing)
    world_rot = reference.direction @ axis
    center = centroid(clean_mask) if clean_mask is not None and clean_mask.any() else (
        (np.asarray(reference.shape) - 1) / 2.0)
    shift = displacement_at(matrix, center)
    return {
        "format": FIX_FORMAT,
        "label": int(label),
        "label_name": _label_name_or_code(label),
        "convention": ("scipy.ndimage.affine_transform: output voxel (x, y, z) -> input voxel; "
                       "apply matrix_voxel to the moved label (order=0) to restore the clean label"),
        "shape": list(reference.shape),
        "spacing_mm": [float(v) for v in spacing],
        "affine": _round(reference.affine, 6),
        "matrix_voxel": _round(matrix, 9),
        "matrix_world": _round(wm, 9),
        "rotation": {
            "angle_deg": round(angle, 4),
            "axis_voxel": _round(axis, 6),
            "axis_world": _round(world_rot, 6),
            "inplane_deg": round(inplane, 4),
            "corruption_inplane_deg": round(-inplane, 4),
        },
        "translation_voxel": _round(matrix[:3, 3], 4),
        "translation_mm": _round(wm[:3, 3], 4),
        "centroid_voxel": _round(center, 3),
        "shift_at_centroid_voxel": _round(shift, 4),
        "shift_at_centroid_mm": _round(reference.affine[:3, :3] @ shift, 4),
    }


def estimate_matrix(
    moved: np.ndarray,
    clean: np.ndarray,
    spacing: Sequence[float],
    method: str = "sweep",
    seed: int = 0,
    occluder: np.ndarray | None = None,
    elastix_iterations: int = 500,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Estimate the voxel correction matrix from two boolean masks on one grid.

    Parameters
    ----------
    moved, clean
        Boolean masks, axes ``(x, y, z)``, same shape, both non-empty.
    spacing
        Voxel size in mm along ``(x, y, z)``.
    method
        ``"sweep"`` or ``"elastix"``.
    seed
        Seed for point subsampling / elastix sampling.
    occluder
        Optional boolean mask, on the moved label's grid, of the other organs of the moved label
        file. Where the moved organ landed on another organ it lost those voxels (the other organ
        wins), so the sweep ignores surface points within the band of an occluder there.
    elastix_iterations
        Optimiser iterations per resolution level and stage (elastix only).

    Returns
    -------
    matrix
        4×4 ``F`` with ``transform_mask(moved, F) ≈ clean``.
    info
        Per-stage diagnostics (angles, IoU, seconds).
    """
    moved = np.asarray(moved, dtype=bool)
    clean = np.asarray(clean, dtype=bool)
    if moved.shape != clean.shape:
        raise ValueError(f"masks differ in shape: {moved.shape} vs {clean.shape}")
    if not moved.any() or not clean.any():
        raise ValueError("both masks must be non-empty")
    sp = np.asarray(spacing, dtype=np.float64)
    if method == "sweep":
        occ = None if occluder is None else np.asarray(occluder, dtype=bool)
        return _estimate_sweep(moved, clean, sp, seed, occ)
    if method == "elastix":
        return _estimate_elastix(moved, clean, sp, seed, elastix_iterations)
    raise ValueError(f"unknown method {method!r}")


# ----------------------------------------------------------------------------- sweep


@dataclass
class _Coarse:
    """A block-averaged mask: ``mask[k]`` covers full voxels ``lo + f*k … lo + f*k + f − 1``."""

    mask: np.ndarray
    lo: np.ndarray
    factor: np.ndarray

    @classmethod
    def build(cls, full: np.ndarray, bbox: Bbox, factor: np.ndarray) -> _Coarse:
        lo = bbox[0]
        size = bbox[1] - lo
        n = -(-size // factor)  # ceil
        sub = np.zeros(tuple(n * factor), dtype=np.float32)
        crop = full[bbox_slices(bbox)]
        sub[: crop.shape[0], : crop.shape[1], : crop.shape[2]] = crop
        blocks = sub.reshape(n[0], factor[0], n[1], factor[1], n[2], factor[2]).mean(axis=(1, 3, 5))
        return cls(blocks >= 0.5, lo, factor)

    def points(self) -> np.ndarray:
        """Full-grid voxel coordinates of the centres of the True coarse voxels, ``(N, 3)``."""
        k = np.argwhere(self.mask).astype(np.float64)
        return self.lo + k * self.factor + (self.factor - 1) / 2.0

    def lookup(self, pts: np.ndarray) -> np.ndarray:
        """Nearest coarse voxel's value at full-grid coordinates ``pts`` (``(..., 3)``); outside = False."""
        k = np.rint((pts - self.lo - (self.factor - 1) / 2.0) / self.factor).astype(np.int64)
        shape = np.asarray(self.mask.shape)
        ok = np.all((k >= 0) & (k < shape), axis=-1)
        out = np.zeros(ok.shape, dtype=bool)
        kk = k[ok]
        out[ok] = self.mask[kk[:, 0], kk[:, 1], kk[:, 2]]
        return out


def _coarse_iou(matrices: np.ndarray, clean_pts: np.ndarray, moved: _Coarse) -> np.ndarray:
    """IoU (coarse voxels) of the clean point set against ``moved`` for each matrix ``(K, 4, 4)``."""
    q = np.einsum("kij,nj->kni", matrices[:, :3, :3], clean_pts) + matrices[:, None, :3, 3]
    inter = moved.lookup(q).sum(axis=1).astype(np.float64)
    n_c = clean_pts.shape[0]
    n_m = float(moved.mask.sum())
    return inter / (n_c + n_m - inter)


def _local_maxima_circular(values: np.ndarray, k: int) -> list[int]:
    """Indices of up to ``k`` largest circular local maxima (ties broken by order)."""
    left = np.roll(values, 1)
    right = np.roll(values, -1)
    peaks = np.flatnonzero((values >= left) & (values >= right))
    order = peaks[np.argsort(-values[peaks], kind="stable")]
    return [int(i) for i in order[:k]]


class _Field:
    """A scalar map on a crop around a mask (signed distance in mm, or a smoothed mask), sampled trilinearly."""

    def __init__(self, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        self.values = values
        self.lo = lo
        self.hi = hi

    @staticmethod
    def _crop(mask: np.ndarray, margin_vox: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bbox = mask_bbox(mask)
        assert bbox is not None
        lo, hi = expand_bbox(bbox, margin_vox, mask.shape)
        return mask[bbox_slices((lo, hi))], lo, hi

    @classmethod
    def signed_distance(cls, mask: np.ndarray, spacing: np.ndarray, margin_vox: np.ndarray) -> _Field:
        """Signed Euclidean distance (mm; < 0 inside) between voxel centres, with the voxel spacing."""
        crop, lo, hi = cls._crop(mask, margin_vox)
        sdf = (ndimage.distance_transform_edt(~crop, sampling=spacing)
               - ndimage.distance_transform_edt(crop, sampling=spacing))
        return cls(sdf.astype(np.float32), lo, hi)

    @classmethod
    def smoothed(cls, mask: np.ndarray, spacing: np.ndarray, margin_vox: np.ndarray, sigma_mm: float) -> _Field:
        """The mask (0/1) blurred by an isotropic Gaussian of ``sigma_mm`` (an anti-aliased shape)."""
        crop, lo, hi = cls._crop(mask, margin_vox)
        blurred = ndimage.gaussian_filter(crop.astype(np.float32), sigma_mm / spacing, mode="nearest")
        return cls(blurred, lo, hi)

    def band_points(self, half_width: float) -> np.ndarray:
        """Voxel centres (full-grid coordinates, ``(N, 3)``) with ``|value| ≤ half_width``."""
        return np.argwhere(np.abs(self.values) <= half_width).astype(np.float64) + self.lo

    def sample(self, pts: np.ndarray) -> np.ndarray:
        """Trilinear samples at full-grid voxel coordinates ``pts`` (``(N, 3)``); edge-extended."""
        return ndimage.map_coordinates(self.values, (pts - self.lo).T, order=1, mode="nearest")


class _Nearest:
    """Nearest-neighbour lookup of a mask at full-grid voxel coordinates (outside the grid = False).

    Only the box ``lo:hi`` (which must hold every True voxel) is kept, padded with one False voxel,
    so that a lookup is one clip and one gather.
    """

    def __init__(self, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        crop = mask[bbox_slices((lo, hi))]
        self.flat = np.pad(crop, 1).ravel()
        self.shape = np.asarray(crop.shape) + 2
        self.strides = np.array([self.shape[1] * self.shape[2], self.shape[2], 1], dtype=np.int64)
        self.origin = np.asarray(lo, dtype=np.float64) - 1.0

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        k = np.rint(pts - self.origin).astype(np.int64)
        np.clip(k, 0, self.shape - 1, out=k)
        return self.flat[k @ self.strides]


def _powell(cost: Any, x0: np.ndarray, unit: np.ndarray, max_evals: int = _POLISH_MAX_EVALS
            ) -> tuple[np.ndarray, dict[str, Any]]:
    """Minimise a piecewise-constant count near ``x0`` with Powell's method.

    Powell's line searches step over the small plateaus of a count. ``unit`` is the parameter
    change that moves the organ's surface by about one voxel. Along flat directions — parameters
    that nearest-neighbour resampling cannot identify within a voxel, such as a z-shift under an
    in-plane rotation — the count cannot choose, so a weak pull towards ``x0``
    (:data:`_POLISH_PULL` counts per unit²) and a final revert of every parameter whose move gained
    less than 0.5 % of the count keep the smooth least-squares estimate there.
    """
    def objective(z: np.ndarray) -> float:
        return float(cost(x0 + z * unit)) + _POLISH_PULL * float(z @ z)

    start = cost(x0)
    res = optimize.minimize(objective, np.zeros_like(x0), method="Powell",
                            options={"xtol": _POLISH_XTOL, "ftol": 1e-9, "maxfev": max_evals})
    x = x0 + res.x * unit
    best = cost(x)
    evals = int(res.nfev) + 2
    if best > start:  # never worse than the start
        x, best = np.array(x0, dtype=np.float64), start
    # Undo moves that bought (almost) nothing: along a flat direction Powell's end point is arbitrary.
    tol = max(2.0, 0.005 * best)
    reverted = []
    for i in range(x.size):
        if x[i] == x0[i]:
            continue
        trial = x.copy()
        trial[i] = x0[i]
        value = cost(trial)
        evals += 1
        if value <= best + tol:
            x, best = trial, min(best, value)
            reverted.append(i)
    return x, {"polish_disagreement_start": int(start), "polish_disagreement_end": int(best),
               "polish_evaluations": evals, "polish_step_units": _round((x - x0) / unit, 3),
               "polish_reverted": reverted}


def _inside_grid(pts: np.ndarray, shape: np.ndarray, edge: float) -> np.ndarray:
    return np.all((pts >= edge) & (pts <= shape - 1 - edge), axis=1)


def _estimate_sweep(moved: np.ndarray, clean: np.ndarray, spacing: np.ndarray, seed: int,
                    occluder: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Rigid voxel matrix clean → moved in four phases: sweep, surface bands, distance fit, overlap polish."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    c_clean = centroid(clean)
    c_moved = centroid(moved)
    fit = _Fit(spacing, c_clean, np.asarray(moved.shape))
    t_init = spacing * (c_moved - c_clean)  # mm; rotations are about the clean centroid
    best_angle, best_score, factor, coarse_iou = _sweep_inplane(fit, clean, moved, t_init)
    timings["sweep_s"] = time.perf_counter() - t

    t = time.perf_counter()
    fit.bands(clean, moved, seed, occluder)
    timings["distance_maps_s"] = time.perf_counter() - t

    t = time.perf_counter()
    x_start = np.r_[0.0, 0.0, np.deg2rad(best_angle), t_init]
    x, nfev = _refine_distance(fit, x_start)
    x_distance = x.copy()
    timings["refine_s"] = time.perf_counter() - t

    t = time.perf_counter()
    x, polish, used = _polish_overlap(fit, clean, moved, x)
    # The least squares can leave the sweep's basin (a reference organ cut or with a spur: 33 degrees in-plane
    # became 68 degrees, mostly tilt, coarse IoU 0.72 -> 0.35). Where the result overlaps clearly worse than the
    # sweep's start, the start is polished too and the better of the two is kept.
    refined_iou = end_iou = coarse_iou(fit.matrix_of(x))
    dropped = False
    if refined_iou < best_score - _GUARD_DROP:
        x_alt, polish_alt, used_alt = _polish_overlap(fit, clean, moved, x_start)
        alt_iou = coarse_iou(fit.matrix_of(x_alt))
        if alt_iou > refined_iou:
            x, polish, used, x_distance, end_iou, dropped = x_alt, polish_alt, used_alt, x_start, alt_iou, True
    timings["polish_s"] = time.perf_counter() - t

    matrix = fit.matrix_of(x)
    info: dict[str, Any] = {
        "centroid_clean_voxel": _round(c_clean, 3),
        "centroid_moved_voxel": _round(c_moved, 3),
        "coarse_factor": [int(v) for v in factor],
        "sweep_inplane_deg": round(best_angle, 3),
        "sweep_coarse_iou": round(best_score, 4),
        "band_points": int(fit.p_c.shape[0] + fit.p_m.shape[0]),
        "band_points_used": used,
        "refine_evaluations": nfev,
        "refined_coarse_iou": round(refined_iou, 4),
        "final_coarse_iou": round(end_iou, 4),
        "refine_dropped": dropped,
        "refine_inplane_deg": round(rotation_parameters(fit.matrix_of(x_distance), spacing)[2], 4),
        **polish,
        **{k: round(v, 3) for k, v in timings.items()},
    }
    return matrix, info


class _Fit:
    """One clean → moved fit: the parametrisation (rotations about the clean centroid, mm) and the band points."""

    def __init__(self, spacing: np.ndarray, c_clean: np.ndarray, shape: np.ndarray) -> None:
        self.spacing, self.c_clean, self.shape = spacing, c_clean, shape
        self.near_occ: np.ndarray | None = None
        self.radius_mm = 1.0  #: rms distance (mm) of the fit points from the clean centroid (set by the fit)

    def matrix_of(self, x: np.ndarray) -> np.ndarray:
        """Voxel matrix of parameters ``x`` (3 rotations in rad, 3 translations in mm)."""
        return rigid_voxel_matrix(x[:3], x[3:], self.c_clean, self.spacing)

    def bands(self, clean: np.ndarray, moved: np.ndarray, seed: int, occluder: np.ndarray | None) -> None:
        """Signed distance maps and the points within ±band of each surface (seeded subsets)."""
        spacing, shape = self.spacing, self.shape
        band_mm = _BAND_VOX * float(spacing.max())
        margin = np.ceil(band_mm / spacing).astype(np.int64) + 3
        self.sd_c = sd_c = _Field.signed_distance(clean, spacing, margin)
        self.sd_m = sd_m = _Field.signed_distance(moved, spacing, margin)
        rng = np.random.default_rng(seed)
        p_c = sd_c.band_points(band_mm)
        self.p_c = subsample_points(rng, p_c[_inside_grid(p_c, shape, _EDGE_VOX)], _MAX_POINTS)
        p_m = sd_m.band_points(band_mm)
        keep = _inside_grid(p_m, shape, _EDGE_VOX)
        if occluder is not None:
            # Voxels within the band of another organ of the moved file: the moved organ may have lost
            # voxels there, so its surface there is not the organ's surface.
            self.near_occ = near_mask(occluder, (sd_m.lo, sd_m.hi), spacing, band_mm)
        if self.near_occ is not None:
            keep &= ~self.near_occ[tuple(np.rint(p_m - sd_m.lo).astype(np.int64).T)]
        self.p_m = subsample_points(rng, p_m[keep], _MAX_POINTS)

    def mapped(self, x: np.ndarray, pc: np.ndarray, pm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clean points mapped into the moved grid, moved points mapped into the clean grid."""
        f = self.matrix_of(x)
        fi = np.linalg.inv(f)
        return pc @ f[:3, :3].T + f[:3, 3], pm @ fi[:3, :3].T + fi[:3, 3]

    def usable(self, x: np.ndarray, pc: np.ndarray, pm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points whose image lies inside the other grid (and, clean → moved, off any occluder)."""
        q_m, q_c = self.mapped(x, pc, pm)
        ok1 = _inside_grid(q_m, self.shape, _EDGE_VOX)
        if self.near_occ is not None:
            k = np.clip(np.rint(q_m - self.sd_m.lo).astype(np.int64), 0, np.asarray(self.near_occ.shape) - 1)
            ok1 &= ~self.near_occ[tuple(k.T)]
        return ok1, _inside_grid(q_c, self.shape, _EDGE_VOX)


def _sweep_inplane(fit: _Fit, clean: np.ndarray, moved: np.ndarray, t_init: np.ndarray
                   ) -> tuple[float, float, np.ndarray, Callable[[np.ndarray], float]]:
    """Centroid alignment + coarse-to-fine in-plane sweep on block-averaged masks: (angle °, coarse IoU, factor,
    the coarse IoU of a voxel matrix)."""
    factor = np.maximum(1, np.rint(_COARSE_MM / fit.spacing)).astype(np.int64)
    bb_c = mask_bbox(clean)
    bb_m = mask_bbox(moved)
    assert bb_c is not None and bb_m is not None
    coarse_c = _Coarse.build(clean, bb_c, factor)
    coarse_m = _Coarse.build(moved, bb_m, factor)
    if not coarse_c.mask.any() or not coarse_m.mask.any():  # organ thinner than a coarse voxel
        factor = np.ones(3, np.int64)
        coarse_c = _Coarse.build(clean, bb_c, factor)
        coarse_m = _Coarse.build(moved, bb_m, factor)
    pts_coarse = coarse_c.points()

    def sweep(angles_deg: np.ndarray) -> np.ndarray:
        mats = np.stack([fit.matrix_of(np.r_[0.0, 0.0, np.deg2rad(a), t_init]) for a in angles_deg])
        return _coarse_iou(mats, pts_coarse, coarse_m)

    coarse_angles = np.arange(-180.0, 180.0, _COARSE_STEP_DEG)
    coarse_scores = sweep(coarse_angles)
    best_angle, best_score = 0.0, -1.0
    for i in _local_maxima_circular(coarse_scores, _N_CANDIDATES):
        fine = coarse_angles[i] + np.arange(-_COARSE_STEP_DEG, _COARSE_STEP_DEG + 1e-9, _FINE_STEP_DEG)
        scores = sweep(fine)
        j = int(np.argmax(scores))
        if scores[j] > best_score:
            best_angle, best_score = float(fine[j]), float(scores[j])

    def coarse_iou(matrix: np.ndarray) -> float:
        return float(_coarse_iou(matrix[None], pts_coarse, coarse_m)[0])

    return best_angle, best_score, factor, coarse_iou


def _refine_distance(fit: _Fit, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Robust least squares on the signed distance maps (a subset of the band points); (x quantised, evaluations)."""
    spacing, c_clean = fit.spacing, fit.c_clean
    pc_fit, pm_fit = fit.p_c[: _FIT_POINTS], fit.p_m[: _FIT_POINTS]  # already in random order
    v_c = fit.sd_c.sample(pc_fit)
    v_m = fit.sd_m.sample(pm_fit)
    radius_mm = float(np.sqrt(np.mean(np.sum(((pc_fit - c_clean) * spacing) ** 2, axis=1)))) or 1.0
    fit.radius_mm = radius_mm
    nfev = 0
    for _ in range(_OUTER_ROUNDS):  # the usable point set is fixed within a round: a smooth objective
        ok1, ok2 = fit.usable(x, pc_fit, pm_fit)

        def residuals(x: np.ndarray, ok1: np.ndarray = ok1, ok2: np.ndarray = ok2) -> np.ndarray:
            q_m, q_c = fit.mapped(x, pc_fit, pm_fit)
            return np.concatenate([np.where(ok1, fit.sd_m.sample(q_m) - v_c, 0.0),
                                   np.where(ok2, fit.sd_c.sample(q_c) - v_m, 0.0)])

        res = optimize.least_squares(
            residuals, x, loss="soft_l1", f_scale=float(spacing.min()), method="trf",
            x_scale=np.r_[np.full(3, 1.0 / radius_mm), np.ones(3)], diff_step=1e-4, xtol=1e-8, ftol=1e-8,
            max_nfev=100)
        nfev += int(res.nfev)
        step = np.abs(res.x - x)
        x = res.x
        if np.all(step[:3] * radius_mm < 0.01) and np.all(step[3:] < 0.01):
            break
    return np.round(x / _QUANTUM) * _QUANTUM, nfev  # quantised: a machine-independent start for the polish


def _polish_overlap(fit: _Fit, clean: np.ndarray, moved: np.ndarray,
                    x: np.ndarray) -> tuple[np.ndarray, dict[str, Any], int]:
    """Polish on the exact overlap: nearest-neighbour disagreement of the two masks at the band points (both
    directions), minimised by a compass search over the six parameters; (x, search facts, points used)."""
    spacing = fit.spacing
    polish_mm = _POLISH_BAND_VOX * float(spacing.max())
    pp_c = fit.p_c[np.abs(fit.sd_c.sample(fit.p_c)) <= polish_mm]
    pp_m = fit.p_m[np.abs(fit.sd_m.sample(fit.p_m)) <= polish_mm]
    ok1, ok2 = fit.usable(x, pp_c, pp_m)
    look_c = _Nearest(clean, fit.sd_c.lo, fit.sd_c.hi)
    look_m = _Nearest(moved, fit.sd_m.lo, fit.sd_m.hi)
    in_c = look_c(pp_c)
    in_m = look_m(pp_m)

    def disagreement(x: np.ndarray) -> int:
        q_m, q_c = fit.mapped(x, pp_c, pp_m)
        return int(np.count_nonzero((look_m(q_m) != in_c) & ok1) + np.count_nonzero((look_c(q_c) != in_m) & ok2))

    unit = np.r_[np.full(3, float(spacing.min()) / fit.radius_mm), spacing]
    x, polish = _powell(disagreement, x, unit)
    return x, polish, int(ok1.sum() + ok2.sum())


# ----------------------------------------------------------------------------- elastix


def _itk_image(itk: Any, array: np.ndarray, spacing: np.ndarray, lo: np.ndarray) -> Any:
    """An ITK float image from an ``(x, y, z)`` array whose voxel 0 sits at full-grid voxel ``lo``.

    Physical coordinates are ``spacing * full-grid index`` (mm along the voxel axes).
    """
    img = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in lo * spacing])
    return img


def _estimate_elastix(moved: np.ndarray, clean: np.ndarray, spacing: np.ndarray, seed: int,
                      iterations: int = 500) -> tuple[np.ndarray, dict[str, Any]]:
    t = time.perf_counter()
    import itk  # slow import (several seconds): only when elastix is asked for

    sigma_vox = 2.0 / spacing
    margin = np.ceil(4 * sigma_vox).astype(np.int64) + 4
    images = []
    for mask in (clean, moved):
        bbox = expand_bbox(mask_bbox(mask), margin, mask.shape)  # type: ignore[arg-type]
        crop = mask[bbox_slices(bbox)].astype(np.float32)
        images.append(_itk_image(itk, ndimage.gaussian_filter(crop, sigma_vox), spacing, bbox[0]))
    fixed_img, moving_img = images
    params = itk.ParameterObject.New()
    common = {
        "Metric": "AdvancedMeanSquares",
        "MaximumNumberOfIterations": str(int(iterations)),
        "NumberOfSpatialSamples": "4096",
        "WriteResultImage": "false",
        "RandomSeed": str(int(seed) % 2**31 + 1),
    }
    for kind, extra in (("rigid", {"AutomaticTransformInitialization": "true",
                                   "AutomaticTransformInitializationMethod": "CenterOfGravity"}),
                        ("affine", {})):
        pmap = params.GetDefaultParameterMap(kind)
        for key, value in {**common, **extra}.items():
            pmap[key] = [value]
        params.AddParameterMap(pmap)
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    reg = itk.ElastixRegistrationMethod.New(fixed_img, moving_img)
    reg.SetParameterObject(params)
    reg.SetLogToConsole(False)
    reg.SetNumberOfThreads(2)
    reg.UpdateLargestPossibleRegion()
    transform = reg.GetCombinationTransform()
    # The ITK transform maps fixed (clean) physical points to moving (moved) ones: F in mm.
    basis = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    mapped = np.array([list(transform.TransformPoint([float(v) for v in p])) for p in basis])
    g = np.eye(4)
    g[:3, 3] = mapped[0]
    g[:3, :3] = ((mapped[1:] - mapped[0]) / 100.0).T
    s = np.r_[spacing, 1.0]
    matrix = np.diag(1.0 / s) @ g @ np.diag(s)
    info = {
        "elastix_setup_s": round(t_setup, 3),
        "elastix_register_s": round(time.perf_counter() - t, 3),
        "smoothing_sigma_mm": 2.0,
        "affine_scale": _round(np.linalg.svd(mm_frame_matrix(matrix, spacing)[:3, :3], compute_uv=False), 5),
    }
    return matrix, info


# ----------------------------------------------------------------------------- helpers


def _round(values: Any, digits: int) -> list[Any]:
    arr = np.asarray(values, dtype=np.float64)
    return np.round(arr, digits).tolist()


def _label_name_or_code(label: int) -> str:
    try:
        return label_name(label)
    except KeyError:
        return str(label)


def _label_text(label: int) -> str:
    name = _label_name_or_code(label)
    return f"{label} ({name})" if name != str(label) else str(label)
