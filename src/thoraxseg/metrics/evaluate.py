"""Evaluate a folder of predictions against a folder of ground-truth labels.

Pairs every GT case with ``PRED/Patient_XX.nii.gz``, checks all inputs before
any metric is computed, computes :func:`~thoraxseg.metrics.engine.compute_metrics`
per patient (optionally in parallel processes), and returns one row per
patient and organ. Writers produce the metrics CSV, the course-format ``.npz``
files and a summary table; all writes are atomic.

Examples
--------
>>> ",".join(CSV_COLUMNS)
'patient,organ,dice,iou,precision,recall,hd,hd95,assd,nsd,vol_gt_ml,vol_pred_ml'
"""

from __future__ import annotations

import concurrent.futures as cf
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from thoraxseg.data.layout import discover_cases
from thoraxseg.data.volume import load_label, read_geometry, same_geometry
from thoraxseg.errors import ConfigError, InputError
from thoraxseg.labels import NUM_CLASSES, ORGAN_NAMES, ORGANS
from thoraxseg.metrics.engine import compute_metrics
from thoraxseg.metrics.spec import DISTANCE_METRICS, METRIC_NAMES
from thoraxseg.utils.atomic import atomic_path
from thoraxseg.utils.progress import make_progress

#: Exact column order of the metrics CSV.
CSV_COLUMNS: tuple[str, ...] = ("patient", "organ", *METRIC_NAMES)


@dataclass(frozen=True)
class CasePair:
    """One patient to evaluate: its GT label file and its prediction file."""

    patient: str
    gt_path: Path
    pred_path: Path


