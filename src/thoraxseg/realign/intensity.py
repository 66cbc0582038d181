"""Refine a rigid label correction on the CT itself: the label's surface onto the organ's edges.

A correction estimated against a *reference segmentation* (a model's prediction, in ``thoraxseg qa``)
inherits the reference's own error: the moved label is registered onto where the model puts the
organ, not onto where the annotator drew it. The annotator drew it on this very CT, so the CT says
where the label belongs: inside its surface the organ's tissue, outside the neighbouring tissue.

:func:`refine_on_image` starts from a correction ``F`` (voxel matrix, output → input, as in
:mod:`thoraxseg.realign.estimate`) and maximises a region likelihood ratio of the CT along the label's
surface, the rigid shape fixed:

1. Two bands are taken once on the label's own grid: the label voxels within ``band_mm`` of its
   surface (*inner*) and the background voxels within ``band_mm`` of it (*outer*).
2. Intensity model: histograms (HU) of the CT sampled at the inner and the outer band under the
   current correction, smoothed; their log ratio ``log p_in(HU) / p_out(HU)`` scores a sample.
3. Score of a correction: the mean log ratio over the inner band minus the mean over the outer band,
   the CT sampled trilinearly at the moved band points (smooth in the six rigid parameters). A label
   half on the wrong tissue scores low; a label whose surface runs along the organ's edges scores
   high, whatever the organ's contrast sign (heart brighter than fat, trachea darker than wall).
4. Powell's method over three rotations about the label's centroid and three translations (mm),
   inside a trust region around the start (``max_rotation_deg``, ``max_shift_mm``), then the model is
   re-estimated under the new correction (step 2), for at most ``rounds`` rounds or until it stops
   moving (an EM-like alternation: the first model, learned at a slightly wrong position, is blurred;
   each round sharpens it). A label on fewer than three slices has no surface across slices: its
   tilts and z shift stay as started, only the in-plane angle and shift are refined.
5. On fine grids, steps 1–4 run on two paths: the fine stage (``band_mm``, ``max_rotation_deg``)
   from the start, and the same fine stage from where a coarse one (bands of :data:`COARSE_BAND_MM`,
   rotations up to :data:`COARSE_MAX_ROTATION_DEG`) ended. A start a few mm off leaves most of a 2–3 mm
   band on the wrong tissue, and the model learned there is too blurred to lead back; a 6 mm band still
   holds the organ's edge. But a wide band also holds other tissue, which can pull a start that was
   right away from it. Each path's last model favours its own end, so the two ends are compared on the
   same band points, each under a model learned at it (how well its bands separate the CT's
   intensities), and the better one is taken. Where the fine band is already more than half as wide
   (in-plane pixels over 1.5 mm), only the direct path runs.
6. The result is kept only if its score gain over the start is significant (``min_z`` standard errors,
   paired over the band points) and it moves the surface by at least ``min_move_vox`` voxels;
   otherwise the start is returned.

Where the organ's edge is invisible (soft tissue against soft tissue), the score is flat along it and
a weak pull keeps the start there; only visible edges pull. The caller decides whether to trust the
result (``thoraxseg qa`` keeps it only if the refined label still agrees with the reference as its
verdict requires).

Examples
--------
A bright box drawn on a CT, its label shifted by one voxel and rotated by 4°: the refinement puts it
back on the box.

>>> import numpy as np
>>> from thoraxseg.realign.geometry import rigid_voxel_matrix
>>> ct = np.full((40, 40, 12), -50.0, np.float32); ct[12:28, 14:26, 3:9] = 60.0
>>> truth = np.zeros(ct.shape, bool); truth[12:28, 14:26, 3:9] = True
>>> start = rigid_voxel_matrix([0.0, 0.0, np.deg2rad(4.0)], [2.0, 0.0, 0.0], (19.5, 19.5, 5.5), (2.0, 2.0, 4.0))
>>> label = truth.copy()   # the label is right; the start correction is off
>>> F, info = refine_on_image(label, ct, start, (2.0, 2.0, 4.0), seed=0)
>>> from thoraxseg.realign.geometry import transform_mask_cropped
>>> moved = transform_mask_cropped(label, F, "grid-constant")
>>> bool((moved == truth).mean() > 0.999), info["score_end"] > info["score_start"]
(True, True)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from thoraxseg.realign.geometry import (
    bbox_slices,
    centroid,
    expand_bbox,
    mask_bbox,
    near_mask,
    rigid_voxel_matrix,
    subsample_points,
)

#: HU range and bin width of the intensity model.
_HU_LO, _HU_HI, _HU_BIN = -1000.0, 1000.0, 20.0
_EDGES = np.arange(_HU_LO - _HU_BIN / 2, _HU_HI + _HU_BIN, _HU_BIN)
_CENTRES = 0.5 * (_EDGES[1:] + _EDGES[:-1])
_SMOOTH_BINS = 1.5  # Gaussian smoothing of the histograms (bins)
_PRIOR_COUNT = 0.5  # added to every (smoothed) bin before normalising: no log(0)
_MAX_POINTS = 10_000  # band points per side (seeded subsample)
_XTOL = 0.03  # Powell tolerance, in units of ~1 voxel of surface motion
_MAX_EVALS = 600  # per round
_CONVERGED_VOX = 0.05  # a round that moves the surface by less than this (voxels) ends the rounds
_PULL = 0.002  # score per (voxel of surface motion)²: the pull towards each round's start
_REVERT_GAIN = 0.002  # a parameter's move that gains less score than this is undone
_SMOOTH_VOX = (0.5, 0.5, 0.0)  # Gaussian sigma (voxels) of the CT before sampling, in-plane only
_MIN_SLICES = 3  # a label on fewer slices is refined in-plane only (angle about z, shift along x and y)
#: Half-width (mm) of the coarse stage's bands: about the error of a fit onto a model's reference (2–6 mm on
#: phantoms), so that the first intensity model is learned mostly on the right tissue. Measured on 13 moved
#: organs of 512 × 512 phantoms with the path via the coarse stage always taken: 6 mm fixed all within 0.010
#: IoU of the limit; 8 mm let one heart wander (0.29), 12 mm 0.009.
COARSE_BAND_MM = 6.0
#: Rotation trust region (degrees per axis) of the coarse stage: a fit onto a reference was off by up to 14°.
COARSE_MAX_ROTATION_DEG = 15.0


def band_points(mask: np.ndarray, spacing: np.ndarray, band_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel coordinates ``(N, 3)`` of the label voxels (inner) and background voxels (outer) within ``band_mm``
    of the mask's surface (distances between voxel centres, in mm, with the voxel spacing)."""
    bbox = mask_bbox(mask)
    assert bbox is not None
    margin = np.ceil(band_mm / spacing).astype(np.int64) + 1
    lo, hi = expand_bbox(bbox, margin, mask.shape)
    crop = mask[bbox_slices((lo, hi))]
    d_in = ndimage.distance_transform_edt(crop, sampling=spacing)
    d_out = ndimage.distance_transform_edt(~crop, sampling=spacing)
    inner = np.argwhere(crop & (d_in <= band_mm)).astype(np.float64) + lo
    outer = np.argwhere(~crop & (d_out <= band_mm)).astype(np.float64) + lo
    return inner, outer


