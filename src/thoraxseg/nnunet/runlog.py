"""``RUN/log.csv`` and ``RUN/curves.png`` from nnU-Net's per-epoch logger.

nnU-Net keeps one value per epoch in its logger (``train_losses``,
``val_losses``, ``dice_per_class_or_region``, ``mean_fg_dice``, ``lrs``,
epoch start/end timestamps); this module turns them into thoraxseg's run log.
The validation Dice here is nnU-Net's *pseudo Dice*: computed on random
validation patches during training (``num_val_iterations_per_epoch`` batches),
pooled over the patches, not per case on whole volumes.

Examples
--------
>>> log = {"train_losses": [0.9], "val_losses": [0.8], "dice_per_class_or_region": [[0.1, 0.5, 0.2, 0.3]],
...        "mean_fg_dice": [0.275], "lrs": [0.01], "epoch_start_timestamps": [10.0],
...        "epoch_end_timestamps": [12.5]}
>>> row = rows_from_logger(log, fold=0)[0]
>>> row["val_dice_heart"], row["seconds"], row["fold"]
(0.5, 2.5, '0')
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.utils.atomic import write_text_atomic

#: Columns of ``RUN/log.csv`` (contract columns, then the nnU-Net fold).
LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "val_loss",
    *(f"val_dice_{name}" for name in ORGAN_NAMES),
    "val_dice_mean", "lr", "seconds", "fold",
)


def _num(value: Any) -> float | str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(v) else v


def rows_from_logger(log: dict[str, list[Any]], fold: int | str) -> list[dict[str, Any]]:
    """One row per finished epoch of an nnU-Net ``LocalLogger`` (``my_fantastic_logging`` dict)."""
    n = len(log.get("epoch_end_timestamps", []))
    rows = []
    for e in range(n):
        dice = list(log["dice_per_class_or_region"][e]) if e < len(log["dice_per_class_or_region"]) else []
        row: dict[str, Any] = {
            "epoch": e,
            "train_loss": _num(log["train_losses"][e]) if e < len(log["train_losses"]) else "",
            "val_loss": _num(log["val_losses"][e]) if e < len(log["val_losses"]) else "",
        }
        for i, name in enumerate(ORGAN_NAMES):
            row[f"val_dice_{name}"] = _num(dice[i]) if i < len(dice) else ""
        row["val_dice_mean"] = _num(log["mean_fg_dice"][e]) if e < len(log["mean_fg_dice"]) else ""
        row["lr"] = _num(log["lrs"][e]) if e < len(log["lrs"]) else ""
        start = log["epoch_start_timestamps"][e] if e < len(log["epoch_start_timestamps"]) else None
        row["seconds"] = round(float(log["epoch_end_timestamps"][e]) - float(start), 3) if start else ""
        row["fold"] = str(fold)
        rows.append(row)
    return rows


def format_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV text with :data:`LOG_COLUMNS` (floats with 6 significant digits; empty cell = no value)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(LOG_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_log_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows to ``path`` atomically."""
    write_text_atomic(path, format_csv(rows))


def read_log_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``log.csv`` as strings (empty list when absent)."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


