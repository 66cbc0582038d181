"""The page header and the overview (dataset facts, headline results, what to look at).
"""


import datetime as _dt

import numpy as np

from thoraxseg import __version__
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.report.context import ReportContext
from thoraxseg.report.markup import (
    FIX_FIELDS,
    badge,
    check_badge,
    esc,
    find_key,
    fmt_json_scalar,
    kv_table,
    mean_sd,
    missed_surface_organs,
    missing,
    not_run,
    organ_values,
    pct,
    per_patient_mean_dice,
    signed3,
    span,
)
from thoraxseg.report.study import image_geometry
from thoraxseg.stats.compare import (
    HIGHER_IS_BETTER,
    MEAN,
    format_p,
)


class OverviewSections(ReportContext):
    """Header, dataset facts and the headline table."""

    def header(self) -> str:
        s = self.s
        title = "Thoracic organs-at-risk segmentation — study report"
        now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        badges = []
        if s.synthetic:
            badges.append(badge("synthetic phantom data — not clinical results", "warn"))
        badges.append(badge(f"{len(s.arms)} arm(s): {', '.join(s.arms) or 'none'}"))
        n_test = len(self.test_cases)
        if n_test:
            badges.append(badge(f"{n_test} test patients"))
        return (f'<header class="top"><div class="wrap"><h1>{esc(title)}</h1>'
                f'<div class="sub">study <code>{esc(s.root.resolve())}</code> · generated {esc(now)} · '
                f"thoraxseg {esc(__version__)}</div><div class=\"badges\">{''.join(badges)}</div></div></header>")


    def dataset_facts(self) -> list[tuple[str, str]]:
        s = self.s
        facts: list[tuple[str, str]] = []
        raw = s.raw_cases()
        if s.synthetic:
            ph = s.phantom if isinstance(s.phantom, dict) else {}
            extra = ", ".join(f"{k} {ph[k]}" for k in ("size", "seed") if k in ph)
            facts.append(("source", "built-in synthetic phantom cohort" + (f" ({esc(extra)})" if extra else "")))
        facts.append(("patients", str(len(raw)) if raw else "—"))
        if isinstance(s.split, dict):
            tr, te = s.split.get("train", []), s.split.get("test", [])
            facts.append(("split", f"{len(tr)} train / {len(te)} test (patient level, seed {esc(s.split.get('seed', '—'))})"))
        geoms = [g for g in (image_geometry(c.image_path) for c in raw[:60]) if g]
        if geoms:
            shapes = sorted({"×".join(map(str, g[0])) for g in geoms})
            sp = np.array([g[1] for g in geoms])
            facts.append(("grid (x×y×z)", esc(", ".join(shapes[:3]) + (" …" if len(shapes) > 3 else ""))))
            facts.append(("spacing (mm)", f"in-plane {span(sp[:, 0])}, slices {span(sp[:, 2])}"))
        facts.append(("labels", "1 esophagus · 2 heart · 3 trachea · 4 aorta"))
        facts.append(("check", self.check_badge()))
        if isinstance(s.fix, dict):
            rot = find_key(s.fix, dict(FIX_FIELDS)["rotation (°)"])
            before = find_key(s.fix, dict(FIX_FIELDS)["IoU before"])
            after = find_key(s.fix, dict(FIX_FIELDS)["IoU after"])
            text = []
            if rot:
                text.append(f"rotation {fmt_json_scalar(rot[1])}°")
            if before and after and all(isinstance(x[1], int | float) for x in (before, after)):
                text.append(f"IoU {before[1]:.3f} → {after[1]:.3f}")
            facts.append(("label fix", esc(", ".join(text) or "applied")))
        else:
            facts.append(("label fix", '<span class="muted">not run</span>'))
        return facts

    def check_badge(self) -> str:
        text = check_badge(self.s.check)
        if isinstance(self.s.check_fixed, dict):
            text += f' <span class="small muted">after fix:</span> {check_badge(self.s.check_fixed)}'
        return text

    def headline_table(self) -> str:
        metrics = self.s.metrics
        if not metrics:
            return not_run("No arm has a metrics.csv yet (evaluation did not run).")
        cols = [(o, "dice") for o in ORGAN_NAMES] + [(MEAN, "dice"), (MEAN, "hd95"), (MEAN, "assd")]
        means = {arm: [float(np.nanmean(v)) if np.isfinite(v := organ_values(df, o, m)).any() else np.nan
                       for o, m in cols] for arm, df in metrics.items()}
        # A missed organ has no surface, hence no HD95/ASSD: the mean over the remaining organs is not
        # comparable with an arm that found every organ, so it is marked † and never the column's best.
        missed = {arm: missed_surface_organs(df) for arm, df in metrics.items()}
        best = []
        for j, (o, m) in enumerate(cols):
            partial = o == MEAN and m in ("hd95", "assd")
            vals = np.array([np.nan if partial and missed[a] else means[a][j] for a in metrics])
            best.append(-1 if not np.isfinite(vals).any() else
                        int(np.nanargmax(vals) if HIGHER_IS_BETTER[m] else np.nanargmin(vals)))
        rows = []
        for i, (arm, df) in enumerate(metrics.items()):
            cells = [f'<td class="l"><b>{esc(arm)}</b></td>']
            for j, (o, m) in enumerate(cols):
                cls = ' class="best"' if best[j] == i and len(metrics) > 1 else ""
                mark = " †" if o == MEAN and m in ("hd95", "assd") and missed[arm] else ""
                cells.append(f"<td{cls}>{esc(mean_sd(organ_values(df, o, m), m))}{mark}</td>")
            rows.append(cells)
        head = ('<thead><tr class="group"><th></th><th colspan="5">Dice</th><th colspan="2">mean of organs (mm)</th>'
                '</tr><tr><th class="l">arm</th>' + "".join(f"<th>{esc(o)}</th>" for o in ORGAN_NAMES)
                + "<th>mean</th><th>HD95</th><th>ASSD</th></tr></thead>")
        body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
        table = f'<div class="tablewrap"><table>{head}<tbody>{body}</tbody></table></div>'
        note = "mean ± sd over test patients; best arm per column in green."
        notes = [f"{esc(a)}: {esc(', '.join(o))}" for a, o in missed.items() if o]
        if notes:
            note += (" † mean over the organs the arm found: a missed organ has no surface distance ("
                     + "; ".join(notes) + " missed in at least one patient), so these means are not compared.")
        return table + f'<p class="small muted">{note}</p>' + self.headline_sentence()

    def headline_sentence(self) -> str:
        self.ensure_stats()
        metrics = self.s.metrics
        scores = {a: float(np.nanmean(per_patient_mean_dice(df))) for a, df in metrics.items()
                  if "dice" in df.columns and len(per_patient_mean_dice(df))}
        if not scores:
            return ""
        best = max(scores, key=lambda a: scores[a])
        lead = f"<b>{esc(best)}</b> has the highest mean Dice over organs ({scores[best]:.3f})."
        versus: list[str] = []
        st = self.stats
        if st is not None and len(st):
            sel = st[(st["metric"] == "dice") & (st["organ"] == MEAN)
                     & ((st["arm_a"] == best) | (st["arm_b"] == best))]
            for _, r in sel.iterrows():
                sign = 1 if r["arm_b"] == best else -1
                other = r["arm_a"] if sign == 1 else r["arm_b"]
                d, lo, hi = (sign * float(r["mean_diff"]), sign * float(r["ci_low"]), sign * float(r["ci_high"]))
                lo, hi = min(lo, hi), max(lo, hi)
                mark = "no test" if missing(r.get("mark")) else str(r.get("mark"))
                versus.append(f"vs {esc(other)} Δ {d:+.3f} [95 % CI {lo:.3f}, {hi:.3f}], {esc(r['test'])}, "
                              f"Holm p = {esc(format_p(float(r['p_holm'])))} ({esc(mark)})")
        parts = [lead] + ([f"Mean Dice difference {'; '.join(versus)}."] if versus else [])
        return f'<p class="headline">{" ".join(parts)}</p>' + self.shift_findings()

    def shift_findings(self, limit: int = 3) -> str:
        """Bullet list of over-/under-segmentation shifts (the seed's "Dice up, precision down" finding)."""
        sh = self.shift
        if sh is None or sh.empty:
            return ""
        hits = sh[sh["organ"].ne(MEAN) & sh["pattern"].astype(str).str.contains("segmentation")].copy()
        if hits.empty:
            return ""
        hits["size"] = hits["d_precision"].abs() + hits["d_recall"].abs()
        items = []
        for _, r in hits.sort_values("size", ascending=False).head(limit).iterrows():
            vol = (f", volume error {pct(r['vol_err_pct_a'])} → {pct(r['vol_err_pct_b'])}"
                   if np.isfinite(float(r["vol_err_pct_b"])) else "")
            items.append(f"<li><b>{esc(r['organ'])}</b>, {esc(r['arm_b'])} vs {esc(r['arm_a'])}: "
                         f"{esc(str(r['pattern']).split(' (')[0].replace(str(r['arm_b']) + ' ', ''))} "
                         f"(precision {signed3(r['d_precision'])}, recall {signed3(r['d_recall'])}, "
                         f"Dice {signed3(r['d_dice'])}{esc(vol)})</li>")
        return ('<p class="small" style="margin-bottom:2px"><b>Over-/under-segmentation shifts</b> '
                '(largest first; details under Statistics):</p><ul class="small" style="margin-top:2px">'
                + "".join(items) + "</ul>")

    def overview(self) -> str:
        facts = kv_table(self.dataset_facts())
        problems = ""
        if self.s.problems:
            problems = '<p class="problem">Some study files could not be read: ' + "; ".join(
                esc(p) for p in self.s.problems) + "</p>"
        return (f'<section id="overview"><h2>Overview</h2>{problems}<div class="overview">'
                f'<div class="card"><h3>Dataset</h3>{facts}</div>'
                f'<div class="card"><h3>Headline results (test set)</h3>{self.headline_table()}</div>'
                f"</div></section>")
