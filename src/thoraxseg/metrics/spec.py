"""The metric table: one entry per metric — its name, display label, unit, direction and decimals.

Every list of metrics in thoraxseg is derived from :data:`METRICS`: the CSV columns of
``evaluate`` (:mod:`thoraxseg.metrics.engine`), the comparable metrics and their directions in
``compare`` (:mod:`thoraxseg.stats.constants`), and the labels of the report.

Examples
--------
>>> SPECS["hd95"].label, SPECS["hd95"].higher_is_better, SPECS["dice"].format(0.81234)
('HD95 (mm)', False, '0.812')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    Attributes
    ----------
    name
        Column name in ``metrics.csv``.
    title
        Display name without unit.
    unit
        ``""`` (a fraction in [0, 1]), ``"mm"`` or ``"mL"``.
    higher_is_better
        Direction; ``None`` for descriptive columns (volumes) that are not compared.
    decimals
        Decimals shown in tables.
    kind
        ``overlap``, ``distance`` (NaN when either mask is empty) or ``volume``.
    """

    name: str
    title: str
    unit: str
    higher_is_better: bool | None
    decimals: int
    kind: str

    @property
    def label(self) -> str:
        """``"HD95 (mm)"``: the title with its unit."""
        return f"{self.title} ({self.unit})" if self.unit else self.title

    def format(self, value: float) -> str:
        """``value`` with this metric's decimals."""
        return f"{value:.{self.decimals}f}"


#: Every metric of ``metrics.csv``, in column order (after ``patient, organ``).
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("dice", "Dice", "", True, 3, "overlap"),
    MetricSpec("iou", "IoU", "", True, 3, "overlap"),
    MetricSpec("precision", "Precision", "", True, 3, "overlap"),
    MetricSpec("recall", "Recall", "", True, 3, "overlap"),
    MetricSpec("hd", "HD", "mm", False, 1, "distance"),
    MetricSpec("hd95", "HD95", "mm", False, 1, "distance"),
    MetricSpec("assd", "ASSD", "mm", False, 2, "distance"),
    MetricSpec("nsd", "NSD", "", True, 3, "overlap"),
    MetricSpec("vol_gt_ml", "GT volume", "mL", None, 1, "volume"),
    MetricSpec("vol_pred_ml", "Predicted volume", "mL", None, 1, "volume"),
)
#: The same, by name.
SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}
#: Metric names in CSV order.
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
#: Distance metrics (NaN when either mask is empty).
DISTANCE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.kind == "distance")
#: Direction of each comparable metric.
HIGHER_IS_BETTER: dict[str, bool] = {m.name: m.higher_is_better for m in METRICS if m.higher_is_better is not None}
#: Display names with units.
METRIC_LABELS: dict[str, str] = {m.name: m.label for m in METRICS}
