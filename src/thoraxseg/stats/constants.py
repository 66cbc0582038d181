"""Metric names, directions and labels shared by ``compare``, the report and the CLI (no heavy imports).

Derived from the metric table :data:`thoraxseg.metrics.spec.METRICS` (the one source).
"""

from __future__ import annotations

from thoraxseg.metrics.spec import HIGHER_IS_BETTER, METRIC_LABELS, METRIC_NAMES

#: Metric columns of an ``evaluate`` CSV.
METRIC_COLUMNS: tuple[str, ...] = METRIC_NAMES
#: Metrics compared by default (each is one Holm family).
DEFAULT_METRICS: tuple[str, ...] = ("dice", "hd95", "assd", "nsd", "precision", "recall")
#: Organ name used for the per-patient mean over organs.
MEAN: str = "mean"

__all__ = ["DEFAULT_METRICS", "HIGHER_IS_BETTER", "MEAN", "METRIC_COLUMNS", "METRIC_LABELS"]
