"""Per-case metrics engine: every metric of every organ from two label volumes.

The full volumes are read only twice per case (foreground bounding box, then
per-label bounding boxes inside it); all further work happens on each organ's
crop — the bounding box of GT ∪ prediction plus a one-voxel margin — so the
cost follows the organ size, not the image size. When an organ's foreground is
scattered over a large crop (e.g. stray false-positive islands far from the
organ), the crop is split into pieces around groups of foreground separated by
at least one empty 16³ block, and the surfaces are extracted piece by piece.

Examples
--------
>>> import numpy as np
>>> gt = np.zeros((20, 20, 10), np.uint8); gt[5:15, 5:15, 2:8] = 2
>>> pred = np.zeros_like(gt); pred[6:15, 5:15, 2:8] = 2
>>> rows = compute_metrics(gt, pred, spacing=(1.0, 1.0, 2.5), organs=[2])
>>> r = rows[0]
>>> r["organ"], round(r["dice"], 4), r["hd"], r["hd95"], r["vol_gt_ml"]
('heart', 0.9474, 1.0, 1.0, 1.5)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from thoraxseg.data.overlap import NAN, overlap_metrics
from thoraxseg.errors import ConfigError
from thoraxseg.labels import ORGANS, label_name
from thoraxseg.metrics.spec import DISTANCE_METRICS, METRIC_NAMES
from thoraxseg.metrics.surface import SurfacePoints, distance_metrics, extract_surfaces

Box = tuple[slice, slice, slice]

#: Crops of at least this many voxels are checked for scattered foreground.
SPLIT_MIN_VOXELS: int = 1 << 20
#: Block edge (voxels) of the occupancy grid used to split scattered crops.
BLOCK: int = 16


def _foreground_box(labels: np.ndarray) -> Box | None:
    """Bounding box of the non-zero voxels (cheap max-projections), or None."""
    proj_xy = labels.max(axis=2)
    xs = np.flatnonzero(proj_xy.max(axis=1))
    if xs.size == 0:
        return None
    ys = np.flatnonzero(proj_xy.max(axis=0))
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    zs = np.flatnonzero(labels[x0:x1, y0:y1].max(axis=(0, 1)))
    return (slice(x0, x1), slice(y0, y1), slice(int(zs[0]), int(zs[-1]) + 1))


def label_boxes(labels: np.ndarray, codes: Iterable[int]) -> dict[int, Box | None]:
    """Bounding box (slices along ``(x, y, z)``) of each label code, None when absent."""
    wanted = [int(c) for c in codes]
    fg = _foreground_box(labels)
    if fg is None:
        return dict.fromkeys(wanted)
    max_label = max(wanted)
    crop = labels[fg]
    if crop.strides[0] < crop.strides[-1]:
        # x fastest in memory (a NIfTI file's own order, also in a crop, which is contiguous in neither order):
        # find_objects walks the transposed view, whose last axis is the fast one, ~2x faster
        found = [None if b is None else b[::-1] for b in ndimage.find_objects(crop.T, max_label=max_label)]
    else:
        found = ndimage.find_objects(crop, max_label=max_label)
    out: dict[int, Box | None] = {}
    for code in wanted:
        box = found[code - 1] if code >= 1 else None
        out[code] = None if box is None else tuple(  # type: ignore[assignment]
            slice(s.start + f.start, s.stop + f.start) for s, f in zip(box, fg, strict=True)
        )
    return out


def _union_box(a: Box | None, b: Box | None, shape: Sequence[int], margin: int = 1) -> Box:
    boxes = [x for x in (a, b) if x is not None]
    return tuple(  # type: ignore[return-value]
        slice(max(0, min(bx[d].start for bx in boxes) - margin), min(shape[d], max(bx[d].stop for bx in boxes) + margin))
        for d in range(3)
    )


def crop_pieces(union: np.ndarray) -> list[tuple[Box, np.ndarray | None]]:
    """Sub-boxes of a crop that hold all of its foreground, for piecewise surface extraction.

    Foreground is grouped by 26-connectivity of a 16³-block occupancy grid, so
    two groups are at least one empty block apart and a one-voxel margin
    around a group never reaches another. Returns ``(box, other)`` pairs:
    ``other`` is None or a boolean mask (box shape) of voxels belonging to other
    groups, to be cleared. A single box covering the crop is returned when the
    crop is small or the pieces would not be much smaller.
    """
    shape = union.shape
    full: Box = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    if union.size < SPLIT_MIN_VOXELS:
        return [(full, None)]
    occ = union
    for axis in range(3):
        occ = np.logical_or.reduceat(occ, np.arange(0, shape[axis], BLOCK), axis=axis)
    groups, n = ndimage.label(occ, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return [(full, None)]
    pieces: list[tuple[Box, np.ndarray | None]] = []
    volume = 0
    for index, coarse in enumerate(ndimage.find_objects(groups), start=1):
        box: Box = tuple(  # type: ignore[assignment]
            slice(max(0, c.start * BLOCK - 1), min(shape[d], c.stop * BLOCK + 1)) for d, c in enumerate(coarse)
        )
        blocks = tuple(slice(b.start // BLOCK, -(-b.stop // BLOCK)) for b in box)
        sub = groups[blocks]
        foreign = (sub != 0) & (sub != index)
        other = None
        if foreign.any():
            idx = [np.arange(b.start, b.stop) // BLOCK - k.start for b, k in zip(box, blocks, strict=True)]
            other = foreign[np.ix_(*idx)]
        pieces.append((box, other))
        volume += int(np.prod([b.stop - b.start for b in box]))
    return pieces if volume < union.size // 2 else [(full, None)]


def _surfaces(g: np.ndarray, p: np.ndarray, spacing: Sequence[float]) -> tuple[SurfacePoints, SurfacePoints]:
    """Surfaces of the GT and predicted masks of one crop, extracted piece by piece."""
    parts_g, parts_p = [], []
    for box, other in crop_pieces(g | p if g.size >= SPLIT_MIN_VOXELS else g):
        mg, mp = g[box], p[box]
        if other is not None:
            mg, mp = mg & ~other, mp & ~other
        offset = [b.start for b in box]
        parts_g.append(extract_surfaces(mg, spacing, offset))
        parts_p.append(extract_surfaces(mp, spacing, offset))
    return SurfacePoints.concat(parts_g), SurfacePoints.concat(parts_p)


def empty_row(organ: str) -> dict[str, float | str]:
    """The row of an organ absent from both GT and prediction: not applicable, every value NaN."""
    return {"organ": organ, **dict.fromkeys(METRIC_NAMES, NAN)}


def compute_metrics(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
    organs: Iterable[int] = tuple(int(o) for o in ORGANS),
) -> list[dict[str, float | str]]:
    """All metrics of each organ for one case.

    Parameters
    ----------
    gt_labels, pred_labels
        Integer label volumes (uint8, values 0–4), same shape, axes ``(x, y, z)``.
    spacing
        Voxel size in mm along ``(x, y, z)`` (``Volume.spacing``).
    tolerance_mm
        NSD tolerance in mm.
    organs
        Label codes to evaluate (default the four organs, in label order).

    Returns
    -------
    list of dict
        One dict per organ: ``organ`` (name) and :data:`METRIC_NAMES` —
        overlaps in [0, 1], ``hd``/``hd95``/``assd`` in mm, ``nsd`` in [0, 1],
        volumes in mL. NaN marks "not applicable" (both masks empty: every
        metric) or "missing" (one mask empty: the distances); never inf.
    """
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"shape mismatch: GT {gt_labels.shape} vs prediction {pred_labels.shape}")
    if gt_labels.ndim != 3 or len(spacing) != 3:
        raise ValueError("expected 3D volumes and a 3-element spacing (x, y, z) in mm")
    sp = tuple(float(s) for s in spacing)
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive and finite, got {sp}")
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be a finite number of mm >= 0, got {tolerance_mm}")
    codes = [int(c) for c in organs]
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    boxes_gt = label_boxes(gt_labels, codes)
    boxes_pred = label_boxes(pred_labels, codes)
    rows: list[dict[str, float | str]] = []
    for code in codes:
        name = label_name(code)
        if boxes_gt[code] is None and boxes_pred[code] is None:
            rows.append(empty_row(name))
            continue
        box = _union_box(boxes_gt[code], boxes_pred[code], gt_labels.shape)
        g = gt_labels[box] == code
        p = pred_labels[box] == code
        n_gt = int(np.count_nonzero(g))
        n_pred = int(np.count_nonzero(p))
        tp = int(np.count_nonzero(g & p))
        row: dict[str, float | str] = {"organ": name}
        row.update(overlap_metrics(tp, n_gt, n_pred, voxel_ml))
        if n_gt and n_pred:
            surf_g, surf_p = _surfaces(g, p, sp)
            row.update(distance_metrics(surf_g, surf_p, sp, tolerance_mm))
        else:
            row.update(dict.fromkeys(DISTANCE_METRICS, NAN))
            row["nsd"] = 0.0  # a surface Dice: like Dice, 0 when one surface is missing
        rows.append({"organ": name, **{k: row[k] for k in METRIC_NAMES}})
    return rows
