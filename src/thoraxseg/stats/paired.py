"""Statistical building blocks for comparing two segmentation arms on the same patients.

Every function takes per-patient values (or paired differences ``d = b - a``,
arm B minus arm A) as 1-D float arrays with no NaN; the caller pairs and
cleans the data (:mod:`thoraxseg.stats.compare`). The tests themselves are
scipy's (:func:`scipy.stats.shapiro`, :func:`~scipy.stats.ttest_rel`,
:func:`~scipy.stats.wilcoxon`, :func:`~scipy.stats.mannwhitneyu`,
:func:`~scipy.stats.bootstrap`); Holm's step-down correction and the effect
sizes are written out here because scipy has no Holm and the formulas are short.

Examples
--------
>>> import numpy as np
>>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
[0.03, 0.06, 0.06, 0.02]
>>> round(cohens_dz(np.array([1.0, 2.0, 3.0])), 3)
2.0
>>> rank_biserial_paired(np.array([1.0, 2.0, -3.0, 4.0]))
0.4
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Test names written to ``stats.csv``.
TEST_T = "paired t-test"
TEST_WILCOXON = "Wilcoxon signed-rank"
TEST_NONE = "none"

#: Fewest pairs for which a paired test is attempted (Shapiro–Wilk needs 3).
MIN_PAIRS = 3


@dataclass(frozen=True)
class PairedTest:
    """Outcome of :func:`paired_test`.

    Attributes
    ----------
    n
        Number of pairs used.
    test
        ``"paired t-test"``, ``"Wilcoxon signed-rank"`` or ``"none"``.
    statistic
        t for the t-test, W = min(W+, W−) for Wilcoxon (scipy's two-sided statistic), NaN for none.
    df
        Degrees of freedom (n − 1) for the t-test, else NaN.
    p
        Two-sided p-value (NaN when no test was possible).
    shapiro_w, shapiro_p
        Shapiro–Wilk statistic and p-value of the differences (NaN when not computed).
    reason
        One sentence: why this test (or why none).
    """

    n: int
    test: str
    statistic: float
    df: float
    p: float
    shapiro_w: float
    shapiro_p: float
    reason: str


def _as_1d(x: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite (drop NaN pairs first)")
    return arr


def _is_constant(d: np.ndarray) -> bool:
    scale = max(1.0, float(np.max(np.abs(d)))) if d.size else 1.0
    return bool(d.size == 0 or np.ptp(d) <= 1e-12 * scale)


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alpha: float = 0.05) -> PairedTest:
    """Choose and run a paired two-sided test of arm B against arm A.

    The differences ``d = b - a`` are tested for normality with Shapiro–Wilk:
    ``p >= alpha`` → paired t-test (:func:`scipy.stats.ttest_rel`), otherwise the
    Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, zero differences
    dropped, scipy's exact/approximate choice). Edge cases never raise:

    * fewer than 3 pairs → no test (Shapiro–Wilk and a meaningful test need 3);
    * all differences zero → no test (the arms agree on every patient);
    * constant non-zero differences → Shapiro–Wilk is undefined, Wilcoxon is used.

    Parameters
    ----------
    a, b
        Per-patient values of arms A and B, same patient order, finite.
    alpha
        Significance level of the normality check.

    Examples
    --------
    >>> r = paired_test([0.80, 0.82, 0.78, 0.85, 0.81], [0.84, 0.85, 0.80, 0.90, 0.83])
    >>> r.test, r.df
    ('paired t-test', 4.0)
    >>> paired_test([1.0, 2.0], [1.5, 2.5]).test
    'none'
    """
    xa, xb = _as_1d(a), _as_1d(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    d = xb - xa
    n = int(d.size)
    nan = float("nan")
    if n < MIN_PAIRS:
        return PairedTest(n, TEST_NONE, nan, nan, nan, nan, nan, f"only {n} pair(s) (< {MIN_PAIRS}): no test")
    if np.all(d == 0):
        return PairedTest(n, TEST_NONE, nan, nan, nan, nan, nan,
                          f"all {n} differences are zero: the arms agree on every patient, nothing to test")
    n_zero = int(np.sum(d == 0))
    zero_note = f"; {n_zero} zero difference(s) dropped by Wilcoxon" if n_zero else ""
    if _is_constant(d):
        w = _wilcoxon(d)
        return PairedTest(n, TEST_WILCOXON, w[0], nan, w[1], nan, nan,
                          f"differences constant ({d[0]:+.4g}): Shapiro–Wilk undefined → Wilcoxon{zero_note}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = stats.shapiro(d)
    sw_w, sw_p = float(sw.statistic), float(sw.pvalue)
    if sw_p >= alpha:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tt = stats.ttest_rel(xb, xa)
        return PairedTest(n, TEST_T, float(tt.statistic), float(n - 1), float(tt.pvalue), sw_w, sw_p,
                          f"Shapiro–Wilk p = {sw_p:.3g} ≥ {alpha:g}: differences compatible with normal → t-test")
    w = _wilcoxon(d)
    return PairedTest(n, TEST_WILCOXON, w[0], nan, w[1], sw_w, sw_p,
                      f"Shapiro–Wilk p = {sw_p:.3g} < {alpha:g}: differences not normal → Wilcoxon{zero_note}")


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
    if not np.any(d != 0):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def mann_whitney(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Unpaired Mann–Whitney U test (two-sided), ignoring the pairing.

    Returns ``(U_a, p, r)``: scipy's U statistic of sample A, the p-value, and the
    rank-biserial correlation ``r = 2·U_b / (n_a·n_b) − 1`` (positive when B tends to be larger).

    >>> u, p, r = mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    >>> u, round(p, 3), r
    (0.0, 0.1, 1.0)
    """
    xa, xb = _as_1d(a), _as_1d(b)
    if xa.size == 0 or xb.size == 0:
        return float("nan"), float("nan"), float("nan")
    if np.all(np.concatenate([xa, xb]) == xa[0]):
        return float(xa.size * xb.size / 2), 1.0, 0.0
    res = stats.mannwhitneyu(xa, xb, alternative="two-sided")
    u_a = float(res.statistic)
    u_b = xa.size * xb.size - u_a
    return u_a, float(res.pvalue), float(2 * u_b / (xa.size * xb.size) - 1)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control).

    Sort the ``m`` finite p-values ascending, multiply the k-th smallest by
    ``m − k + 1``, take the running maximum, cap at 1. NaN entries (no test)
    stay NaN and do not count in ``m``.

    >>> holm([0.02, float("nan"), 0.01]).tolist()
    [0.02, nan, 0.02]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def cohens_dz(d: Sequence[float] | np.ndarray) -> float:
    """Cohen's d_z of paired differences: ``mean(d) / sd(d)`` (sd with n − 1).

    NaN with fewer than 2 differences or zero spread.

    >>> cohens_dz([0.5, 0.5])
    nan
    """
    x = _as_1d(d)
    if x.size < 2:
        return float("nan")
    sd = float(np.std(x, ddof=1))
    if sd == 0 or _is_constant(x):
        return float("nan")
    return float(np.mean(x) / sd)