# --------------------------------------------------------------------------- inputs
def find_pairs(gt: str | Path, pred: str | Path) -> list[CasePair]:
    """Pair each GT case with its prediction ``PRED/<patient>.nii.gz`` (or ``.nii``).

    ``gt`` is a SegTHOR layout (``train/Patient_XX/GT.nii.gz``, ``Patient_XX/GT.nii.gz``)
    — then only cases with a ``GT.nii.gz`` are used — or a flat folder of
    ``Patient_XX.nii.gz`` label files.

    Raises
    ------
    InputError
        Missing folders, no cases, or a GT case without a prediction (naming the
        expected prediction file).
    """
    gt_root, pred_root = Path(gt), Path(pred)
    cases = discover_cases(gt_root)
    labelled = [c for c in cases if c.label_path is not None]
    if labelled:
        gt_files = [(c.patient_id, c.label_path) for c in labelled]
    else:  # a flat folder of label files
        gt_files = [(c.patient_id, c.image_path) for c in cases]
    if not pred_root.exists():
        raise InputError(pred_root, "prediction folder not found")
    if not pred_root.is_dir():
        raise InputError(pred_root, "not a folder (expected a folder of Patient_XX.nii.gz predictions)")
    pairs = []
    for patient, gt_path in gt_files:
        candidates = [pred_root / f"{patient}{s}" for s in (".nii.gz", ".nii")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise InputError(candidates[0], f"prediction missing for {patient} (GT: {gt_path})")
        pairs.append(CasePair(patient, Path(gt_path), found))  # type: ignore[arg-type]
    return pairs


def validate_pairs(pairs: Sequence[CasePair]) -> None:
    """Check every pair's headers: readable, 3D, and the prediction on the GT's grid.

    Raises
    ------
    InputError
        Naming the first bad file (patient order).
    """
    for pair in pairs:
        g = read_geometry(pair.gt_path)
        p = read_geometry(pair.pred_path)
        diff = same_geometry(g, p)
        if diff is not None:
            raise InputError(pair.pred_path, f"geometry differs from the GT {pair.gt_path.name} ({diff})")


# --------------------------------------------------------------------------- computing
def evaluate_pair(pair: CasePair, tolerance_mm: float = 2.0) -> list[dict[str, float | str]]:
    """Load one GT/prediction pair (labels checked) and compute its rows (patient added)."""
    with cf.ThreadPoolExecutor(2) as pool:  # inflating and checking release the GIL: both files at once
        gt_read, pred_read = pool.submit(load_label, pair.gt_path), pool.submit(load_label, pair.pred_path)
        gt, pred = gt_read.result(), pred_read.result()  # the GT's error first, as when read in turn
    diff = same_geometry(gt, pred)
    if diff is not None:
        raise InputError(pair.pred_path, f"geometry differs from the GT {pair.gt_path.name} ({diff})")
    rows = compute_metrics(gt.array, pred.array, gt.spacing, tolerance_mm)
    return [{"patient": pair.patient, **row} for row in rows]


def _run(pairs: Sequence[CasePair], tolerance_mm: float, workers: int) -> list[list[dict[str, float | str]]]:
    """Evaluate every pair, in order; the first failing patient's error is raised (pending work cancelled)."""
    results: list[list[dict[str, float | str]] | None] = [None] * len(pairs)
    if workers <= 1 or len(pairs) <= 1:
        with make_progress() as progress:
            task = progress.add_task("evaluating", total=len(pairs))
            for i, pair in enumerate(pairs):
                results[i] = evaluate_pair(pair, tolerance_mm)
                progress.advance(task)
        return [r for r in results if r is not None]
    # Submit everything before the progress bar's refresh thread starts (workers are forked).
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
        futures = {pool.submit(evaluate_pair, pair, tolerance_mm): i for i, pair in enumerate(pairs)}
        failed: dict[int, BaseException] = {}
        with make_progress() as progress:
            task = progress.add_task("evaluating", total=len(pairs))
            for fut in cf.as_completed(futures):
                if fut.cancelled():
                    continue
                exc = fut.exception()
                result = fut.result() if exc is None else None
                if exc is not None:
                    failed[futures[fut]] = exc
                    for other in futures:
                        other.cancel()
                    continue
                results[futures[fut]] = result  # type: ignore[assignment]
                progress.advance(task)
    if failed:
        raise failed[min(failed)]
    return [r for r in results if r is not None]


def evaluate_folders(gt: str | Path, pred: str | Path, tolerance_mm: float = 2.0, workers: int = 1) -> pd.DataFrame:
    """Metrics of every patient and organ, predictions in ``pred`` against labels in ``gt``.

    Parameters
    ----------
    gt
        SegTHOR layout or flat folder of ``Patient_XX.nii.gz`` label files.
    pred
        Flat folder of ``Patient_XX.nii.gz`` predictions (uint8, GT grid).
    tolerance_mm
        NSD tolerance in mm.
    workers
        Processes evaluating patients in parallel (1: in this process).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CSV_COLUMNS`, one row per patient and organ (patient
        order, then label order). NaN = not applicable / missing (see docs).

    Raises
    ------
    InputError
        Any bad input (missing prediction, unreadable file, other grid, labels
        outside 0–4), naming the file; headers of all files are checked before
        any metric is computed.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be a finite number of mm >= 0, got {tolerance_mm}")
    pairs = find_pairs(gt, pred)
    validate_pairs(pairs)
    per_case = _run(pairs, float(tolerance_mm), int(workers))
    rows = [row for case in per_case for row in case]
    df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    df[list(METRIC_NAMES)] = df[list(METRIC_NAMES)].astype(np.float64)
    return df


# --------------------------------------------------------------------------- outputs
def _checked(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns: {', '.join(missing)}")
    out = df[list(CSV_COLUMNS)].copy()
    values = np.array(out[list(METRIC_NAMES)].to_numpy(dtype=np.float64), copy=True)
    values[~np.isfinite(values)] = np.nan  # never inf in a file
    out[list(METRIC_NAMES)] = values
    return out


def write_metrics_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write the metrics table as CSV atomically: columns :data:`CSV_COLUMNS`, NaN as an empty cell.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> row = {"patient": "P1", "organ": "heart", **dict.fromkeys(METRIC_NAMES, 0.5), "hd": float("inf")}
    >>> write_metrics_csv(pd.DataFrame([row]), p)
    >>> p.read_text().splitlines()[1]
    'P1,heart,0.5,0.5,0.5,0.5,,0.5,0.5,0.5,0.5,0.5'
    """
    out = _checked(df)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, na_rep="", float_format="%.8g")


