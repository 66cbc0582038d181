"""HTML building blocks of the report: escaping, figures, tables, badges and number formats.

Small pure functions (text in, HTML text out) shared by every section module.
"""


import base64
import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.stats.compare import (
    MEAN,
    format_value,
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


def is_numeric(text: str) -> bool:
    """Cells that read as numbers are right-aligned, text left-aligned.

    >>> is_numeric("0.873 ± 0.021"), is_numeric("+0.44 [0.41, 0.46]"), is_numeric("heart label on air")
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
    text_col = [i < left_cols or any(not (raw and str(r[i]).startswith("<td")) and not is_numeric(str(r[i]))
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


def fmt_json_scalar(v: Any) -> str:
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
            rows = [[fmt_json_scalar(r.get(c, "")) for c in cols] for r in obj[:max_rows]]
            more = f'<p class="small muted">… {len(obj) - max_rows} more rows</p>' if len(obj) > max_rows else ""
            return table_html(cols, rows, left_cols=1) + more
        if obj and all(isinstance(r, list) for r in obj):  # a matrix
            return "<pre>" + esc("\n".join("  ".join(f"{x: .5g}" if isinstance(x, float) else str(x) for x in r)
                                           for r in obj)) + "</pre>"
        return esc(", ".join(fmt_json_scalar(x) for x in obj)) if obj else '<span class="muted">none</span>'
    if isinstance(obj, dict):
        scalars = [(k, v) for k, v in obj.items() if not isinstance(v, dict | list) or
                   (isinstance(v, list) and len(v) <= 6 and all(isinstance(x, int | float | str) for x in v))]
        parts = [kv_table((k, esc(fmt_json_scalar(v))) for k, v in scalars)] if scalars else []
        for k, v in obj.items():
            if (k, v) in scalars:
                continue
            if depth >= 2:
                parts.append(f"<p><b>{esc(k)}</b>: …</p>")
                continue
            parts.append(f"<h3>{esc(k)}</h3>{json_block(v, max_rows, depth + 1)}")
        return "".join(parts)
    return esc(fmt_json_scalar(obj))


def mean_sd(values: np.ndarray, metric: str) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "—"
    if v.size == 1:
        return format_value(float(v[0]), metric)
    return f"{format_value(float(v.mean()), metric)} ± {format_value(float(v.std(ddof=1)), metric)}"


def organ_values(df: pd.DataFrame, organ: str, metric: str) -> np.ndarray:
    if metric not in df.columns:
        return np.array([])
    if organ == MEAN:
        wide = df.pivot(index="patient", columns="organ", values=metric)
        return wide.mean(axis=1, skipna=True).to_numpy(dtype=np.float64)
    return df.loc[df["organ"] == organ, metric].to_numpy(dtype=np.float64)


def missed_surface_organs(df: pd.DataFrame) -> list[str]:
    """Organs with a GT but no HD95 in some patient (the arm predicted none of it there).

    >>> df = pd.DataFrame({"patient": ["P1", "P1"], "organ": ["heart", "trachea"],
    ...                    "hd95": [5.0, np.nan], "vol_gt_ml": [500.0, 20.0]})
    >>> missed_surface_organs(df)
    ['trachea']
    """
    if "hd95" not in df.columns:
        return []
    has_gt = df["vol_gt_ml"].fillna(0) > 0 if "vol_gt_ml" in df.columns else pd.Series(True, index=df.index)
    gone = df[has_gt & df["hd95"].isna()]
    return [o for o in ORGAN_NAMES if o in set(gone["organ"])]


def per_patient_mean_dice(df: pd.DataFrame) -> pd.Series:
    return df.pivot(index="patient", columns="organ", values="dice").mean(axis=1, skipna=True).dropna()


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """One level of nesting flattened: ``{"rotation": {"angle_deg": 20}} -> {"rotation.angle_deg": 20}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not prefix:
            out.update(flatten(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def find_key(d: dict, patterns: Sequence[str]) -> tuple[str, Any] | None:
    """First (key, value) of the flattened ``d`` whose key matches one of ``patterns`` (in order)."""
    flat = flatten(d)
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


def signed2(x: Any) -> str:
    v = float(x)
    return f"{v:+.2f}" if np.isfinite(v) else "—"


def signed3(x: Any) -> str:
    v = float(x)
    return f"{v:+.3f}" if np.isfinite(v) else "—"


def fmt_g(x: Any) -> str:
    v = float(x)
    return f"{v:g}" if np.isfinite(v) else "—"


def pct(x: Any) -> str:
    v = float(x) if x is not None else float("nan")
    return f"{v:+.1f} %" if np.isfinite(v) else "—"


def missing(x: Any) -> bool:
    """A cell with no value: None, NaN, empty, or the ``n/a`` that pandas reads back as NaN.

    >>> [missing(v) for v in (None, float("nan"), "", "n/a", "ns", 0.0)]
    [True, True, True, True, False, False]
    """
    if x is None:
        return True
    if isinstance(x, float):
        return not np.isfinite(x)
    return str(x).strip().lower() in ("", "nan", "n/a")


def mark_p(p: Any) -> str:
    v = float(p) if p is not None else float("nan")
    if not np.isfinite(v) or v >= 0.05:
        return ""
    return " ***" if v < 0.001 else " **" if v < 0.01 else " *"


def span(values: np.ndarray) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.2f}" if abs(hi - lo) < 5e-3 else f"{lo:.2f}–{hi:.2f}"


def network_input(cfg: dict | None) -> str:
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


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
