"""Metric names, directions and labels shared by ``compare``, the report and the CLI (no heavy imports)."""

from __future__ import annotations

#: Metric columns of an ``evaluate`` CSV.
METRIC_COLUMNS: tuple[str, ...] = (
    "dice", "iou", "precision", "recall", "hd", "hd95", "assd", "nsd", "vol_gt_ml", "vol_pred_ml",
)
#: Metrics compared by default (each is one Holm family).
DEFAULT_METRICS: tuple[str, ...] = ("dice", "hd95", "assd", "nsd", "precision", "recall")
#: Direction of each comparable metric.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True, "iou": True, "precision": True, "recall": True, "nsd": True,
    "hd": False, "hd95": False, "assd": False,
}
#: Display names with units.
METRIC_LABELS: dict[str, str] = {
    "dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall", "nsd": "NSD",
    "hd": "HD (mm)", "hd95": "HD95 (mm)", "assd": "ASSD (mm)",
    "vol_gt_ml": "GT volume (mL)", "vol_pred_ml": "Predicted volume (mL)",
}
#: Organ name used for the per-patient mean over organs.
MEAN: str = "mean"
