"""Overlap of label masks (Dice, IoU, precision, recall) and volumes: the one implementation.

Used by ``evaluate`` (:mod:`thoraxseg.metrics`), the trainer's validation Dice, label QA, the
realignment and the report; below all of them.

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

from collections.abc import Sequence

import numpy as np

NAN = float("nan")

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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty).

    >>> dice(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool))
    0.5
    """
    n_a, n_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    return _ratio(2 * int(np.count_nonzero(a & b)), n_a + n_b)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (NaN when both are empty).

    >>> iou(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool))
    0.3333333333333333
    """
    return _ratio(int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b)))


def dice_per_label(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label value from one confusion matrix (NaN where a label is absent from both).

    >>> g = np.zeros((4, 4, 4), np.uint8); g[:2] = 2
    >>> p = np.zeros_like(g); p[:1] = 2
    >>> {k: round(v, 4) for k, v in dice_per_label(p, g, [2]).items()}
    {2: 0.6667}
    """
    n = int(max(int(gt.max(initial=0)), int(pred.max(initial=0)), *labels)) + 1
    cm = np.bincount(gt.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(), minlength=n * n).reshape(n, n)
    return {int(c): _ratio(2 * int(cm[c, c]), int(cm[c, :].sum() + cm[:, c].sum())) for c in labels}
