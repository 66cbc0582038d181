"""Paired statistical comparison of segmentation arms (``thoraxseg compare``).

Input: one metrics CSV per arm, as written by ``thoraxseg evaluate`` — one row per
patient and organ with columns ``patient,organ,dice,iou,precision,recall,hd,hd95,
assd,nsd,vol_gt_ml,vol_pred_ml`` (distances in mm, volumes in mL; NaN = not
applicable or missing). For every pair of arms (A, B), every organ and the organ
mean, and every metric, the arms are compared **on the same patients**:

1. pair by patient (inner join); patients missing from one arm or NaN in either
   are dropped and listed;
2. Shapiro–Wilk on the differences ``d = B − A`` → paired t-test when
   ``p ≥ alpha``, else Wilcoxon signed-rank (:func:`thoraxseg.stats.paired.paired_test`);
3. Holm correction within each metric family (all pairs × organs × mean of one metric);
4. effect sizes: Cohen's d_z and the matched-pairs rank-biserial correlation;
5. a seeded percentile-bootstrap 95 % CI of the mean difference;
6. optionally (``unpaired=True``) the Mann–Whitney U test on the same values,
   which ignores the pairing (kept to reproduce earlier unpaired analyses).

The *organ mean* of a patient is the mean over the organs that have a value in
**both** arms, so the two arms are always averaged over the same organs.

Outputs ``OUT/stats.csv`` (one row per comparison, columns in :data:`STATS_COLUMNS`),
``OUT/shift.csv`` (over- vs under-segmentation: precision/recall shift per organ)
and ``OUT/summary.txt`` (the tables printed by the CLI), all written atomically.

Examples
--------
>>> import numpy as np, pandas as pd
>>> rows = [dict(patient=f"P{i}", organ=o, dice=0.8 + 0.01 * i + (0.05 if arm == "b" else 0.0))
...         for arm in "ab" for i in range(6) for o in ("heart", "aorta")]
>>> a = pd.DataFrame(rows[:12]); b = pd.DataFrame(rows[12:])
>>> st = compare_arms([a, b], ["a", "b"], None, metric_names=["dice"], n_boot=200)
>>> st[["organ", "n", "test"]].values.tolist()
[['heart', 6, 'Wilcoxon signed-rank'], ['aorta', 6, 'Wilcoxon signed-rank'], ['mean', 6, 'Wilcoxon signed-rank']]
"""

from __future__ import annotations

import io
import itertools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from thoraxseg.errors import ConfigError, InputError
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.stats.constants import DEFAULT_METRICS, HIGHER_IS_BETTER, MEAN, METRIC_COLUMNS, METRIC_LABELS
from thoraxseg.stats.paired import (
    TEST_NONE,
    TEST_T,
    TEST_WILCOXON,
    bootstrap_ci,
    cohens_dz,
    holm,
    mann_whitney,
    paired_test,
    rank_biserial_paired,
    significance_mark,
)
from thoraxseg.utils.atomic import atomic_path, write_text_atomic

#: Columns of ``stats.csv``, in order (the ``mwu_*`` columns are NaN unless ``unpaired``).
STATS_COLUMNS: tuple[str, ...] = (
    "metric", "organ", "arm_a", "arm_b", "higher_is_better", "n", "n_dropped", "dropped",
    "mean_a", "sd_a", "median_a", "mean_b", "sd_b", "median_b", "mean_diff", "median_diff",
    "ci_low", "ci_high", "shapiro_w", "shapiro_p", "test", "statistic", "df", "p", "p_holm",
    "significant", "mark", "effect_dz", "effect_rbc", "better",
    "mwu_u", "mwu_p", "mwu_p_holm", "mwu_rbc", "note",
)
#: Columns of ``shift.csv``.
SHIFT_COLUMNS: tuple[str, ...] = (
    "organ", "arm_a", "arm_b", "n", "d_dice", "d_precision", "d_recall", "p_holm_precision", "p_holm_recall",
    "vol_err_pct_a", "vol_err_pct_b", "pattern",
)
#: Mean shifts smaller than this (absolute, in Dice/precision/recall units) count as "no change".
SHIFT_EPS: float = 0.005


