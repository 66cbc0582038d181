"""The study report: one self-contained HTML file (``thoraxseg report``).

Everything is inline — CSS in a ``<style>`` element, every figure a base64 PNG
``data:`` URI — and the page has no script and no external URL, so it opens
offline in any browser and can be mailed as one file. Sections whose stage did
not run (no realignment, no training logs, no comparison, …) say so instead of
failing. See :func:`build_report`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thoraxseg import __version__
from thoraxseg.data.layout import reference_names_text
from thoraxseg.errors import ThoraxsegError
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.report import figures
from thoraxseg.report.render3d import render_surfaces_png
from thoraxseg.report.study import Canonical, Study, image_geometry, load_canonical, load_study
from thoraxseg.stats.compare import (
    HIGHER_IS_BETTER,
    MEAN,
    METRIC_LABELS,
    format_p,
    format_statistic,
    format_value,
    run_comparison,
)
from thoraxseg.utils.atomic import write_text_atomic
from thoraxseg.utils.progress import make_progress

#: Metrics shown in per-arm tables, in order.
TABLE_METRICS: tuple[str, ...] = ("dice", "precision", "recall", "nsd", "hd95", "assd", "vol_gt_ml", "vol_pred_ml")
#: Metrics with distribution plots and statistics tables shown open.
PLOT_METRICS: tuple[str, ...] = ("dice", "hd95", "assd", "nsd", "precision", "recall")
OPEN_STATS: tuple[str, ...] = ("dice", "hd95")

#: The page's style sheet (package data ``report.css``), inlined into every report.
CSS = (resources.files("thoraxseg.report") / "report.css").read_text(encoding="utf-8")

_SECTIONS: tuple[tuple[str, str], ...] = (
    ("data", "Dataset and check"), ("realign", "Label fix"), ("metrics", "Metrics per arm"),
    ("distributions", "Distributions"), ("statistics", "Statistics"), ("training", "Training"),
    ("cases", "Best and worst cases"), ("surfaces", "3D surfaces"), ("timings", "Run time"),
    ("config", "Configuration"),
)


def esc(x: object) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(x), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def figure_html(png: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{img_tag(png, alt)}{cap}</figure>"


def not_run(text: str) -> str:
    return f'<p class="notrun">{esc(text)}</p>'


def badge(text: str, kind: str = "info") -> str:
    return f'<span class="badge b-{kind}">{esc(text)}</span>'


_NUMERIC = re.compile(r"^[\s+\-−]*([\d.]+|—|nan|<0\.001)([\s±%*,\[\]()+\-−.\deE]*|\s*\(.*\))$")


def _is_numeric(text: str) -> bool:
    """Cells that read as numbers are right-aligned, text left-aligned.

    >>> _is_numeric("0.873 ± 0.021"), _is_numeric("+0.44 [0.41, 0.46]"), _is_numeric("heart label on air")
    (True, True, False)
    """
    return bool(_NUMERIC.match(text.strip())) if text.strip() else True


def table_html(header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Sequence[str] | None = None,
               raw: bool = False, left_cols: int = 1, wrap_cols: Sequence[int] = ()) -> str:
    """A table; cells are escaped unless ``raw`` (then they are trusted HTML built here).

    The first ``left_cols`` columns, and columns whose cells are not numbers, are left-aligned;
    columns in ``wrap_cols`` wrap long text.
    """
    rows = [list(r) for r in rows]
    n_cols = len(header)
    text_col = [i < left_cols or any(not (raw and str(r[i]).startswith("<td")) and not _is_numeric(str(r[i]))
                                     for r in rows if i < len(r)) for i in range(n_cols)]
    head = "".join(f'<th class="l">{esc(h)}</th>' if text_col[i] else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        cells = []
        for i, c in enumerate(row):
            text = c if raw else esc(c)
            if raw and text.startswith("<td"):
                cells.append(text)
            else:
                cls_name = ("l wraptext" if i in wrap_cols else "l") if i < n_cols and text_col[i] else ""
                cells.append(f'<td class="{cls_name}">{text}</td>' if cls_name else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def kv_table(items: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _fmt_json_scalar(v: Any) -> str:
    if isinstance(v, list) and not v:
        return "none"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and all(isinstance(x, int | float) for x in v) and len(v) <= 6:
        return "(" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v) + ")"
    return str(v)


def json_block(obj: Any, max_rows: int = 60, depth: int = 0) -> str:
    """Generic rendering of a JSON document: scalars as a key/value table, lists of records as tables."""
    if isinstance(obj, list):
        if obj and all(isinstance(r, dict) for r in obj):
            cols: list[str] = []
            for r in obj:
                cols += [k for k, v in r.items() if (k not in cols and not isinstance(v, dict | list))
                         or ((isinstance(v, list) and len(v) <= 6 and all(not isinstance(x, list | dict) for x in v))
                         and k not in cols)]
            rows = [[_fmt_json_scalar(r.get(c, "")) for c in cols] for r in obj[:max_rows]]
            more = f'<p class="small muted">… {len(obj) - max_rows} more rows</p>' if len(obj) > max_rows else ""
            return table_html(cols, rows, left_cols=1) + more
        if obj and all(isinstance(r, list) for r in obj):  # a matrix
            return "<pre>" + esc("\n".join("  ".join(f"{x: .5g}" if isinstance(x, float) else str(x) for x in r)
                                           for r in obj)) + "</pre>"
        return esc(", ".join(_fmt_json_scalar(x) for x in obj)) if obj else '<span class="muted">none</span>'
    if isinstance(obj, dict):
        scalars = [(k, v) for k, v in obj.items() if not isinstance(v, dict | list) or
                   (isinstance(v, list) and len(v) <= 6 and all(isinstance(x, int | float | str) for x in v))]
        parts = [kv_table((k, esc(_fmt_json_scalar(v))) for k, v in scalars)] if scalars else []
        for k, v in obj.items():
            if (k, v) in scalars:
                continue
            if depth >= 2:
                parts.append(f"<p><b>{esc(k)}</b>: …</p>")
                continue
            parts.append(f"<h3>{esc(k)}</h3>{json_block(v, max_rows, depth + 1)}")
        return "".join(parts)
    return esc(_fmt_json_scalar(obj))


def _mean_sd(values: np.ndarray, metric: str) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "—"
    if v.size == 1:
        return format_value(float(v[0]), metric)
    return f"{format_value(float(v.mean()), metric)} ± {format_value(float(v.std(ddof=1)), metric)}"


def _organ_values(df: pd.DataFrame, organ: str, metric: str) -> np.ndarray:
    if metric not in df.columns:
        return np.array([])
    if organ == MEAN:
        wide = df.pivot(index="patient", columns="organ", values=metric)
        return wide.mean(axis=1, skipna=True).to_numpy(dtype=np.float64)
    return df.loc[df["organ"] == organ, metric].to_numpy(dtype=np.float64)


def _missed_surface_organs(df: pd.DataFrame) -> list[str]:
    """Organs with a GT but no HD95 in some patient (the arm predicted none of it there).

    >>> df = pd.DataFrame({"patient": ["P1", "P1"], "organ": ["heart", "trachea"],
    ...                    "hd95": [5.0, np.nan], "vol_gt_ml": [500.0, 20.0]})
    >>> _missed_surface_organs(df)
    ['trachea']
    """
    if "hd95" not in df.columns:
        return []
    has_gt = df["vol_gt_ml"].fillna(0) > 0 if "vol_gt_ml" in df.columns else pd.Series(True, index=df.index)
    gone = df[has_gt & df["hd95"].isna()]
    return [o for o in ORGAN_NAMES if o in set(gone["organ"])]


def _per_patient_mean_dice(df: pd.DataFrame) -> pd.Series:
    return df.pivot(index="patient", columns="organ", values="dice").mean(axis=1, skipna=True).dropna()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """One level of nesting flattened: ``{"rotation": {"angle_deg": 20}} -> {"rotation.angle_deg": 20}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not prefix:
            out.update(_flatten(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _find_key(d: dict, patterns: Sequence[str]) -> tuple[str, Any] | None:
    """First (key, value) of the flattened ``d`` whose key matches one of ``patterns`` (in order)."""
    flat = _flatten(d)
    for pat in patterns:
        for k, v in flat.items():
            if re.search(pat, k, flags=re.IGNORECASE) and not isinstance(v, dict):
                return k, v
    return None


#: How the report finds the headline fields of ``realign/fix.json`` (flattened keys, first match wins).
FIX_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("method", (r"^method$",)),
    ("rotation (°)", (r"^rotation\.angle_deg$", r"^rotation_deg$", r"rotation.*deg", r"angle")),
    ("in-plane rotation (°)", (r"^rotation\.inplane_deg$",)),
    ("rotation axis", (r"^rotation\.axis_world$", r"^axis$", r"axis")),
    ("translation (voxels)", (r"^translation_vox", r"translation.*vox", r"shift.*vox")),
    ("translation (mm)", (r"^translation_mm$", r"translation.*mm", r"shift.*mm")),
    ("IoU before", (r"^iou_before$", r"iou.*before", r"before.*iou")),
    ("IoU after", (r"^iou_after$", r"iou.*after", r"after.*iou")),
    ("runtime (s)", (r"^runtime_s$", r"runtime")),
    ("label", (r"^label_name$", r"^label$")),
)


class _Report:
    """Builds the sections of one report."""

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

    # ------------------------------------------------------------------ header and overview
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

    def nav(self) -> str:
        links = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in (("overview", "Overview"), *_SECTIONS))
        return f'<nav class="toc"><div class="wrap">{links}</div></nav>'

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
            facts.append(("spacing (mm)", f"in-plane {_span(sp[:, 0])}, slices {_span(sp[:, 2])}"))
        facts.append(("labels", "1 esophagus · 2 heart · 3 trachea · 4 aorta"))
        facts.append(("check", self.check_badge()))
        if isinstance(s.fix, dict):
            rot = _find_key(s.fix, dict(FIX_FIELDS)["rotation (°)"])
            before = _find_key(s.fix, dict(FIX_FIELDS)["IoU before"])
            after = _find_key(s.fix, dict(FIX_FIELDS)["IoU after"])
            text = []
            if rot:
                text.append(f"rotation {_fmt_json_scalar(rot[1])}°")
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
        means = {arm: [float(np.nanmean(v)) if np.isfinite(v := _organ_values(df, o, m)).any() else np.nan
                       for o, m in cols] for arm, df in metrics.items()}
        # A missed organ has no surface, hence no HD95/ASSD: the mean over the remaining organs is not
        # comparable with an arm that found every organ, so it is marked † and never the column's best.
        missed = {arm: _missed_surface_organs(df) for arm, df in metrics.items()}
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
                cells.append(f"<td{cls}>{esc(_mean_sd(_organ_values(df, o, m), m))}{mark}</td>")
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
        scores = {a: float(np.nanmean(_per_patient_mean_dice(df))) for a, df in metrics.items()
                  if "dice" in df.columns and len(_per_patient_mean_dice(df))}
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
                mark = "no test" if _missing(r.get("mark")) else str(r.get("mark"))
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
            vol = (f", volume error {_pct(r['vol_err_pct_a'])} → {_pct(r['vol_err_pct_b'])}"
                   if np.isfinite(float(r["vol_err_pct_b"])) else "")
            items.append(f"<li><b>{esc(r['organ'])}</b>, {esc(r['arm_b'])} vs {esc(r['arm_a'])}: "
                         f"{esc(str(r['pattern']).split(' (')[0].replace(str(r['arm_b']) + ' ', ''))} "
                         f"(precision {_signed3(r['d_precision'])}, recall {_signed3(r['d_recall'])}, "
                         f"Dice {_signed3(r['d_dice'])}{esc(vol)})</li>")
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

    # ------------------------------------------------------------------ sections
    def sec_data(self) -> str:
        c = self.s.check
        if not isinstance(c, dict):
            return not_run("The dataset check (check.json) was not run for this study.")
        parts = [f"<p>Result of <code>thoraxseg check</code> on <code>data/raw</code>: {check_badge(c)}</p>",
                 check_html(c)]
        after = self.s.check_fixed
        if isinstance(after, dict):
            parts.append(f"<h3>After the label fix (check_fixed.json): {check_badge(after)}</h3>"
                         + check_html(after, only_flagged=True))
        return "".join(parts)

    def sec_realign(self) -> str:
        fix = self.s.fix
        if isinstance(self.s.qa, dict):
            return self.sec_qa()
        if not isinstance(fix, dict):
            return not_run("Label realignment was not run (no reference pair with a moved label, or "
                           "realign.enabled: false).")
        items = []
        for label, pats in FIX_FIELDS:
            hit = _find_key(fix, pats)
            if hit:
                items.append((label, esc(_fmt_json_scalar(hit[1]))))
        shown = kv_table(items) if items else ""
        details = f"<details><summary>All fields of realign/fix.json</summary>{json_block(fix)}</details>"
        fig = self.realign_figure()
        apply_html = ""
        if self.s.apply is not None:
            rows = self.s.apply.get("patients", self.s.apply) if isinstance(self.s.apply, dict) else self.s.apply
            apply_html = f"<h3>Applied to the dataset (realign/apply.json)</h3>{json_block(rows)}"
        else:
            apply_html = not_run("realign/apply.json is missing (the correction was not applied to the dataset).")
        return (f'<div class="grid2"><div><h3>Estimated transform (realign/fix.json)</h3>{shown}{details}'
                f"</div><div>{fig}</div></div>{apply_html}")

    def sec_qa(self) -> str:
        """Label QA against a trained model's predictions (``realign/qa/qa.json``, ``realign.method: qa``)."""
        qa = self.s.qa
        summary = qa.get("summary") or {}
        ref = qa.get("reference") or {}
        counts = ", ".join(f"{n} {v}" for v, n in (summary.get("verdicts") or {}).items() if n)
        intro = (f"<p>Every label was judged against the prediction of the trained run "
                 f"<code>{esc(ref.get('run', ref.get('kind', '?')))}</code> (no clean label needed): "
                 f"{esc(summary.get('patients', '?'))} patient(s), {esc(counts or 'no organs')}. Flagged: "
                 f"{esc(', '.join(summary.get('flagged_patients') or []) or 'none')}; fixed (rigid fit accepted by "
                 f"the gate): {esc(', '.join(summary.get('fixed_patients') or []) or 'none')}.</p>")
        header = ["patient", "organ", "verdict", "Dice", "Dice after fit", "centroid Δ mm", "volume ratio",
                  "HD95 mm", "on air", "fit rotation °", "fit move mm", "note"]
        rows, classes = [], []

        def f(v: Any, fmt: str = ".3f") -> str:
            return "—" if v is None else format(v, fmt)

        for p in qa.get("patients") or []:
            for r in p.get("organs") or []:
                if r.get("verdict") == "absent":
                    continue
                verdict = str(r.get("verdict")) + (" → fixed" if r.get("fix_accepted") else "")
                rows.append([p.get("patient", "?"), r.get("organ", "?"), verdict, f(r.get("dice")),
                             f(r.get("dice_after")), f(r.get("centroid_offset_mm"), ".1f"),
                             f(r.get("volume_ratio"), ".2f"), f(r.get("hd95_mm"), ".1f"),
                             "—" if r.get("air_fraction") is None else f"{r['air_fraction']:.1%}",
                             f(r.get("fit_rotation_deg"), ".1f"), f(r.get("fit_move_mm"), ".1f"), r.get("note") or ""])
                classes.append("" if r.get("verdict") == "consistent" else "flag")
        table = table_html(header, rows, classes, left_cols=3, wrap_cols=(11,))
        figs = "".join(figure_html(png, f"qa overlay {name}", f"{esc(name)}: label before (red), after the fix "
                                   "(yellow) and the reference prediction (green) (realign/qa/overlays).")
                       for name, png in self.s.qa_overlays.items())
        figs = f'<div class="grid2">{figs}</div>' if figs else not_run("No organ was found misplaced: no overlays.")
        gate = f"<details><summary>Gate thresholds (qa.json)</summary>{json_block(qa.get('gate') or {})}</details>"
        return f"<h3>Label QA (realign/qa/qa.csv)</h3>{intro}{table}{gate}<h3>Before/after</h3>{figs}"

    def realign_figure(self) -> str:
        s = self.s
        if s.overlay_png:
            return figure_html(s.overlay_png, "label fix before/after",
                               "Before/after overlay of the reference patient (realign/overlay.png).")
        raw_label = s.fix.get("label", 2) if isinstance(s.fix, dict) else 2
        label = int(raw_label) if str(raw_label).isdigit() else 2
        ref = next((c for c in s.raw_cases() if c.clean_label_path is not None and c.label_path is not None), None)
        if ref is None:
            return not_run(f"No reference pair (GT.nii.gz + {reference_names_text()}) in data/raw: "
                           "no before/after overlay.")
        fixed = next((c for c in s.fixed_cases() if c.patient_id == ref.patient_id and c.label_path), None)
        if fixed is None:
            return not_run(f"data/fixed has no GT for {ref.patient_id}: no before/after overlay.")
        ct = self.volume("ct", ref.image_path, False)
        moved = self.volume("gt", ref.label_path, True).array  # type: ignore[arg-type]
        clean = self.volume("gt", ref.clean_label_path, True).array  # type: ignore[arg-type]
        fixed_arr = self.volume("gt", fixed.label_path, True).array  # type: ignore[arg-type]
        png = figures.realign_overlay_png(ct, moved, fixed_arr, clean, label, ref.patient_id)
        return figure_html(png, "label fix before/after",
                           f"{esc(ref.patient_id)}: clean reference label (solid) against the moved label from "
                           f"data/raw (left) and the corrected label from data/fixed (right); IoU in 3D.")

    def sec_metrics(self) -> str:
        if not self.s.metrics:
            return not_run("No arm has a metrics.csv (evaluation did not run).")
        out = []
        for arm, df in self.s.metrics.items():
            mets = [m for m in TABLE_METRICS if m in df.columns]
            rows = []
            for organ in [*[o for o in ORGAN_NAMES if o in set(df["organ"])], MEAN]:
                n = int(np.isfinite(_organ_values(df, organ, "dice")).sum()) if "dice" in mets else len(df)
                rows.append([organ if organ != MEAN else "mean of organs", str(n),
                             *[_mean_sd(_organ_values(df, organ, m), m) if organ != MEAN or not m.startswith("vol")
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
                mark = "—" if _missing(r.get("mark")) else str(r.get("mark"))
                note = "" if _missing(r.get("note")) else str(r.get("note"))
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
                         f"<td>{_signed2(r['effect_dz'])}</td>", f"<td>{_signed2(r['effect_rbc'])}</td>"]
                if unpaired:
                    cells += [f"<td>{esc(_g(r['mwu_u']))}</td>", f"<td>{esc(format_p(float(r['mwu_p_holm'])))}</td>"]
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
            rows.append([str(r["organ"]), f"{r['arm_b']} − {r['arm_a']}", _signed3(r["d_dice"]),
                         _signed3(r["d_precision"]) + _mark_p(r.get("p_holm_precision")),
                         _signed3(r["d_recall"]) + _mark_p(r.get("p_holm_recall")),
                         _pct(r.get("vol_err_pct_a")), _pct(r.get("vol_err_pct_b")),
                         "— (precision or recall undefined for an arm)" if _missing(r.get("pattern"))
                         else str(r["pattern"])])
        return ("<h3>Over- vs under-segmentation</h3><p class=\"small muted\">Mean paired shift B − A. Precision down "
                "with recall up means B's masks grow beyond the organ (over-segmentation); the reverse means they "
                "shrink. Volume error = (V<sub>pred</sub> − V<sub>GT</sub>) / V<sub>GT</sub>.</p>"
                + table_html(["organ", "B − A", "ΔDice", "Δprecision", "Δrecall", "vol. error A", "vol. error B",
                              "pattern"], rows, left_cols=2))

    def sec_training(self) -> str:
        logs = self.s.logs
        if not logs:
            return not_run("No training logs (arms/<name>/run/log.csv) in this study.")
        missing = [a for a in self.s.arms if a not in logs]
        rows = []
        for arm, log in logs.items():
            vd = pd.to_numeric(log.get("val_dice_mean", pd.Series(dtype=float)), errors="coerce")
            secs = pd.to_numeric(log.get("seconds", pd.Series(dtype=float)), errors="coerce")
            tl = pd.to_numeric(log.get("train_loss", pd.Series(dtype=float)), errors="coerce").dropna()
            best = (f"{vd.max():.3f} (epoch {log['epoch'].iloc[int(vd.idxmax())]})"
                    if vd.notna().any() else "—")
            rows.append([arm, _network_input(self.s.run_configs.get(arm)), str(len(log)), best,
                         f"{tl.iloc[-1]:.4f}" if len(tl) else "—",
                         _duration(float(secs.sum())) if secs.notna().any() else "—"])
        note = not_run(f"No log.csv for: {', '.join(missing)}.") if missing else ""
        png = figures.training_curves_png(logs)
        return (table_html(["arm", "network input", "epochs", "best val. mean Dice", "final train loss",
                            "training time"], rows, left_cols=2)
                + '<p class="small muted">2D arms: every axial slice is resampled to one pixel size in mm, so an '
                "organ has the same size in pixels on every scan (training uses crops of the resampled slices, "
                "prediction the whole slice); “square-resized” runs (made before thoraxseg 0.2) pad each slice "
                "to a square and resize it, so their pixel size depends on each scan's field of view. nnU-Net "
                "resamples to its plan's 3D target spacing.</p>"
                + note + figure_html(png, "training curves", "Per arm: training (solid) and validation (dashed) loss; "
                                     "validation Dice per organ and their mean (black) by epoch."))

    def sec_cases(self) -> str:
        if not self.s.metrics:
            return not_run("No metrics: best and worst cases cannot be chosen.")
        if not self.test_cases:
            return not_run("No test images with GT (data/testset) in this study.")
        out = []
        for arm, df in self.s.metrics.items():
            if "dice" not in df.columns:
                continue
            per = _per_patient_mean_dice(df)
            per = per[[p in self.test_cases and self.s.prediction_path(arm, p) is not None for p in per.index]]
            if per.empty:
                out.append(f"<h3>{esc(arm)}</h3>" + not_run(f"no prediction of {arm} matches a test case"))
                continue
            picks = [("best", per.idxmax())] + ([("worst", per.idxmin())] if len(per) > 1 else [])
            cases = []
            for kind, pid in picks:
                case = self.test_cases[pid]
                ct = self.volume("ct", case.image_path, False)
                gt = self.volume("gt", case.label_path, True)  # type: ignore[arg-type]
                pred = self.volume(f"pred:{arm}", self.s.prediction_path(arm, pid), True)  # type: ignore[arg-type]
                if pred.array.shape != gt.array.shape:
                    raise ThoraxsegError(f"{self.s.prediction_path(arm, pid)}: prediction shape {pred.array.shape} "
                                         f"differs from GT {gt.array.shape}")
                cases.append((f"{kind}: {pid} (mean Dice {per[pid]:.3f})", ct, gt.array, pred.array))
            png = figures.case_overlay_png(cases)
            out.append(f"<h3>{esc(arm)}</h3>" + figure_html(
                png, f"best and worst case of {arm}",
                "Axial and coronal slices (radiological view: patient right on the left), mediastinal window; "
                "ground truth solid, prediction dashed."))
        return "".join(out)

    def sec_surfaces(self) -> str:
        arms = [a for a in self.s.metrics if "dice" in self.s.metrics[a].columns]
        if not arms or not self.test_cases:
            return not_run("Needs test cases with predictions and metrics.")
        common = [p for p in self.test_cases if all(self.s.prediction_path(a, p) for a in arms)]
        if not common:
            return not_run("No test patient has a prediction from every arm.")
        scores = pd.DataFrame({a: _per_patient_mean_dice(self.s.metrics[a]) for a in arms}).reindex(common)
        avg = scores.mean(axis=1, skipna=True).dropna()
        if avg.empty:
            pid = common[0]
        else:
            order = avg.sort_values()
            pid = str(order.index[(len(order) - 1) // 2])
        case = self.test_cases[pid]
        gt = self.volume("gt", case.label_path, True)  # type: ignore[arg-type]
        panels = [("ground truth", gt.array)]
        for a in arms:
            pred = self.volume(f"pred:{a}", self.s.prediction_path(a, pid), True)  # type: ignore[arg-type]
            d = scores.loc[pid, a]
            panels.append((f"{a} (Dice {d:.3f})" if np.isfinite(d) else a, pred.array))
        png = render_surfaces_png(panels, gt.spacing)
        return figure_html(png, f"3D surfaces of {pid}",
                           f"{esc(pid)} (the median case by mean Dice across arms), seen from the front and the "
                           "patient's left (anterior-left oblique): marching-cubes surfaces in true proportions (mm), "
                           "subsampled to ≤ 72 voxels per axis.")

    def sec_timings(self) -> str:
        t = self.s.timings
        if not t:
            return not_run("No stage timings (.stages/*.json) in this study folder.")
        total = sum(t.values())
        rows = [[esc(stage), _duration(secs), f"{100 * secs / total:.1f} %" if total > 0 else "—"]
                for stage, secs in t.items()]
        rows.append(["<b>total</b>", f"<b>{_duration(total)}</b>", "100 %" if total > 0 else "—"])
        note = "" if "report" in t else " Building this page (the report stage) is not included."
        return (f"<p>Wall time of each finished stage on the machine that ran it, in the order they finished; "
                f"a resumed study counts each stage's last complete run.{note}</p>"
                + table_html(["stage", "time", "share of total"], rows, raw=True))

    def sec_config(self) -> str:
        if not self.s.config_text:
            return not_run("study.yaml not found.")
        return f"<details open><summary>study.yaml</summary><pre>{esc(self.s.config_text)}</pre></details>"

    # ------------------------------------------------------------------ page
    def render(self) -> str:
        builders: list[tuple[str, str, Callable[[], str]]] = [
            ("data", "Dataset and check", self.sec_data), ("realign", "Label fix (realignment)", self.sec_realign),
            ("metrics", "Metrics per arm (test set)", self.sec_metrics),
            ("distributions", "Distributions per organ", self.sec_distributions),
            ("statistics", "Statistical comparison", self.sec_statistics),
            ("training", "Training curves", self.sec_training),
            ("cases", "Best and worst cases per arm", self.sec_cases),
            ("surfaces", "3D surface renders", self.sec_surfaces), ("timings", "Run time per stage", self.sec_timings),
            ("config", "Study configuration", self.sec_config),
        ]
        body = []
        with make_progress() as progress:
            task = progress.add_task("building report", total=len(builders) + 1)
            body.append(self.overview())
            progress.advance(task)
            for key, title, fn in builders:
                progress.update(task, description=f"report: {title}")
                try:
                    content = fn()
                except ThoraxsegError as exc:
                    content = f'<p class="problem">This section could not be built: {esc(exc)}</p>'
                body.append(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>')
                progress.advance(task)
        footer = (f"<footer>thoraxseg {esc(__version__)} · self-contained report: every figure is embedded, "
                  f"no network access needed.</footer>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>thoraxseg report — {esc(self.s.root.name)}</title><style>{CSS}</style></head><body>"
                f"{self.header()}{self.nav()}<main><div class=\"wrap\">{''.join(body)}</div></main>{footer}"
                "</body></html>\n")


def check_badge(c: Any) -> str:
    """Badge for a ``CheckReport.to_dict()``: passed / passed with warnings / failed."""
    if not isinstance(c, dict):
        return '<span class="muted">not run</span>'
    cases = c.get("cases") if isinstance(c.get("cases"), list) else []
    n_warn = c.get("n_warnings", sum(len(x.get("warnings") or []) for x in cases if isinstance(x, dict)))
    n_err = c.get("n_errors", len(c["errors"]) if isinstance(c.get("errors"), list) else 0)
    if c.get("ok") is False or n_err:
        return badge(f"failed: {n_err} error(s)", "bad")
    if n_warn:
        return badge(f"passed with {n_warn} warning(s)", "warn")
    return badge("passed", "ok")


def check_html(c: dict, only_flagged: bool = False, max_rows: int = 60) -> str:
    """The check result: dataset-level errors, then one row per case (problems as text).

    Knows the layout of :meth:`thoraxseg.data.check.CheckReport.to_dict` (``cases`` with
    ``patient_id``, ``shape``, ``spacing_mm``, ``status``, ``errors``, ``warnings``); anything
    else falls back to a generic rendering.
    """
    cases = c.get("cases")
    if not (isinstance(cases, list) and cases and all(isinstance(x, dict) for x in cases)):
        return json_block({k: v for k, v in c.items() if k != "ok"})
    parts = []
    if c.get("errors"):
        parts.append('<p class="problem">' + "<br>".join(esc(e) for e in c["errors"]) + "</p>")
    rows, classes = [], []
    for case in cases:
        problems = [*(case.get("errors") or []), *(case.get("warnings") or [])]
        if only_flagged and not problems:
            continue
        status = str(case.get("status", "error" if case.get("errors") else "warning" if problems else "ok"))
        rows.append([str(case.get("patient_id", case.get("patient", "?"))),
                     "×".join(str(v) for v in case.get("shape") or []) or "—",
                     " × ".join(f"{float(v):.2f}" for v in case.get("spacing_mm") or []) or "—",
                     status, "; ".join(str(p) for p in problems) or "—"])
        classes.append("")
    if not rows:
        parts.append('<p class="small muted">No case is flagged.</p>')
        return "".join(parts)
    shown = rows[:max_rows]
    parts.append(table_html(["patient", "grid (x×y×z)", "spacing (mm)", "status", "problems"], shown, left_cols=5,
                            wrap_cols=(4,)))
    if len(rows) > max_rows:
        parts.append(f'<p class="small muted">… {len(rows) - max_rows} more cases</p>')
    return "".join(parts)


def _signed2(x: Any) -> str:
    v = float(x)
    return f"{v:+.2f}" if np.isfinite(v) else "—"


def _signed3(x: Any) -> str:
    v = float(x)
    return f"{v:+.3f}" if np.isfinite(v) else "—"


def _g(x: Any) -> str:
    v = float(x)
    return f"{v:g}" if np.isfinite(v) else "—"


def _pct(x: Any) -> str:
    v = float(x) if x is not None else float("nan")
    return f"{v:+.1f} %" if np.isfinite(v) else "—"


def _missing(x: Any) -> bool:
    """A cell with no value: None, NaN, empty, or the ``n/a`` that pandas reads back as NaN.

    >>> [_missing(v) for v in (None, float("nan"), "", "n/a", "ns", 0.0)]
    [True, True, True, True, False, False]
    """
    if x is None:
        return True
    if isinstance(x, float):
        return not np.isfinite(x)
    return str(x).strip().lower() in ("", "nan", "n/a")


def _mark_p(p: Any) -> str:
    v = float(p) if p is not None else float("nan")
    if not np.isfinite(v) or v >= 0.05:
        return ""
    return " ***" if v < 0.001 else " **" if v < 0.01 else " *"


def _span(values: np.ndarray) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.2f}" if abs(hi - lo) < 5e-3 else f"{lo:.2f}–{hi:.2f}"


def _network_input(cfg: dict | None) -> str:
    """What an arm's network sees, from its resolved ``run/config.yaml`` (``—`` when unknown)."""
    if not cfg:
        return "—"
    if str(cfg.get("model", "")).startswith("nnunet"):
        return f"3D patches, nnU-Net {cfg.get('plans', 'default')} plan"
    if "image_size" not in cfg:
        return "—"
    from thoraxseg.errors import InputError
    from thoraxseg.inference.predict2d import run_spacing_mm
    from thoraxseg.training.data2d import grid_text

    try:
        return grid_text(int(cfg["image_size"]), run_spacing_mm(cfg))
    except (InputError, TypeError, ValueError):
        return "—"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_report(study: str | Path | Study) -> str:
    """The report's HTML text for a study folder (or a loaded :class:`Study`)."""
    st = study if isinstance(study, Study) else load_study(study)
    return _Report(st).render()


def build_report(study: str | Path, out: str | Path | None = None) -> Path:
    """Build the self-contained HTML report of a study folder and write it atomically.

    Parameters
    ----------
    study
        The study folder (layout of ``thoraxseg study``; missing stages are reported as "not run").
    out
        Output HTML file; default ``STUDY/report.html``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        If ``study`` is not a folder.
    """
    st = load_study(study)
    target = Path(out) if out is not None else st.layout.report
    write_text_atomic(target, render_report(st))
    return target
