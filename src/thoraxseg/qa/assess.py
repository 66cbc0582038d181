"""Judge one patient's label against a reference segmentation (a trained model's prediction).

For every organ, the label (``GT.nii.gz``) is compared with the reference on the same grid
(Dice, IoU, HD95 from :func:`thoraxseg.metrics.compute_metrics`; centroid offset in mm, volume
ratio, on-air fraction as in ``check``), then the label is registered rigidly onto the reference
with the realignment machinery (:func:`thoraxseg.realign.estimate.estimate_matrix`: centroid
alignment, in-plane sweep, least-squares and overlap polish; the reference plays the "clean"
label, so no clean label is needed). The verdict (:data:`VERDICTS`):

``absent``
    neither the label nor the reference has the organ;
``missing``
    the reference has it (at least :attr:`Gate.min_reference_ml`), the label does not;
``extra``
    the label has it, the reference does not;
``swapped``
    the label of this organ agrees with the reference of another organ (Dice ≥ the fit
    threshold and better than with its own), and that organ's label agrees with this one's
    reference: two codes exchanged. Flagged, never fixed;
``misplaced``
    shape agrees after the rigid fit, position does not: Dice after the fit ≥
    :attr:`Gate.fit_dice`, at least :attr:`Gate.min_gain` above the Dice before, and the fit moves
    the label by at least :attr:`Gate.min_move_mm` on average, and the volumes of label and reference
    agree within :attr:`Gate.max_volume_ratio` (a rigid move keeps the volume). The fit onto the reference inherits
    the reference's own error, so it is then refined on the CT (:attr:`Gate.ct_refine`,
    :func:`thoraxseg.realign.intensity.refine_on_image`: the label's surface onto the organ's edges),
    kept where that gain is significant. The refined label must then still agree with the reference
    (Dice ≥ :attr:`Gate.fit_dice`) and better than the label did before; where it agrees no better, the
    CT contradicts the fit and the organ is a ``disagreement``, not fixed. The
    fix is *accepted* only if the on-air fraction does not rise (by more than :attr:`Gate.air_tolerance`)
    and the moved label keeps its voxels (it loses at most :attr:`Gate.max_lost_fraction` of them to the
    grid's edge or to other organs);
``consistent``
    not misplaced and Dice before ≥ :attr:`Gate.consistent_dice`;
``disagreement``
    anything else: the shapes differ even after the best rigid fit, or the fit's refinement on the CT
    contradicts it. Flagged, never fixed.

Examples
--------
A box label shifted by 6 voxels against a reference at the right place is found misplaced and
moved back:

>>> import numpy as np
>>> ref = np.zeros((48, 48, 20), np.uint8); ref[14:30, 16:34, 5:15] = 2
>>> lab = np.zeros_like(ref); lab[20:36, 16:34, 5:15] = 2
>>> ct = np.full(ref.shape, 40, np.int16)
>>> rows, fixed = assess_case(lab, ref, (2.0, 2.0, 3.0), ct, organs=[2])
>>> rows[0]["verdict"], rows[0]["fix_accepted"], round(rows[0]["dice_after"], 3)
('misplaced', True, 1.0)
>>> bool((fixed == ref).all())
True
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from thoraxseg.data.check import label_air_fraction
from thoraxseg.data.overlap import dice
from thoraxseg.labels import ORGANS, Organ, label_name
from thoraxseg.metrics.engine import compute_metrics
from thoraxseg.realign.estimate import APPLY_MODE, estimate_matrix
from thoraxseg.realign.geometry import centroid, move_label_cropped, rotation_parameters
from thoraxseg.realign.intensity import refine_on_image

#: Verdicts, in the order they are tested (see the module docstring).
VERDICTS: tuple[str, ...] = ("absent", "missing", "extra", "swapped", "misplaced", "consistent", "disagreement")
#: Verdicts that the QA flags (a person should look at the label).
FLAGGED: tuple[str, ...] = ("missing", "extra", "swapped", "misplaced", "disagreement")


@dataclass(frozen=True)
class Gate:
    """Thresholds of the verdicts and of the fix gate.

    The values were chosen from measurements (``benchmarks/qa.py``: 20 small phantoms of seed 7,
    indices 20–39, against the 10-epoch CustomNet of ``tests/trained_fixture.py`` trained on indices
    0–9). A clean label against that reference has Dice 0.87–0.94 (heart), 0.69–0.83 (aorta),
    0.51–0.70 (esophagus), 0.78–0.93 (trachea): ``consistent_dice`` sits below the worst of each.
    Registering a *clean* label onto the reference gains at most 0.022 Dice (it often loses: the
    sweep can turn a tube about its axis), while every moved heart/aorta (10–40°, ±5°, ±25 mm; and
    the course corruption) gained 0.21–0.94: ``min_gain`` = 0.10 separates them with margin on both
    sides, and it is what separates. ``fit_dice`` only asks that the shape agree after the fit; a
    moved organ's fit ends below a clean label's Dice (moved hearts 0.83–0.92, aortas 0.67–0.80,
    with the two reference runs measured so far), and a weaker reference lowers both, so it sits well below
    (heart 0.75, aorta 0.60). The fit of a clean heart still moves it by 2–8 mm (the reference's own
    error), so ``min_move_mm`` (4 mm, about one in-plane voxel of these grids) only rejects jitter.
    Moved organs were moved 23–104 mm on average by their fits. A rigid move keeps an organ's volume, so
    a label whose volume differs from the reference's by more than ``max_volume_ratio`` is never called
    misplaced: the reference then covers another extent of the organ (a model that lost part of it), and the
    best fit only slides the label along it. On the SegTHOR-like grid a reference that kept only the upper
    51 of the 119 slices of one esophagus (label / reference volume 2.12) had the clean label moved 125 mm onto it; every
    organ found misplaced in ``benchmarks/qa.py`` had a ratio of 0.64–0.98 (small grid 0.64–0.97; SegTHOR-like
    grid 0.68–0.98 with the small-grid reference, 0.88–0.95 with one trained on that grid): 1/1.75 = 0.57.

    Attributes
    ----------
    consistent_dice
        Dice (label vs reference) at or above which an organ that is not misplaced is consistent.
    fit_dice
        Dice after the rigid fit needed to call an organ misplaced (the shape agrees).
    min_gain
        Dice gain of the fit over the Dice before needed to call it misplaced.
    min_move_mm
        Mean displacement (mm) of the label's voxels under the fit needed to call it misplaced.
    max_volume_ratio
        Label and reference volumes within this factor of each other (either way) are needed to call the
        label misplaced.
    air_tolerance
        A fix is rejected when it raises the on-air fraction by more than this (nearest-neighbour
        resampling changes a few surface voxels).
    max_lost_fraction
        A fix is rejected when the moved label would hold fewer voxels than the label by more than this
        fraction: it would push part of the organ out of the grid or under other organs (which keep their
        voxels). A rigid move keeps the volume; nearest-neighbour resampling changed it by −0.7 … +0.7 %
        for the 27 fixes of ``benchmarks/qa.py`` on the small grid and by −0.2 … +0.1 % for the 41 of its
        two SegTHOR-grid draws.
    min_reference_ml
        A reference organ smaller than this (mL) counts as absent (specks of a prediction).
    ct_refine
        Refine the fit of a misplaced organ on the CT (:func:`thoraxseg.realign.intensity.refine_on_image`):
        the label's surface onto the organ's edges, where the fit onto the reference inherits the
        reference's error.
    """

    consistent_dice: dict[int, float] = field(default_factory=lambda: {
        int(Organ.ESOPHAGUS): 0.45, int(Organ.HEART): 0.80, int(Organ.TRACHEA): 0.50, int(Organ.AORTA): 0.65})
    fit_dice: dict[int, float] = field(default_factory=lambda: {
        int(Organ.ESOPHAGUS): 0.45, int(Organ.HEART): 0.75, int(Organ.TRACHEA): 0.50, int(Organ.AORTA): 0.60})
    min_gain: float = 0.10
    min_move_mm: float = 4.0
    max_volume_ratio: float = 1.75
    air_tolerance: float = 0.02
    max_lost_fraction: float = 0.05
    min_reference_ml: float = 1.0
    ct_refine: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready thresholds (organ names as keys)."""
        d = asdict(self)
        for key in ("consistent_dice", "fit_dice"):
            d[key] = {label_name(k): v for k, v in d[key].items()}
        return d