@dataclass
class CompareResult:
    """Everything :func:`run_comparison` computes.

    Attributes
    ----------
    stats
        One row per (metric, organ, pair of arms), columns :data:`STATS_COLUMNS`.
    shift
        Over-/under-segmentation table, columns :data:`SHIFT_COLUMNS`.
    arms
        Arm names in input order.
    settings
        alpha, seed, n_boot, unpaired, metrics.
    notes
        Data-level remarks (dropped patients, skipped metrics).
    """

    stats: pd.DataFrame
    shift: pd.DataFrame
    arms: list[str]
    settings: dict[str, object]
    notes: list[str] = field(default_factory=list)


def _natural_key(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def load_metrics(path: str | Path) -> pd.DataFrame:
    """Read and validate one arm's metrics CSV (long format, one row per patient and organ).

    Raises
    ------
    InputError
        Missing/unreadable file, missing ``patient``/``organ`` column, no metric column,
        non-numeric metric values, unknown organ names, or duplicate (patient, organ) rows.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(p, f"not a readable CSV ({type(exc).__name__}: {exc})") from None
    return validate_metrics(df, p)


def validate_metrics(df: pd.DataFrame, source: str | Path = "<metrics>") -> pd.DataFrame:
    """Check and normalise a metrics table (see :func:`load_metrics`); returns a cleaned copy.

    Organ names are lower-cased, patients read as text, ±inf turned into NaN.
    """
    missing = [c for c in ("patient", "organ") if c not in df.columns]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}; expected patient,organ,"
                                 + ",".join(METRIC_COLUMNS))
    present = [c for c in METRIC_COLUMNS if c in df.columns]
    if not present:
        raise InputError(source, f"no metric column; expected some of {', '.join(METRIC_COLUMNS)}")
    if df.empty:
        raise InputError(source, "no rows")
    out = df[["patient", "organ", *present]].copy()
    out["patient"] = out["patient"].astype(str).str.strip()
    out["organ"] = out["organ"].astype(str).str.strip().str.lower()
    unknown = sorted(set(out["organ"]) - set(ORGAN_NAMES))
    if unknown:
        raise InputError(source, f"unknown organ name(s) {', '.join(unknown[:5])}; expected {', '.join(ORGAN_NAMES)}")
    for col in present:
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna() & (out[col].astype(str).str.strip().str.lower() != "nan")
        if bad.any():
            raise InputError(source, f"column {col}: non-numeric value {out.loc[bad, col].iloc[0]!r}")
        out[col] = values.astype(np.float64).replace([np.inf, -np.inf], np.nan)
    dupes = out.duplicated(["patient", "organ"])
    if dupes.any():
        row = out.loc[dupes].iloc[0]
        raise InputError(source, f"duplicate row for patient {row['patient']} / {row['organ']}")
    return out.reset_index(drop=True)


def default_arm_name(path: str | Path) -> str:
    """Arm name from a metrics path: the parent folder for ``.../<arm>/metrics.csv``, else the file stem.

    >>> default_arm_name("study/arms/enet/metrics.csv"), default_arm_name("nnunet3d.csv")
    ('enet', 'nnunet3d')
    """
    p = Path(path)
    return p.parent.name if p.stem == "metrics" and p.parent.name else p.stem


def _resolve_inputs(
    metrics: Sequence[str | Path | pd.DataFrame], names: Sequence[str] | None
) -> tuple[list[str], list[pd.DataFrame]]:
    if len(metrics) < 2:
        raise ConfigError(f"need metrics of at least 2 arms to compare, got {len(metrics)}")
    if names is not None and len(names) != len(metrics):
        raise ConfigError(f"--names gives {len(names)} name(s) for {len(metrics)} metrics file(s)")
    frames: list[pd.DataFrame] = []
    auto: list[str] = []
    for i, m in enumerate(metrics):
        if isinstance(m, pd.DataFrame):
            frames.append(validate_metrics(m, f"<arm {i + 1}>"))
            auto.append(f"arm{i + 1}")
        else:
            frames.append(load_metrics(m))
            auto.append(default_arm_name(m))
    if names is None:
        arm_names = auto if len(set(auto)) == len(auto) else [f"{n}_{i + 1}" for i, n in enumerate(auto)]
    else:
        arm_names = [str(n) for n in names]
        if len(set(arm_names)) != len(arm_names):
            raise ConfigError(f"arm names must be unique: {', '.join(arm_names)}")
    return arm_names, frames


@dataclass(frozen=True)
class _Wide:
    """One metric of one arm on the union patient list: ``values[patient, organ]`` (NaN = no value)."""

    values: np.ndarray
    present: np.ndarray


def _union_patients(frames: Sequence[pd.DataFrame]) -> list[str]:
    ids: set[str] = set()
    for f in frames:
        ids.update(f["patient"])
    return sorted(ids, key=_natural_key)


def _wide(df: pd.DataFrame, metric: str, patients: Sequence[str]) -> _Wide:
    """patient × organ array of one metric (rows: ``patients``, columns: organs in label order)."""
    present = np.isin(np.asarray(patients, dtype=object), df["patient"].unique())
    if metric not in df.columns:
        return _Wide(np.full((len(patients), len(ORGAN_NAMES)), np.nan), present)
    w = df.pivot(index="patient", columns="organ", values=metric).reindex(index=list(patients),
                                                                          columns=list(ORGAN_NAMES))
    return _Wide(w.to_numpy(dtype=np.float64), present)


def _paired(wa: _Wide, wb: _Wide, organ: str, names: tuple[str, str], patients: Sequence[str]
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Values of A and B on the patients that have both, plus the dropped patients with reasons."""
    pats = np.asarray(patients, dtype=object)
    dropped = [f"{p} (not in {names[1]})" for p in pats[wa.present & ~wb.present]]
    dropped += [f"{p} (not in {names[0]})" for p in pats[wb.present & ~wa.present]]
    common = wa.present & wb.present
    if organ == MEAN:  # mean over the organs that have a value in both arms
        both = np.isfinite(wa.values) & np.isfinite(wb.values)
        count = both.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.where(count > 0, np.where(both, wa.values, 0.0).sum(axis=1) / count, np.nan)
            b = np.where(count > 0, np.where(both, wb.values, 0.0).sum(axis=1) / count, np.nan)
    else:
        k = ORGAN_NAMES.index(organ)
        a, b = wa.values[:, k], wb.values[:, k]
    ok = common & np.isfinite(a) & np.isfinite(b)
    for idx in np.flatnonzero(common & ~ok):
        which = [n for n, v in zip(names, (a[idx], b[idx]), strict=True) if not np.isfinite(v)]
        dropped.append(f"{pats[idx]} (no value in {' and '.join(which)})")
    return a[ok], b[ok], dropped


def _comparison_seed(seed: int, key: str) -> np.random.SeedSequence:
    """Per-comparison seed: independent of the order in which comparisons run."""
    return np.random.SeedSequence([int(seed) % 2**32, zlib.crc32(key.encode("utf-8"))])


def _better(diff: float, higher: bool, a: str, b: str) -> str:
    if not np.isfinite(diff):
        return ""
    if diff == 0:
        return "tie"
    return b if (diff > 0) == higher else a


def _describe(x: np.ndarray) -> tuple[float, float, float]:
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    sd = float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
    return float(np.mean(x)), sd, float(np.median(x))


def _compare_one(
    a: np.ndarray, b: np.ndarray, dropped: list[str], *, metric: str, organ: str, arm_a: str, arm_b: str,
    alpha: float, seed: int, n_boot: int, unpaired: bool,
) -> dict[str, object]:
    d = b - a
    n = int(d.size)
    res = paired_test(a, b, alpha=alpha) if n else None
    mean_a, sd_a, med_a = _describe(a)
    mean_b, sd_b, med_b = _describe(b)
    mean_diff = float(np.mean(d)) if n else float("nan")
    ci = bootstrap_ci(d, n_boot=n_boot, seed=_comparison_seed(seed, f"{metric}|{organ}|{arm_a}|{arm_b}")) \
        if n >= 2 else (float("nan"), float("nan"))
    higher = HIGHER_IS_BETTER.get(metric, True)
    notes = [res.reason if res else "no patient has a value in both arms: no test"]
    if res is not None and res.test == TEST_WILCOXON and int(np.count_nonzero(d)) < 6:
        notes.append(f"with {int(np.count_nonzero(d))} non-zero differences the two-sided Wilcoxon test cannot "
                     "reach p < 0.05 (smallest exact p = 2/2^n)")
    if dropped:
        notes.append(f"dropped {len(dropped)}: {', '.join(dropped)}")
    row: dict[str, object] = {
        "metric": metric, "organ": organ, "arm_a": arm_a, "arm_b": arm_b, "higher_is_better": higher,
        "n": n, "n_dropped": len(dropped), "dropped": "; ".join(dropped),
        "mean_a": mean_a, "sd_a": sd_a, "median_a": med_a, "mean_b": mean_b, "sd_b": sd_b, "median_b": med_b,
        "mean_diff": mean_diff, "median_diff": float(np.median(d)) if n else float("nan"),
        "ci_low": ci[0], "ci_high": ci[1],
        "shapiro_w": res.shapiro_w if res else float("nan"), "shapiro_p": res.shapiro_p if res else float("nan"),
        "test": res.test if res else TEST_NONE, "statistic": res.statistic if res else float("nan"),
        "df": res.df if res else float("nan"), "p": res.p if res else float("nan"),
        "effect_dz": cohens_dz(d) if n else float("nan"),
        "effect_rbc": rank_biserial_paired(d) if n else float("nan"),
        "better": _better(mean_diff, higher, arm_a, arm_b),
        "mwu_u": float("nan"), "mwu_p": float("nan"), "mwu_rbc": float("nan"),
    }
    if unpaired and n:
        u, p_u, r_u = mann_whitney(a, b)
        row.update(mwu_u=u, mwu_p=p_u, mwu_rbc=r_u)
        notes.append("Mann–Whitney U ignores the pairing (reported on request, for comparison with unpaired analyses)")
    row["note"] = "; ".join(notes)
    return row


def run_comparison(
    metrics: Sequence[str | Path | pd.DataFrame],
    names: Sequence[str] | None = None,
    *,
    unpaired: bool = False,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
    metric_names: Sequence[str] = DEFAULT_METRICS,
) -> CompareResult:
    """Compute every pairwise comparison (see module docstring); writes nothing.

    Parameters
    ----------
    metrics
        One metrics CSV path (or validated-compatible DataFrame) per arm.
    names
        Arm names; default from the paths (:func:`default_arm_name`).
    unpaired
        Also run the Mann–Whitney U test (ignores pairing).
    seed
        Seed of the bootstrap (each comparison derives its own stream from it).
    n_boot
        Bootstrap resamples.
    alpha
        Level of the normality check and of the ``significant`` flag (on Holm-adjusted p).
    metric_names
        Metrics to compare; each is one Holm family. Metrics absent from every CSV are skipped with a note.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 100:
        raise ConfigError(f"n_boot must be at least 100, got {n_boot}")
    arm_names, frames = _resolve_inputs(metrics, names)
    notes: list[str] = []
    chosen: list[str] = []
    for m in metric_names:
        if m not in HIGHER_IS_BETTER:
            raise ConfigError(f"unknown metric {m!r}; choose from {', '.join(HIGHER_IS_BETTER)}")
        missing = [n for n, f in zip(arm_names, frames, strict=True) if m not in f.columns]
        if len(missing) == len(frames):
            notes.append(f"metric {m} is in no metrics file: skipped")
            continue
        if missing:
            notes.append(f"metric {m} missing for {', '.join(missing)}: those comparisons have no test")
        chosen.append(m)
    organs = [o for o in ORGAN_NAMES if any(o in set(f["organ"]) for f in frames)] + [MEAN]
    rows: list[dict[str, object]] = []
    patients = _union_patients(frames)
    for metric in chosen:
        wides = [_wide(f, metric, patients) for f in frames]
        for organ in organs:
            for i, j in itertools.combinations(range(len(arm_names)), 2):
                a, b, dropped = _paired(wides[i], wides[j], organ, (arm_names[i], arm_names[j]), patients)
                rows.append(_compare_one(a, b, dropped, metric=metric, organ=organ, arm_a=arm_names[i],
                                         arm_b=arm_names[j], alpha=alpha, seed=seed, n_boot=n_boot,
                                         unpaired=unpaired))
    stats = pd.DataFrame(rows, columns=[c for c in STATS_COLUMNS if c not in ("p_holm", "significant", "mark",
                                                                                "mwu_p_holm")])
    stats["p_holm"] = np.nan
    stats["mwu_p_holm"] = np.nan
    for metric in chosen:
        fam = stats["metric"] == metric
        stats.loc[fam, "p_holm"] = holm(stats.loc[fam, "p"].to_numpy(dtype=np.float64))
        stats.loc[fam, "mwu_p_holm"] = holm(stats.loc[fam, "mwu_p"].to_numpy(dtype=np.float64))
    stats["significant"] = stats["p_holm"].to_numpy(dtype=np.float64) < alpha
    stats["mark"] = [significance_mark(p, alpha) for p in stats["p_holm"].to_numpy(dtype=np.float64)]
    stats = stats[list(STATS_COLUMNS)]
    for i in range(len(arm_names)):
        for j in range(i + 1, len(arm_names)):
            ids_a, ids_b = set(frames[i]["patient"]), set(frames[j]["patient"])
            if ids_a != ids_b:
                notes.append(f"{arm_names[i]} vs {arm_names[j]}: {len(ids_a ^ ids_b)} patient(s) not in both "
                             f"arms are dropped from their comparisons")
    shift = segmentation_shift(frames, arm_names, stats)
    settings: dict[str, object] = {"alpha": alpha, "seed": seed, "n_boot": n_boot, "unpaired": unpaired,
                                   "metrics": chosen}
    return CompareResult(stats=stats, shift=shift, arms=arm_names, settings=settings, notes=notes)


def segmentation_shift(frames: Sequence[pd.DataFrame], arm_names: Sequence[str], stats: pd.DataFrame | None = None
                       ) -> pd.DataFrame:
    """Over- vs under-segmentation: mean paired shift of Dice, precision and recall, B − A, per organ.

    Precision falls and recall rises when B's masks grow beyond the organ
    (over-segmentation); the reverse when they shrink. ``vol_err_pct_*`` is each
    arm's mean relative volume error ``(V_pred − V_gt) / V_gt`` in percent
    (positive = larger than the ground truth). Holm-adjusted p-values are copied
    from ``stats`` when it has the precision/recall families.
    """
    rows: list[dict[str, object]] = []
    organs = [o for o in ORGAN_NAMES if any(o in set(f["organ"]) for f in frames)] + [MEAN]
    patients = _union_patients(frames)
    wide = {m: [_wide(f, m, patients) for f in frames] for m in ("dice", "precision", "recall")}
    volerr: list[_Wide | None] = []
    for f in frames:
        if {"vol_gt_ml", "vol_pred_ml"} <= set(f.columns):
            g = f.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                g["volerr"] = np.where(g["vol_gt_ml"] > 0, 100.0 * (g["vol_pred_ml"] - g["vol_gt_ml"])
                                       / g["vol_gt_ml"], np.nan)
            volerr.append(_wide(g, "volerr", patients))
        else:
            volerr.append(None)
    for organ in organs:
        for i, j in itertools.combinations(range(len(arm_names)), 2):
            names = (arm_names[i], arm_names[j])
            shifts: dict[str, float] = {}
            n = 0
            for m in ("dice", "precision", "recall"):
                a, b, _ = _paired(wide[m][i], wide[m][j], organ, names, patients)
                shifts[m] = float(np.mean(b - a)) if a.size else float("nan")
                n = max(n, int(a.size))
            ve = []
            for k in (i, j):
                w = volerr[k]
                if w is None:
                    ve.append(float("nan"))
                    continue
                vals = w.values[w.present]
                vals = vals.ravel() if organ == MEAN else vals[:, ORGAN_NAMES.index(organ)]
                vals = vals[np.isfinite(vals)]
                ve.append(float(vals.mean()) if vals.size else float("nan"))
            p_prec = p_rec = float("nan")
            if stats is not None and not stats.empty:
                sel = (stats["organ"] == organ) & (stats["arm_a"] == names[0]) & (stats["arm_b"] == names[1])
                pp = stats.loc[sel & (stats["metric"] == "precision"), "p_holm"]
                pr = stats.loc[sel & (stats["metric"] == "recall"), "p_holm"]
                p_prec = float(pp.iloc[0]) if len(pp) else float("nan")
                p_rec = float(pr.iloc[0]) if len(pr) else float("nan")
            rows.append({
                "organ": organ, "arm_a": names[0], "arm_b": names[1], "n": n,
                "d_dice": shifts["dice"], "d_precision": shifts["precision"], "d_recall": shifts["recall"],
                "p_holm_precision": p_prec, "p_holm_recall": p_rec,
                "vol_err_pct_a": ve[0], "vol_err_pct_b": ve[1],
                "pattern": shift_pattern(shifts["precision"], shifts["recall"], names[1]),
            })
    return pd.DataFrame(rows, columns=list(SHIFT_COLUMNS))


def shift_pattern(d_precision: float, d_recall: float, arm_b: str = "B", eps: float = SHIFT_EPS) -> str:
    """Describe a precision/recall shift of arm B relative to arm A.

    >>> shift_pattern(-0.06, 0.04, "nnunet3d")
    'nnunet3d shifts towards over-segmentation (recall ↑, precision ↓)'
    >>> shift_pattern(0.001, -0.002)
    'no clear shift'
    """
    if not (np.isfinite(d_precision) and np.isfinite(d_recall)):
        return "n/a"
    up_p, down_p = d_precision > eps, d_precision < -eps
    up_r, down_r = d_recall > eps, d_recall < -eps
    if up_r and down_p:
        return f"{arm_b} shifts towards over-segmentation (recall ↑, precision ↓)"
    if up_p and down_r:
        return f"{arm_b} shifts towards under-segmentation (precision ↑, recall ↓)"
    if up_p and up_r:
        return f"{arm_b} better on both (precision ↑, recall ↑)"
    if down_p and down_r:
        return f"{arm_b} worse on both (precision ↓, recall ↓)"
    if up_p or up_r:
        return f"{arm_b} gains {'precision' if up_p else 'recall'} only"
    if down_p or down_r:
        return f"{arm_b} loses {'precision' if down_p else 'recall'} only"
    return "no clear shift"


# ----------------------------------------------------------------------------- formatting


def format_value(x: float, metric: str) -> str:
    """A metric value for tables: 3 decimals for overlap metrics, 2 for mm/mL.

    >>> format_value(0.87654, "dice"), format_value(3.14159, "hd95"), format_value(float("nan"), "dice")
    ('0.877', '3.14', '—')
    """
    if x is None or not np.isfinite(x):
        return "—"
    decimals = 2 if metric in ("hd", "hd95", "assd") or metric.startswith("vol") else 3
    return f"{x:.{decimals}f}"


def format_p(p: float) -> str:
    """p-value for tables: ``<0.001`` below 0.001, 3 significant digits otherwise.

    >>> format_p(0.00002), format_p(0.04567), format_p(float("nan"))
    ('<0.001', '0.0457', '—')
    """
    if p is None or not np.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def format_statistic(row: pd.Series | dict) -> str:
    """``t(5) = 2.31`` / ``W = 3`` / ``—`` for one stats row."""
    stat = row["statistic"]
    if row["test"] == TEST_T and np.isfinite(stat):
        return f"t({int(row['df'])}) = {stat:.2f}"
    if row["test"] != TEST_NONE and np.isfinite(stat):
        return f"W = {stat:g}"
    return "—"


def _signed(x: float, metric: str) -> str:
    s = format_value(x, metric)
    return s if s == "—" or s.startswith("-") else f"+{s}"


def summary_renderables(result: CompareResult, compact: bool = False) -> list[RenderableType]:
    """Rich tables of a comparison (one per metric, plus the shift table and notes).

    ``compact`` keeps the columns a reader needs first (Δ with CI, test and statistic,
    Holm-adjusted p, mark, d_z) so the tables fit a ~100-column terminal; the full
    tables (means, raw p, r_rb, Mann–Whitney) are in ``summary.txt`` and ``stats.csv``.
    """
    out: list[RenderableType] = []
    s = result.settings
    head = Text.assemble(
        ("Comparison of arms: ", "bold"), (", ".join(result.arms), "bold cyan"),
        f"\npaired by patient; Shapiro–Wilk (alpha {s['alpha']}) → paired t-test or Wilcoxon signed-rank; "
        f"Holm within each metric; bootstrap 95 % CI of the mean difference B − A "
        f"({s['n_boot']} resamples, seed {s['seed']})",
    )
    out.append(head)
    stats = result.stats
    unpaired = bool(s.get("unpaired"))
    for metric in s["metrics"]:  # type: ignore[union-attr]
        sub = stats[stats["metric"] == metric]
        direction = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
        t = Table(title=f"{METRIC_LABELS.get(metric, metric)} — {direction}", box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False, collapse_padding=compact)
        columns = (("organ", "left"), ("B − A", "left"), ("n", "right"), ("mean A", "right"),
                   ("mean B", "right"), ("Δ [95 % CI]", "right"), ("test", "left"), ("stat", "left"),
                   ("p", "right"), ("p Holm", "right"), ("", "left"), ("d_z", "right"), ("r_rb", "right"))
        keep = [0, 1, 2, 5, 7, 9, 10, 11] if compact else list(range(len(columns)))
        for k in keep:
            t.add_column(columns[k][0], justify=columns[k][1], no_wrap=True)  # type: ignore[arg-type]
        if unpaired and not compact:
            t.add_column("MWU U", justify="right")
            t.add_column("MWU p Holm", justify="right")
        for _, r in sub.iterrows():
            ci = (f"{_signed(r['mean_diff'], metric)} [{format_value(r['ci_low'], metric)}, "
                  f"{format_value(r['ci_high'], metric)}]") if np.isfinite(r["mean_diff"]) else "—"
            test = {"paired t-test": "t-test", "Wilcoxon signed-rank": "Wilcoxon"}.get(str(r["test"]), "none")
            style = "bold green" if r["significant"] else ""
            cells = [str(r["organ"]), f"{r['arm_b']} − {r['arm_a']}", str(r["n"]),
                     format_value(r["mean_a"], metric), format_value(r["mean_b"], metric), ci, test,
                     format_statistic(r), format_p(r["p"]), format_p(r["p_holm"]), str(r["mark"]),
                     f"{r['effect_dz']:+.2f}" if np.isfinite(r["effect_dz"]) else "—",
                     f"{r['effect_rbc']:+.2f}" if np.isfinite(r["effect_rbc"]) else "—"]
            if compact:
                cells = [cells[k].replace(" = ", "=") for k in keep]
            elif unpaired:
                cells += [f"{r['mwu_u']:g}" if np.isfinite(r["mwu_u"]) else "—", format_p(r["mwu_p_holm"])]
            t.add_row(*cells, style=style)
        out.append(t)
    if not result.shift.empty:
        t = Table(title="Over- vs under-segmentation (mean paired shift B − A)", box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False)
        for col in ("organ", "B − A", "ΔDice", "Δprecision", "Δrecall", "vol err A", "vol err B", "pattern"):
            t.add_column(col, justify="left" if col in ("organ", "B − A", "pattern") else "right",
                         no_wrap=col != "pattern")
        for _, r in result.shift.iterrows():
            t.add_row(str(r["organ"]), f"{r['arm_b']} − {r['arm_a']}", _signed(r["d_dice"], "dice"),
                      _signed(r["d_precision"], "dice"), _signed(r["d_recall"], "dice"),
                      _pct(r["vol_err_pct_a"]), _pct(r["vol_err_pct_b"]), str(r["pattern"]))
        out.append(t)
    edge = stats[stats["test"] == TEST_NONE]
    notes = list(result.notes)
    if not edge.empty:
        notes.append(f"{len(edge)} comparison(s) without a test (see the note column of stats.csv), e.g. "
                     f"{edge.iloc[0]['metric']}/{edge.iloc[0]['organ']} {edge.iloc[0]['arm_b']} − "
                     f"{edge.iloc[0]['arm_a']}: {edge.iloc[0]['note']}")
    n_t = int((stats["test"] == TEST_T).sum())
    n_w = int((stats["test"] == "Wilcoxon signed-rank").sum())
    notes.append(f"tests used: {n_t} paired t-test(s), {n_w} Wilcoxon signed-rank; marks on Holm-adjusted p: "
                 f"*** < 0.001, ** < 0.01, * < {s['alpha']}, ns otherwise")
    if unpaired:
        notes.append("Mann–Whitney U ignores the pairing of patients; it is reported only to reproduce unpaired "
                     "analyses — the paired test is the one to use")
    out.append(Text("\n".join(f"• {n}" for n in notes)))
    return out


def _pct(x: float) -> str:
    return f"{x:+.1f} %" if np.isfinite(x) else "—"


def summary_text(result: CompareResult, width: int = 160) -> str:
    """Plain-text rendering of :func:`summary_renderables` (what ``summary.txt`` holds)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(Group(*summary_renderables(result)))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def write_outputs(result: CompareResult, out: str | Path) -> None:
    """Write ``stats.csv``, ``shift.csv`` and ``summary.txt`` into ``out`` (atomically)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "stats.csv") as tmp:
        result.stats.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(folder / "shift.csv") as tmp:
        result.shift.to_csv(tmp, index=False, float_format="%.6g")
    write_text_atomic(folder / "summary.txt", summary_text(result))


def compare_arms(
    metrics: Sequence[str | Path | pd.DataFrame],
    names: Sequence[str] | None,
    out: str | Path | None,
    unpaired: bool = False,
    seed: int = 0,
    n_boot: int = 2000,
    *,
    alpha: float = 0.05,
    metric_names: Sequence[str] = DEFAULT_METRICS,
) -> pd.DataFrame:
    """Compare arms pairwise and write ``out/stats.csv``, ``out/shift.csv``, ``out/summary.txt``.

    The study orchestrator's entry point; see :func:`run_comparison` for the
    parameters. ``out=None`` writes nothing. Returns the stats table
    (columns :data:`STATS_COLUMNS`); use :func:`run_comparison` for the shift table in memory.
    """
    result = run_comparison(metrics, names, unpaired=unpaired, seed=seed, n_boot=n_boot, alpha=alpha,
                            metric_names=metric_names)
    if out is not None:
        write_outputs(result, out)
    return result.stats
