"""3D segmentation metrics in mm (Dice, IoU, precision, recall, HD, HD95, ASSD, NSD, volumes).

Definitions (surfaces, pooling, empty masks) are in ``docs/metrics.md``.
"""

from thoraxseg.metrics.engine import compute_metrics
from thoraxseg.metrics.evaluate import (
    CSV_COLUMNS,
    evaluate_folders,
    summarize_metrics,
    write_metrics_csv,
    write_npz,
)
from thoraxseg.metrics.spec import METRIC_NAMES, METRICS, MetricSpec

__all__ = [
    "CSV_COLUMNS",
    "METRICS",
    "METRIC_NAMES",
    "MetricSpec",
    "compute_metrics",
    "evaluate_folders",
    "summarize_metrics",
    "write_metrics_csv",
    "write_npz",
]
