"""3D segmentation metrics in mm (Dice, IoU, precision, recall, HD, HD95, ASSD, NSD, volumes).

Definitions (surfaces, pooling, empty masks) are in ``docs/metrics.md``.
"""

from thoraxseg.metrics.engine import METRIC_NAMES, compute_metrics
from thoraxseg.metrics.evaluate import (
    CSV_COLUMNS,
    evaluate_folders,
    summarize_metrics,
    write_metrics_csv,
    write_npz,
)

__all__ = [
    "CSV_COLUMNS",
    "METRIC_NAMES",
    "compute_metrics",
    "evaluate_folders",
    "summarize_metrics",
    "write_metrics_csv",
    "write_npz",
]
