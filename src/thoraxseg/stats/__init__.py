"""Statistical comparison of segmentation arms: paired tests, Holm, effect sizes, bootstrap CIs.

``compare_arms`` and ``run_comparison`` are imported lazily (scipy.stats is slow to import).
"""

from __future__ import annotations

from typing import Any

__all__ = ["compare_arms", "run_comparison"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from thoraxseg.stats import compare

        return getattr(compare, name)
    raise AttributeError(f"module 'thoraxseg.stats' has no attribute {name!r}")
