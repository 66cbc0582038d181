"""Overlap metrics (Dice, IoU, precision, recall) and volumes from voxel counts.

Everything is computed from three counts: ``tp`` (voxels in both GT and
prediction), ``n_gt`` and ``n_pred`` (voxels in each mask). Undefined ratios
(0/0) are NaN, never inf. See ``docs/metrics.md`` for the empty-mask policy.

Examples
--------
>>> m = overlap_metrics(tp=80, n_gt=100, n_pred=90, voxel_ml=0.001)
>>> round(m["dice"], 4), round(m["iou"], 4), round(m["precision"], 4), m["recall"]
(0.8421, 0.7273, 0.8889, 0.8)
>>> m["vol_gt_ml"], m["vol_pred_ml"]
(0.1, 0.09)
>>> overlap_metrics(0, 0, 50, 0.001)["dice"], overlap_metrics(0, 0, 50, 0.001)["recall"]
(0.0, nan)
"""

from __future__ import annotations

NAN = float("nan")

#: Overlap metric names, in CSV order.
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else NAN


def overlap_metrics(tp: int, n_gt: int, n_pred: int, voxel_ml: float) -> dict[str, float]:
    """Dice, IoU, precision, recall and both volumes from voxel counts.

    Parameters
    ----------
    tp
        Voxels labelled in both masks.
    n_gt, n_pred
        Voxels in the GT mask and in the predicted mask.
    voxel_ml
        Volume of one voxel in mL (product of the spacing in mm / 1000).

    Returns
    -------
    dict
        ``dice``, ``iou``, ``precision``, ``recall`` in [0, 1] and ``vol_gt_ml``,
        ``vol_pred_ml`` in mL. Both masks empty: the four ratios are NaN (not
        applicable) and the volumes 0. One mask empty: Dice = IoU = 0; precision
        (no prediction) or recall (no GT) is 0/0 = NaN, the other one is 0.
    """
    if tp < 0 or tp > min(n_gt, n_pred):
        raise ValueError(f"inconsistent counts: tp={tp}, n_gt={n_gt}, n_pred={n_pred}")
    union = n_gt + n_pred - tp
    return {
        "dice": _ratio(2 * tp, n_gt + n_pred),
        "iou": _ratio(tp, union),
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_gt),
        "vol_gt_ml": round(n_gt * voxel_ml, 9),
        "vol_pred_ml": round(n_pred * voxel_ml, 9),
    }
