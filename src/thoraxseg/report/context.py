"""What every report section reads: the loaded study, cached canonical volumes and the statistics.
"""


from pathlib import Path

import pandas as pd

from thoraxseg.report.study import Canonical, Study, load_canonical
from thoraxseg.stats.compare import (
    run_comparison,
)


class ReportContext:
    """The study being reported and what its sections share: cached volumes, the statistics table."""

    def __init__(self, study: Study) -> None:
        self.s = study
        self._volumes: dict[tuple[str, str], Canonical] = {}
        self.stats: pd.DataFrame | None = study.stats
        self.shift: pd.DataFrame | None = study.shift
        self.stats_source = "compare/stats.csv"
        self.test_cases = {c.patient_id: c for c in study.test_cases()}

    # ------------------------------------------------------------------ helpers
    def volume(self, kind: str, path: Path, label: bool) -> Canonical:
        key = (kind, str(path))
        if key not in self._volumes:
            self._volumes[key] = load_canonical(path, label=label)
        return self._volumes[key]

    def ensure_stats(self) -> None:
        """Statistics from ``compare/stats.csv``; without it, ``compare`` run here with the study's own settings."""
        if self.stats is None and len(self.s.metrics) >= 2:
            arms = list(self.s.metrics)
            settings = self.s.compare_settings()
            res = run_comparison([self.s.metrics[a] for a in arms], arms, **settings)
            self.stats, self.shift = res.stats, res.shift
            used = ", ".join(f"{k} {v}" for k, v in settings.items()) or "the compare defaults"
            self.stats_source = f"computed for this report (the compare stage did not run) with {used}"