def rank_biserial_paired(d: Sequence[float] | np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014), in [−1, 1].

    Zero differences are dropped, ``|d|`` is ranked (average ranks for ties), and
    ``r = (W+ − W−) / (W+ + W−)`` with ``W±`` the rank sums of the positive and
    negative differences. +1: B larger for every patient. NaN when every difference is zero.

    >>> rank_biserial_paired([0.0, 1.0, 2.0])
    1.0
    """
    x = _as_1d(d)
    x = x[x != 0]
    if x.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(x))
    w_pos = float(ranks[x > 0].sum())
    w_neg = float(ranks[x < 0].sum())
    return (w_pos - w_neg) / (w_pos + w_neg)


def bootstrap_ci(
    d: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int | np.random.SeedSequence = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``d`` (resampling patients).

    Uses :func:`scipy.stats.bootstrap` (``method="percentile"``, vectorised) with a
    generator seeded from ``seed`` — the same seed gives the same interval.
    Returns ``(nan, nan)`` for fewer than 2 values.

    >>> lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4], n_boot=500, seed=1)
    >>> 0.1 <= lo < hi <= 0.4
    True
    """
    x = _as_1d(d)
    if x.size < 2 or n_boot < 1:
        return float("nan"), float("nan")
    if _is_constant(x):
        return float(x[0]), float(x[0])
    res = stats.bootstrap(
        (x,), np.mean, n_resamples=int(n_boot), method="percentile", confidence_level=level,
        vectorized=True, rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


def significance_mark(p: float, alpha: float = 0.05) -> str:
    """Stars for an (adjusted) p-value: ``***`` < 0.001, ``**`` < 0.01, ``*`` < alpha, ``ns``, or ``n/a``.

    >>> [significance_mark(p) for p in (0.0004, 0.004, 0.04, 0.4, float("nan"))]
    ['***', '**', '*', 'ns', 'n/a']
    """
    if not np.isfinite(p):
        return "n/a"
    if p >= alpha:
        return "ns"
    if p < 0.001:
        return "***"
    return "**" if p < 0.01 else "*"
