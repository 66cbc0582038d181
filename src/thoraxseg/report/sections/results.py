"""Sections on the results: metrics per arm, distributions, statistics and the shift table.
"""



import numpy as np
import pandas as pd

from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.report import figures
from thoraxseg.report.context import ReportContext
from thoraxseg.report.markup import (
    esc,
    figure_html,
    fmt_g,
    mark_p,
    mean_sd,
    missing,
    not_run,
    organ_values,
    pct,
    signed2,
    signed3,
    table_html,
)
from thoraxseg.stats.compare import (
    HIGHER_IS_BETTER,
    MEAN,
    METRIC_LABELS,
    format_p,
    format_statistic,
    format_value,
)

#: Metrics shown in per-arm tables, in order.
TABLE_METRICS: tuple[str, ...] = ("dice", "precision", "recall", "nsd", "hd95", "assd", "vol_gt_ml", "vol_pred_ml")
#: Metrics with distribution plots and statistics tables shown open.
PLOT_METRICS: tuple[str, ...] = ("dice", "hd95", "assd", "nsd", "precision", "recall")
OPEN_STATS: tuple[str, ...] = ("dice", "hd95")


class ResultSections(ReportContext):
    """Metrics, distributions, statistics."""

    def sec_metrics(self) -> str:
        if not self.s.metrics:
            return not_run("No arm has a metrics.csv (evaluation did not run).")
        out = []
        for arm, df in self.s.metrics.items():
            mets = [m for m in TABLE_METRICS if m in df.columns]
            rows = []
            for organ in [*[o for o in ORGAN_NAMES if o in set(df["organ"])], MEAN]:
                n = int(np.isfinite(organ_values(df, organ, "dice")).sum()) if "dice" in mets else len(df)
                rows.append([organ if organ != MEAN else "mean of organs", str(n),
                             *[mean_sd(organ_values(df, organ, m), m) if organ != MEAN or not m.startswith("vol")
                               else "—" for m in mets]])
            out.append(f"<h3>{esc(arm)}</h3>" + table_html(["organ", "n", *[METRIC_LABELS.get(m, m) for m in mets]],
                                                             rows))
        return "".join(out) + ('<p class="small muted">mean ± sd over test patients; n = patients with a Dice value. '
                               "Distances in mm (HD95: 95th percentile Hausdorff; ASSD: average symmetric surface "
                               "distance; NSD at the evaluation tolerance), volumes in mL.</p>")

    def sec_distributions(self) -> str:
        if not self.s.metrics:
            return not_run("No metrics: nothing to plot.")
        out = []
        for m in PLOT_METRICS:
            if any(m in df.columns for df in self.s.metrics.values()):
                png = figures.metric_distribution_png(self.s.metrics, m)
                out.append(figure_html(png, f"distribution of {m}",
                                       f"{esc(METRIC_LABELS.get(m, m))} per organ: violin, box (median, quartiles) "
                                       "and one dot per test patient, arms side by side."))
        return "".join(out)

    def sec_statistics(self) -> str:
        self.ensure_stats()
        st = self.stats
        if st is None or st.empty:
            return not_run("Statistics need metrics of at least two arms (compare did not run).")
        unpaired = "mwu_p_holm" in st.columns and np.isfinite(pd.to_numeric(st["mwu_p_holm"], errors="coerce")).any()
        intro = ("<p>Arms compared pairwise <b>on the same patients</b>. Shapiro–Wilk tests the paired differences; "
                 "normal → paired t-test (t(df)), otherwise Wilcoxon signed-rank (W). p-values are Holm-corrected "
                 "within each metric (all organs, the organ mean and all pairs). Δ = B − A with a seeded percentile "
                 "bootstrap 95 % CI; effect sizes Cohen's d<sub>z</sub> and matched-pairs rank-biserial r. "
                 "Marks: *** p<sub>Holm</sub> &lt; 0.001, ** &lt; 0.01, * &lt; 0.05, ns otherwise. "
                 f'Source: {esc(self.stats_source)}.</p>')
        parts = [intro]
        for metric in [m for m in st["metric"].drop_duplicates()]:
            sub = st[st["metric"] == metric]
            header = ["organ", "B − A", "n", "mean A", "mean B", "Δ [95 % CI]", "test", "statistic", "p",
                      "p Holm", "", "d_z", "r_rb"] + (["MWU U", "MWU p Holm"] if unpaired else [])
            rows, classes = [], []
            for _, r in sub.iterrows():
                diff = float(r["mean_diff"])
                ci = (f"{'+' if diff >= 0 else ''}{format_value(diff, metric)} "
                      f"[{format_value(float(r['ci_low']), metric)}, {format_value(float(r['ci_high']), metric)}]"
                      ) if np.isfinite(diff) else "—"
                # no test ran (e.g. an arm has no HD95 for an organ it missed): "—" and the reason, never "nan"
                mark = "—" if missing(r.get("mark")) else str(r.get("mark"))
                note = "" if missing(r.get("note")) else str(r.get("note"))
                why = esc(note)
                test = {"paired t-test": "t-test", "Wilcoxon signed-rank": "Wilcoxon"}.get(str(r["test"]))
                if test is None:
                    test = f"none: {note}" if note else "none"
                cells = [f'<td class="l">{esc(r["organ"])}</td>', f'<td class="l">{esc(r["arm_b"])} − {esc(r["arm_a"])}</td>',
                         f"<td>{int(r['n'])}</td>", f"<td>{format_value(float(r['mean_a']), metric)}</td>",
                         f"<td>{format_value(float(r['mean_b']), metric)}</td>", f"<td>{esc(ci)}</td>",
                         f'<td class="l" title="{why}">{esc(test)}</td>', f"<td>{esc(format_statistic(r))}</td>",
                         f"<td>{esc(format_p(float(r['p'])))}</td>", f"<td>{esc(format_p(float(r['p_holm'])))}</td>",
                         f'<td class="{"mark" if mark not in ("ns", "—") else "ns"}">{esc(mark)}</td>',
                         f"<td>{signed2(r['effect_dz'])}</td>", f"<td>{signed2(r['effect_rbc'])}</td>"]
                if unpaired:
                    cells += [f"<td>{esc(fmt_g(r['mwu_u']))}</td>", f"<td>{esc(format_p(float(r['mwu_p_holm'])))}</td>"]
                rows.append(cells)
                classes.append("sig" if mark not in ("ns", "—") else "")
            direction = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
            table = table_html(header, rows, row_classes=classes, raw=True, left_cols=2)
            title = f"{esc(METRIC_LABELS.get(metric, metric))} <span class=\"muted small\">({direction})</span>"
            if metric in OPEN_STATS:
                parts.append(f"<h3>{title}</h3>{table}")
            else:
                parts.append(f"<details><summary>{title}</summary>{table}</details>")
        notes = st[(st["test"] == "none") | (pd.to_numeric(st["n_dropped"], errors="coerce") > 0)]
        if len(notes):
            items = "".join(f"<li>{esc(r['metric'])} / {esc(r['organ'])} / {esc(r['arm_b'])} − {esc(r['arm_a'])}: "
                            f"{esc(r['note'])}</li>" for _, r in notes.head(30).iterrows())
            parts.append(f"<details><summary>Notes: {len(notes)} comparison(s) with dropped patients or no test"
                         f"</summary><ul class=\"small\">{items}</ul></details>")
        if unpaired:
            parts.append('<p class="small muted">Mann–Whitney U ignores the pairing of patients; it is shown only to '
                         "reproduce unpaired analyses.</p>")
        parts.append(self.shift_table())
        return "".join(parts)

    def shift_table(self) -> str:
        sh = self.shift
        if sh is None or sh.empty:
            return ""
        rows = []
        for _, r in sh.iterrows():
            rows.append([str(r["organ"]), f"{r['arm_b']} − {r['arm_a']}", signed3(r["d_dice"]),
                         signed3(r["d_precision"]) + mark_p(r.get("p_holm_precision")),
                         signed3(r["d_recall"]) + mark_p(r.get("p_holm_recall")),
                         pct(r.get("vol_err_pct_a")), pct(r.get("vol_err_pct_b")),
                         "— (precision or recall undefined for an arm)" if missing(r.get("pattern"))
                         else str(r["pattern"])])
        return ("<h3>Over- vs under-segmentation</h3><p class=\"small muted\">Mean paired shift B − A. Precision down "
                "with recall up means B's masks grow beyond the organ (over-segmentation); the reverse means they "
                "shrink. Volume error = (V<sub>pred</sub> − V<sub>GT</sub>) / V<sub>GT</sub>.</p>"
                + table_html(["organ", "B − A", "ΔDice", "Δprecision", "Δrecall", "vol. error A", "vol. error B",
                              "pattern"], rows, left_cols=2))