def _log_ratio(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Smoothed ``log p_in / p_out`` per HU bin (:data:`_CENTRES`)."""
    def density(v: np.ndarray) -> np.ndarray:
        h, _ = np.histogram(np.clip(v, _HU_LO, _HU_HI), _EDGES)
        h = ndimage.gaussian_filter1d(h.astype(np.float64), _SMOOTH_BINS) + _PRIOR_COUNT
        return h / h.sum()

    return np.log(density(inside)) - np.log(density(outside))


class _Scorer:
    """CT samples at the moved band points, and the region score of a correction."""

    def __init__(self, ct: np.ndarray, inner: np.ndarray, outer: np.ndarray) -> None:
        self.ct, self.inner, self.outer = ct, inner, outer
        self.table = np.zeros_like(_CENTRES)

    def samples(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CT (HU) where the correction ``matrix`` puts the inner and the outer band points."""
        inv = np.linalg.inv(matrix)
        out = []
        for pts in (self.inner, self.outer):
            q = pts @ inv[:3, :3].T + inv[:3, 3]
            out.append(ndimage.map_coordinates(self.ct, q.T, order=1, mode="nearest"))
        return out[0], out[1]

    def learn(self, matrix: np.ndarray) -> None:
        """Re-estimate the intensity model from the bands under ``matrix``."""
        self.table = _log_ratio(*self.samples(matrix))

    def log_ratios(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log ratio of every inner and outer band sample under ``matrix``."""
        a, b = self.samples(matrix)
        return (np.interp(np.clip(a, _HU_LO, _HU_HI), _CENTRES, self.table),
                np.interp(np.clip(b, _HU_LO, _HU_HI), _CENTRES, self.table))

    def gain_z(self, start: np.ndarray, end: np.ndarray) -> float:
        """Score gain of ``end`` over ``start`` in units of its standard error (paired over the band points)."""
        (a0, b0), (a1, b1) = self.log_ratios(start), self.log_ratios(end)
        da, db = a1 - a0, b1 - b0
        se = float(np.sqrt(da.var() / da.size + db.var() / db.size))
        gain = float(da.mean() - db.mean())
        return gain / se if se > 0 else (np.inf if gain > 0 else 0.0)

    def score(self, matrix: np.ndarray) -> float:
        """Mean log ratio on the inner band minus the mean on the outer band (higher: surface on the edges)."""
        la, lb = self.log_ratios(matrix)
        return float(la.mean() - lb.mean())


def _separation(scorer: _Scorer, matrix: np.ndarray) -> float:
    """How well the label's bands under ``matrix`` separate the CT: the score under a model learned there (the
    scorer's own model is restored afterwards)."""
    table = scorer.table
    scorer.learn(matrix)
    value = scorer.score(matrix)
    scorer.table = table
    return value


def _mean_motion_mm(pts: np.ndarray, a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> float:
    """Mean distance (mm) between where corrections ``a`` and ``b`` put the label points ``pts`` (voxels)."""
    ia, ib = np.linalg.inv(a), np.linalg.inv(b)
    d = pts @ (ia[:3, :3] - ib[:3, :3]).T + (ia[:3, 3] - ib[:3, 3])
    return float(np.mean(np.linalg.norm(d * spacing, axis=1)))


def _usable_bands(mask: np.ndarray, sp: np.ndarray, band: float, occluder: np.ndarray | None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`band_points` of half-width ``band`` (mm) without the points within ``band`` of an occluder."""
    inner, outer = band_points(mask, sp, band)
    if occluder is not None:
        # distances to the other organs, on the box of the band points widened by the reach of the test only
        pts_all = np.concatenate([inner, outer]).astype(np.int64)
        margin = np.ceil((band + float(sp.max())) / sp).astype(np.int64) + 1
        lo, hi = expand_bbox((pts_all.min(axis=0), pts_all.max(axis=0) + 1), margin, mask.shape)
        near = near_mask(occluder, (lo, hi), sp, band)
        if near is not None:
            inner, outer = (pts[~near[tuple((pts.astype(np.int64) - lo).T)]] for pts in (inner, outer))
    return inner, outer


def _refine_stage(mask: np.ndarray, smooth: np.ndarray, start: np.ndarray, sp: np.ndarray,
                  bands: tuple[np.ndarray, np.ndarray], band: float, cap: np.ndarray, rng: np.random.Generator,
                  rounds: int) -> tuple[np.ndarray, dict[str, Any], _Scorer | None, np.ndarray]:
    """One stage of :func:`refine_on_image`: the usable band points ``bands`` (half-width ``band``, mm; a seeded
    subsample of them is scored), trust region ``cap`` (radians, mm) about ``start``. Returns the stage's
    correction (the start where no band point is usable), its facts, its scorer (None then) and its inner band
    points."""
    inner, outer = bands
    facts: dict[str, Any] = {"band_mm": round(band, 3), "rounds": 0, "evaluations": 0,
                             "rotation_deg": [0.0] * 3, "shift_mm": [0.0] * 3}
    if not inner.shape[0] or not outer.shape[0]:  # every surface point lies next to another organ
        return start.copy(), facts, None, inner
    inner, outer = subsample_points(rng, inner, _MAX_POINTS), subsample_points(rng, outer, _MAX_POINTS)
    scorer = _Scorer(smooth, inner, outer)
    # Perturbations act on the output side, about where the start puts the label's centroid.
    pivot = (np.linalg.inv(start) @ np.r_[centroid(mask), 1.0])[:3]
    radius_mm = float(np.sqrt(np.mean(np.sum(((inner - inner.mean(axis=0)) * sp) ** 2, axis=1)))) or 1.0
    unit = np.r_[np.full(3, float(sp.min()) / radius_mm), np.full(3, float(sp.min()))]  # ~1 voxel of motion
    # x = (rotation about x, y, z in radians, shift along x, y, z in mm). A label on fewer than
    # _MIN_SLICES slices has no surface across slices to fit: its tilts and z shift stay as started.
    z_slices = np.flatnonzero(mask.any(axis=(0, 1)))
    in_plane_only = bool(z_slices[-1] - z_slices[0] + 1 < _MIN_SLICES)
    free = np.flatnonzero([not in_plane_only] * 2 + [True] * 3 + [not in_plane_only])

    def matrix_of(x: np.ndarray) -> np.ndarray:
        return start @ rigid_voxel_matrix(x[:3], x[3:], pivot, sp)

    x = np.zeros(6)
    scorer.learn(start)
    evaluations, done = 0, 0
    for done in range(1, rounds + 1):  # noqa: B007 (the count is reported)
        base = x.copy()

        def cost(zf: np.ndarray, base: np.ndarray = base) -> float:
            z = np.zeros(6)
            z[free] = zf
            y = base + z * unit
            excess = np.maximum(np.abs(y) - cap, 0.0) / unit  # outside the trust region: steeply worse
            # a weak pull towards the round's start: along directions the edges do not resolve, stay
            return -scorer.score(matrix_of(np.clip(y, -cap, cap))) + _PULL * float(z @ z) + 10.0 * float(excess @ excess)

        res = optimize.minimize(cost, np.zeros(free.size), method="Powell",
                                options={"xtol": _XTOL, "ftol": 1e-7, "maxfev": _MAX_EVALS})
        evaluations += int(res.nfev)
        step = np.zeros(6)
        step[free] = res.x
        trial = np.clip(base + step * unit, -cap, cap)
        best = scorer.score(matrix_of(trial))
        # Undo moves that bought (almost) nothing: along a flat direction Powell's end point is arbitrary.
        for i in free:
            back = trial.copy()
            back[i] = base[i]
            value = scorer.score(matrix_of(back))
            evaluations += 1
            if value >= best - _REVERT_GAIN:
                trial, best = back, max(best, value)
        if best > scorer.score(matrix_of(base)):
            x = trial
        moved_vox = float(np.max(np.abs(x - base) / unit))
        scorer.learn(matrix_of(x))
        if moved_vox < _CONVERGED_VOX:
            break
    facts.update(rounds=done, evaluations=evaluations, in_plane_only=in_plane_only,
                 rotation_deg=[round(float(v), 3) for v in np.degrees(x[:3])],
                 shift_mm=[round(float(v), 3) for v in x[3:]])
    return matrix_of(x), facts, scorer, inner


def refine_on_image(
    mask: np.ndarray,
    ct: np.ndarray,
    matrix: np.ndarray,
    spacing: Sequence[float],
    seed: int = 0,
    band_mm: float | None = None,
    max_rotation_deg: float = 5.0,
    max_shift_mm: float | None = None,
    rounds: int = 5,
    occluder: np.ndarray | None = None,
    min_z: float = 3.0,
    min_move_vox: float = 0.25,
    coarse_band_mm: float | None = COARSE_BAND_MM,
    coarse_max_rotation_deg: float = COARSE_MAX_ROTATION_DEG,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Refine the correction ``matrix`` of one organ's label on the CT (see the module docstring).

    Parameters
    ----------
    mask
        The organ's label as stored (boolean, axes ``(x, y, z)``): the *input* of ``matrix``.
    ct
        The CT (HU) on the same grid: where the corrected label must fit.
    matrix
        Starting correction, 4×4 voxel matrix (output voxel → input voxel): the corrected label is
        ``transform_mask(mask, matrix)``.
    spacing
        Voxel size in mm along ``(x, y, z)``.
    seed
        Seed of the band-point subsample.
    band_mm
        Half-width of the bands (mm) of the fine stage; default twice the largest in-plane voxel size.
    max_rotation_deg, max_shift_mm
        Trust region of the fine stage around its start: rotation about the label's centroid per axis
        (degrees) and translation per axis (mm; default twice the largest voxel size, at least 10 mm).
    rounds
        At most this many model/optimisation rounds per stage.
    occluder
        Optional boolean mask, on the label's grid, of the other organs of the label file: where the
        organ's label lies next to another organ it may have lost voxels to it (the other organ wins
        when a label is moved), so band points within the band of an occluder are not used.
    min_z
        The refinement is kept only if its score gain over the start, under the last intensity model
        and paired over the band points, is at least this many standard errors: where the edges are too
        faint to tell (organ and surroundings of nearly the same HU), the start is returned unchanged.
    min_move_vox
        Nor is a refinement that moves the label's surface by less than this (mean, in units of the
        smallest voxel size): below a voxel, the nearest-neighbour label cannot show it, and the exact
        correction itself is only defined up to that.
    coarse_band_mm, coarse_max_rotation_deg
        The coarse stage of the second path (module docstring, step 5), run where ``coarse_band_mm`` is at
        least twice the fine band (None: never): bands of half-width ``coarse_band_mm`` and a rotation trust
        region of ``coarse_max_rotation_deg`` per axis. A start a few mm off puts most of a 2–3 mm band on
        the wrong tissue, so the intensity model learned there cannot see the edge; a band about as wide as
        the start's error can (see ``benchmarks/qa.py --size full`` in the README). On coarse grids (4–5 mm
        pixels) the fine band is already about that wide, and a wider trust region there only lets the
        8–12 mm slices' poorly resolved tilts wander: no coarse stage.

    Returns
    -------
    matrix
        The refined correction (the start where nothing scored significantly higher).
    info
        ``kept`` (whether the refinement was kept), ``gain_z`` (its significance, under the fine stage's
        last model), ``motion_vox`` (its mean surface motion, voxels), ``score_start``, ``score_end`` (under
        the fine stage's last intensity model), ``rounds``, ``evaluations``, ``band_mm``, ``rotation_deg``
        and ``shift_mm`` (the taken path's fine stage, against that stage's start, per axis, whether kept or
        not), ``coarse`` (None without a second path; else the coarse stage's ``band_mm``, ``rounds``,
        ``evaluations``, ``rotation_deg``, ``shift_mm``, the two ends' ``separation_direct`` and
        ``separation_via``, and ``chosen``: the path via the coarse stage was taken), ``in_plane_only`` (the
        label spans fewer than 3 slices: tilts and the z shift were not refined), ``seconds``.
    """
    t0 = time.perf_counter()
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask is empty")
    sp = np.asarray(spacing, dtype=np.float64)
    start = np.asarray(matrix, dtype=np.float64)
    band = float(band_mm) if band_mm is not None else 2.0 * float(sp[:2].max())
    shift_cap = float(max_shift_mm) if max_shift_mm is not None else max(10.0, 2.0 * float(sp.max()))
    occ = None if occluder is None else np.asarray(occluder, dtype=bool)
    rng = np.random.default_rng(seed)
    # Smoothed by half a voxel in-plane: trilinear samples between voxel centres then have about the noise of
    # samples at them, so the score has less of the interpolation artefact that favours (or avoids) positions
    # aligned with the grid.
    smooth = ndimage.gaussian_filter(np.asarray(ct, dtype=np.float32), _SMOOTH_VOX, mode="nearest")

    def caps(rotation_deg: float) -> np.ndarray:
        return np.r_[np.full(3, np.deg2rad(float(rotation_deg))), np.full(3, shift_cap)]

    info: dict[str, Any] = {"kept": False, "gain_z": None, "motion_vox": 0.0, "score_start": None, "score_end": None,
                            "coarse": None}
    fine_bands = _usable_bands(mask, sp, band, occ)  # the same points serve the fine stage of both paths
    refined, fine, scorer, inner = _refine_stage(mask, smooth, start, sp, fine_bands, band, caps(max_rotation_deg),
                                                 rng, rounds)
    if scorer is not None and coarse_band_mm is not None and float(coarse_band_mm) >= 2.0 * band:
        wide = float(coarse_band_mm)
        via, coarse, _, _ = _refine_stage(mask, smooth, start, sp, _usable_bands(mask, sp, wide, occ), wide,
                                          caps(coarse_max_rotation_deg), rng, rounds)
        refined_c, fine_c, scorer_c, _ = _refine_stage(mask, smooth, via, sp, fine_bands, band,
                                                       caps(max_rotation_deg), rng, rounds)
        # Which end point puts the label's surface on the edges? Each stage's last model favours its own end, so
        # both are judged on the same band points with a model learned at each (the separation of the two bands'
        # HU distributions there).
        separation = [_separation(scorer, m) for m in (refined, refined_c)]
        chosen = bool(scorer_c is not None and separation[1] > separation[0])
        info["coarse"] = {**{k: coarse[k] for k in ("band_mm", "rounds", "evaluations", "rotation_deg", "shift_mm")},
                          "separation_direct": round(separation[0], 4), "separation_via": round(separation[1], 4),
                          "chosen": chosen}
        if chosen:
            refined, fine, scorer = refined_c, fine_c, scorer_c
    info.update(fine)
    info.setdefault("in_plane_only", False)
    if scorer is None:  # every surface point lies next to another organ
        return start.copy(), {**info, "seconds": round(time.perf_counter() - t0, 3)}
    z = scorer.gain_z(start, refined)
    move_vox = _mean_motion_mm(inner, start, refined, sp) / float(sp.min())
    kept = bool(z >= min_z and move_vox >= min_move_vox)
    if not kept:
        refined = start.copy()
    info.update(kept=kept, gain_z=round(z, 3) if np.isfinite(z) else None, motion_vox=round(move_vox, 3),
                score_start=round(scorer.score(start), 4), score_end=round(scorer.score(refined), 4),
                seconds=round(time.perf_counter() - t0, 3))
    return refined, info