def _finite(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def _centroid_offset_mm(a: np.ndarray, b: np.ndarray, affine: np.ndarray) -> float:
    """Distance (mm, world) between the centroids of two non-empty masks."""
    d = np.asarray(affine, dtype=np.float64)[:3, :3] @ (centroid(a) - centroid(b))
    return float(np.linalg.norm(d))


def _mean_move_mm(mask: np.ndarray, matrix: np.ndarray, spacing: np.ndarray) -> float:
    """Mean distance (mm) between each voxel of ``mask`` and where the correction ``matrix`` sends it.

    ``matrix`` maps output → input voxels, so a voxel ``p`` of the label ends at ``matrix⁻¹ p``.
    """
    pts = np.argwhere(mask).astype(np.float64)
    inv = np.linalg.inv(matrix)
    moved = pts @ inv[:3, :3].T + inv[:3, 3]
    return float(np.mean(np.linalg.norm((moved - pts) * spacing, axis=1)))


def assess_case(
    labels: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    ct: np.ndarray,
    affine: np.ndarray | None = None,
    organs: Iterable[int] = tuple(int(o) for o in ORGANS),
    gate: Gate | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """QA rows of one patient and its corrected label array.

    Parameters
    ----------
    labels
        The patient's label (uint8, codes 0–4), axes ``(x, y, z)``.
    reference
        The reference segmentation (a model's prediction) on the same grid.
    spacing
        Voxel size in mm along ``(x, y, z)``.
    ct
        The CT (HU) on the same grid, for the on-air fractions.
    affine
        Voxel → world mm matrix (for the centroid offsets); default ``diag(spacing)``.
    organs
        Label codes to judge (default the four organs).
    gate
        Thresholds (default :class:`Gate`).
    seed
        Seed of the registration's point sampling.

    Returns
    -------
    rows
        One dict per organ: ``organ``, ``verdict``, ``fix_accepted``, ``dice``/``iou``/``hd95_mm``
        (label vs reference), ``centroid_offset_mm``, ``volume_ratio`` (label / reference),
        ``air_fraction``, ``dice_fit_reference`` (Dice of the fit onto the reference: what the
        verdict uses), the correction judged — applied only where ``fix_accepted`` — (``dice_after``, ``iou_after``, ``hd95_after_mm``,
        ``air_after``, ``fit_rotation_deg``, ``fit_inplane_deg``, ``fit_move_mm``,
        ``matrix_voxel`` — output voxel → input voxel, apply to the label), ``ct_refined`` (the CT
        refinement was kept) and ``ct_refine`` (its facts), ``note``, ``seconds``.
    fixed
        ``labels`` with every accepted fix applied (other organs keep their voxels); equal to
        ``labels`` when nothing was accepted.
    """
    g = gate or Gate()
    labels = np.asarray(labels)
    reference = np.asarray(reference)
    if labels.shape != reference.shape or labels.shape != np.asarray(ct).shape:
        raise ValueError(f"label {labels.shape}, reference {reference.shape} and CT {np.shape(ct)} differ in shape")
    sp = np.asarray(spacing, dtype=np.float64)
    aff = np.diag(np.r_[sp, 1.0]) if affine is None else np.asarray(affine, dtype=np.float64)
    voxel_ml = float(np.prod(sp)) / 1000.0
    codes = [int(c) for c in organs]
    min_ref_vox = g.min_reference_ml / voxel_ml
    lab_masks = {c: labels == c for c in codes}
    ref_masks = {c: reference == c for c in codes}
    ref_present = {c: ref_masks[c].sum() >= min_ref_vox for c in codes}
    rows: list[dict[str, Any]] = []
    fixed = labels.copy()
    base = {c: r for c, r in zip(codes, compute_metrics(labels, reference, sp, organs=codes), strict=True)}
    for c in codes:
        t0 = time.perf_counter()
        lm, rm = lab_masks[c], ref_masks[c]
        m = base[c]
        row: dict[str, Any] = {
            "organ": label_name(c), "verdict": "", "fix_accepted": False,
            "dice": _finite(m["dice"]), "iou": _finite(m["iou"]), "hd95_mm": _finite(m["hd95"]),
            "centroid_offset_mm": None, "volume_ratio": None,
            "air_fraction": _finite(label_air_fraction(ct, labels, c)) if lm.any() else None,
            "dice_after": None, "iou_after": None, "hd95_after_mm": None, "air_after": None,
            "fit_rotation_deg": None, "fit_inplane_deg": None, "fit_move_mm": None, "matrix_voxel": None,
            "dice_fit_reference": None, "ct_refined": None, "ct_refine": None, "note": "", "seconds": 0.0,
        }
        has_lab = bool(lm.any())
        if has_lab and rm.any():
            row["centroid_offset_mm"] = round(_centroid_offset_mm(lm, rm, aff), 3)
            row["volume_ratio"] = round(float(lm.sum()) / float(rm.sum()), 4)
        if not has_lab:
            row["verdict"] = "missing" if ref_present[c] else "absent"
        elif not ref_present[c]:
            row["verdict"] = "extra"
        else:
            swap = _swap_partner(c, codes, lab_masks, ref_masks, ref_present, g, voxel_ml)
            if swap is not None:
                row["verdict"] = "swapped"
                row["note"] = f"label agrees with the reference {label_name(swap)}"
            elif float(row["dice"]) + g.min_gain > 1.0:
                # Dice after any fit is at most 1, so the fit could not gain min_gain: not misplaced.
                row["verdict"] = "consistent"
                row["note"] = "not registered: Dice above 1 - min_gain"
            else:
                _fit(row, c, labels, reference, lm, rm, ct, sp, g, seed)
                if row["verdict"] == "misplaced" and row["fix_accepted"]:
                    fixed, _ = move_label_cropped(fixed, c, np.asarray(row["matrix_voxel"]), APPLY_MODE)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    return rows, fixed


def _swap_partner(c: int, codes: list[int], lab: dict[int, np.ndarray], ref: dict[int, np.ndarray],
                  present: dict[int, bool], g: Gate, voxel_ml: float) -> int | None:
    """The organ whose code this label was exchanged with, or None."""
    own = dice(lab[c], ref[c])
    for o in codes:
        if o == c or not present[o] or not lab[o].any():
            continue
        cross = dice(lab[c], ref[o])
        back = dice(lab[o], ref[c])
        if cross >= g.fit_dice[o] and cross > own and back >= g.fit_dice[c] and back > dice(lab[o], ref[o]):
            return o
    return None


def _corrected(labels: np.ndarray, reference: np.ndarray, c: int, matrix: np.ndarray,
               sp: np.ndarray) -> tuple[np.ndarray, dict[str, Any], float]:
    """``labels`` with organ ``c`` moved by ``matrix``, its metrics against ``reference``, its Dice (0 where undefined)."""
    moved, _ = move_label_cropped(labels, c, matrix, APPLY_MODE)
    after = compute_metrics(moved, reference, sp, organs=[c])[0]
    return moved, after, float(after["dice"]) if np.isfinite(after["dice"]) else 0.0


def _lost_fraction(moved: np.ndarray, mask: np.ndarray, c: int) -> float:
    """Fraction of ``mask``'s voxels missing from organ ``c`` of the moved labels (negative where it grew)."""
    return 1.0 - float((moved == c).sum()) / float(mask.sum())


def _outside_fraction(mask: np.ndarray, matrix: np.ndarray) -> float:
    """Fraction of ``mask``'s voxels that the voxel matrix ``matrix`` (output voxel → input voxel) sends
    outside the grid (voxel centres, axes as ``mask``).

    Examples
    --------
    >>> m = np.zeros((4, 4, 4), bool); m[:2, 0, 0] = True
    >>> shift = np.eye(4); shift[0, 3] = -3.0  # output x = input x + 3
    >>> _outside_fraction(m, shift)
    0.5
    """
    pts = np.argwhere(mask).astype(np.float64)
    inv = np.linalg.inv(matrix)
    out = pts @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((out > -0.5) & (out < np.asarray(mask.shape) - 0.5), axis=1)
    return float(1.0 - inside.mean()) if len(pts) else 0.0


def verdict_text(row: dict[str, Any]) -> str:
    """A row's verdict as shown (screen table, report): ``misplaced → fixed (refined on the CT)`` and the like."""
    fixed = " → fixed" + (" (refined on the CT)" if row.get("ct_refined") else "") if row.get("fix_accepted") else ""
    return str(row.get("verdict")) + fixed


def _fit(row: dict[str, Any], c: int, labels: np.ndarray, reference: np.ndarray, lm: np.ndarray, rm: np.ndarray,
         ct: np.ndarray, sp: np.ndarray, g: Gate, seed: int) -> None:
    """Register the label of organ ``c`` onto the reference, judge the fit, and for a misplaced organ refine it
    on the CT; fill the fit fields and the verdict of ``row``.

    The verdict uses the fit onto the reference (``dice_fit_reference``) and, for a misplaced organ, its
    refinement on the CT. The fields ``dice_after`` … ``matrix_voxel`` describe the correction judged: the
    refined one where the refinement was kept (``ct_refined``; not where it alone would lose more than
    ``max_lost_fraction`` of the label's voxels: ``ct_refine["dropped"]``), else the fit onto the reference. It is
    applied only where ``fix_accepted``; where the CT contradicts the fit (a ``disagreement``), the fields
    describe the fit that was rejected and ``ct_refine["dice_reference"]`` the refined label's Dice.
    """
    occluder = (labels != 0) & ~lm
    matrix, _ = estimate_matrix(lm, rm, sp, seed=seed, occluder=occluder)
    moved, after, d_fit = _corrected(labels, reference, c, matrix, sp)
    move_mm = _mean_move_mm(lm, matrix, sp)
    before = float(row["dice"] or 0.0)
    row["dice_fit_reference"] = _finite(d_fit)
    misplaced = d_fit >= g.fit_dice[c] and d_fit - before >= g.min_gain and move_mm >= g.min_move_mm
    ratio = float(lm.sum()) / float(rm.sum())  # unrounded (the row holds 4 decimals)
    sizes_differ = misplaced and not 1.0 / g.max_volume_ratio <= ratio <= g.max_volume_ratio
    # one decision: "misplaced", "contradicted" (the CT refutes the fit) or "" (not misplaced)
    decision = "misplaced" if misplaced and not sizes_differ else ""
    # voxels lost by the correction judged (the fit onto the reference; the refined fit where that is kept)
    lost = _lost_fraction(moved, lm, c) if decision else 0.0
    if decision and g.ct_refine:
        refined, info = refine_on_image(lm, ct, matrix, sp, seed=seed, occluder=occluder)
        row["ct_refine"] = info
        row["ct_refined"] = False
        if info["kept"]:
            moved_r, after_r, d_r = _corrected(labels, reference, c, refined, sp)
            info["dice_reference"] = _finite(d_r)
            # the refined label must still agree with the reference (fit_dice) and better than the label did;
            # where the CT's edges lead it to a place the reference agrees with no better than where it was, the
            # CT and the reference contradict each other. Not min_gain: against a reference a few mm and degrees
            # off, a right refinement gives up part of the fit's gain (real CT, heart: 0.78 -> 0.98 -> 0.88)
            lost_r = _lost_fraction(moved_r, lm, c)
            if not (d_r >= g.fit_dice[c] and d_r > before):
                decision = "contradicted"
            elif lost_r > g.max_lost_fraction >= lost:
                # the refinement slid the label over the grid's edge or onto other organs where the fit did not
                # (a tube crossing the first or last slice, slid along its axis): the fit is applied instead
                info["dropped"] = f"the refined label would lose {lost_r:.1%} of its voxels"
            else:
                row["ct_refined"] = True
                matrix, moved, after, lost = refined, moved_r, after_r, lost_r
                move_mm = _mean_move_mm(lm, refined, sp)
    angle, _, inplane = rotation_parameters(matrix, sp)
    air_after = label_air_fraction(ct, moved, c) if (moved == c).any() else float("nan")
    row.update(dice_after=_finite(after["dice"]), iou_after=_finite(after["iou"]),
               hd95_after_mm=_finite(after["hd95"]), air_after=_finite(air_after),
               fit_rotation_deg=round(angle, 3), fit_inplane_deg=round(inplane, 3), fit_move_mm=round(move_mm, 3),
               matrix_voxel=np.round(matrix, 9).tolist())
    if decision == "misplaced":
        row["verdict"] = "misplaced"
        air_before = row["air_fraction"] or 0.0
        if lost > g.max_lost_fraction:
            _, clash = move_label_cropped(labels, c, matrix, APPLY_MODE)
            row["note"] = (f"fix rejected: the moved label would lose {lost:.1%} of its voxels (at most "
                           f"{g.max_lost_fraction:.0%}): {clash / lm.sum():.1%} under other organs, "
                           f"{_outside_fraction(lm, matrix):.1%} over the grid's edge")
        elif not (np.isfinite(air_after) and air_after <= air_before + g.air_tolerance):
            row["note"] = (f"fix rejected: on-air fraction would rise from {air_before:.3f} to "
                           f"{air_after:.3f}")
        else:
            row["fix_accepted"] = True
    elif decision == "contradicted":
        row["verdict"] = "disagreement"
        row["note"] = (f"not fixed: the fit onto the reference (Dice {before:.3f} → {d_fit:.3f}), refined on the "
                       f"CT, ends at Dice {row['ct_refine']['dice_reference'] or 0.0:.3f}: the CT does not confirm "
                       "the move")
    elif before >= g.consistent_dice[c]:
        row["verdict"] = "consistent"
    else:
        row["verdict"] = "disagreement"
        row["note"] = (f"shape differs: Dice {before:.3f} before, {d_fit:.3f} after the best rigid fit "
                       f"(misplaced needs >= {g.fit_dice[c]:.2f} and a gain >= {g.min_gain:.2f})")
    if sizes_differ:
        row["note"] = (f"not misplaced: label / reference volume {ratio:.2f}, outside 1/{g.max_volume_ratio:g} to "
                       f"{g.max_volume_ratio:g} (a rigid move keeps the volume; the reference covers another extent)")