def write_npz(df: pd.DataFrame, out_dir: str | Path, num_classes: int = NUM_CLASSES) -> list[Path]:
    """Course format: ``out_dir/<metric>.npz`` mapping patient ID → float array of shape ``num_classes``.

    Index = label code (0 background … 4 aorta); the background entry is NaN
    (not evaluated), as is any organ without a value. Written atomically.
    """
    table = _checked(df)
    codes = {name: int(o) for name, o in zip(ORGAN_NAMES, ORGANS, strict=True)}
    folder = Path(out_dir)
    patients = list(dict.fromkeys(table["patient"]))
    written = []
    for metric in METRIC_NAMES:
        arrays: dict[str, np.ndarray] = {}
        for patient in patients:
            arr = np.full(num_classes, np.nan)
            sub = table[table["patient"] == patient]
            for organ, value in zip(sub["organ"], sub[metric], strict=True):
                arr[codes[str(organ)]] = value
            arrays[str(patient)] = arr
        target = folder / f"{metric}.npz"
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        written.append(target)
    return written


def summarize_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample SD and median of each metric per organ and over all organs.

    Rows with NaN are left out of the statistics and counted: ``n_na`` (organ in
    neither GT nor prediction: every metric NaN) and ``n_missing`` (value
    missing for another reason, e.g. distances when one mask is empty).

    Returns
    -------
    pandas.DataFrame
        Columns ``organ, metric, n, mean, sd, median, n_na, n_missing``; organ
        ``"all"`` pools every patient × organ row.
    """
    table = _checked(df)
    groups = [(organ, table[table["organ"] == organ]) for organ in ORGAN_NAMES if (table["organ"] == organ).any()]
    groups.append(("all", table))
    records = []
    for organ, sub in groups:
        not_applicable = sub["dice"].isna()
        for metric in METRIC_NAMES:
            values = sub[metric].to_numpy(dtype=np.float64)
            ok = values[np.isfinite(values)]
            records.append({
                "organ": organ,
                "metric": metric,
                "n": int(ok.size),
                "mean": float(ok.mean()) if ok.size else np.nan,
                "sd": float(ok.std(ddof=1)) if ok.size > 1 else np.nan,
                "median": float(np.median(ok)) if ok.size else np.nan,
                "n_na": int(not_applicable.sum()),
                "n_missing": int((~np.isfinite(values) & ~not_applicable.to_numpy()).sum()),
            })
    return pd.DataFrame(records)


_UNITS = {"hd": "mm", "hd95": "mm", "assd": "mm", "vol_gt_ml": "mL", "vol_pred_ml": "mL"}


def _fmt(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "–"
    digits = 1 if metric.startswith("vol") else 2 if metric in DISTANCE_METRICS else 3
    return f"{value:.{digits}f}"


def summary_table(summary: pd.DataFrame, title: str = "metrics summary") -> Table:
    """A :class:`rich.table.Table`: one row per metric, one column per organ and ``all``.

    Each cell shows ``mean±sd`` on its first line and the median below it; the
    last rows count the values, the not-applicable rows and the missing distances.
    """
    organs = list(dict.fromkeys(summary["organ"]))
    table = Table(title=title, caption="cells: mean±sd, then median")
    table.add_column("metric")
    for organ in organs:
        table.add_column(organ, justify="right")

    def stat(organ: str, metric: str) -> pd.Series:
        return summary[(summary["organ"] == organ) & (summary["metric"] == metric)].iloc[0]

    for metric in METRIC_NAMES:
        cells = []
        for organ in organs:
            s = stat(organ, metric)
            if s["n"] == 0:
                cells.append("–")
            else:
                cells.append(f"{_fmt(metric, s['mean'])}±{_fmt(metric, s['sd'])}\n{_fmt(metric, s['median'])}")
        name = metric.replace("_ml", "")
        table.add_row(f"{name} ({_UNITS[metric]})" if metric in _UNITS else name, *cells, end_section=False)
    table.add_section()
    table.add_row("n", *[str(int(stat(o, "dice")["n"])) for o in organs])
    table.add_row("n/a (both empty)", *[str(int(stat(o, "dice")["n_na"])) for o in organs])
    table.add_row("missing distances", *[str(int(stat(o, "hd")["n_missing"])) for o in organs])
    return table
