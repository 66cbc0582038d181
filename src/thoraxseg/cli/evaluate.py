"""``thoraxseg evaluate``: metrics CSV (+ course-format .npz) of a prediction folder against GT."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from thoraxseg.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, precision, recall, HD, HD95, ASSD, NSD and volumes per patient and organ",
        description=(
            "Compare predictions (PRED_DIR/Patient_XX.nii.gz) with ground-truth labels (a SegTHOR layout "
            "or a flat folder of Patient_XX.nii.gz) in mm, using each image's voxel spacing. Writes one CSV "
            "row per patient and organ and prints a summary table. All inputs are checked first: a bad file "
            "stops with one line naming it, and no CSV is written."
        ),
    )
    p.add_argument("--gt", required=True, type=Path, metavar="GT_DIR", help="ground-truth labels")
    p.add_argument("--pred", required=True, type=Path, metavar="PRED_DIR", help="predictions, Patient_XX.nii.gz")
    p.add_argument("--out", required=True, type=Path, metavar="CSV", help="metrics CSV to write")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes over patients (default 1)")
    p.add_argument("--npz-dir", type=Path, default=None, metavar="DIR",
                   help="also write DIR/<metric>.npz: patient ID -> array of 5 values (index = label, 0 = NaN)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the outputs, print the summary. Returns the exit code."""
    from thoraxseg.metrics.evaluate import (
        evaluate_folders,
        summarize_metrics,
        summary_table,
        write_metrics_csv,
        write_npz,
    )
    from thoraxseg.utils.progress import console

    if not (math.isfinite(args.tolerance_mm) and args.tolerance_mm >= 0):
        raise ConfigError(f"--tolerance-mm must be a number >= 0, got {args.tolerance_mm}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    df = evaluate_folders(args.gt, args.pred, tolerance_mm=args.tolerance_mm, workers=args.workers)
    if args.npz_dir is not None:
        write_npz(df, args.npz_dir)
    write_metrics_csv(df, args.out)
    n_patients = df["patient"].nunique()
    console.print(summary_table(summarize_metrics(df), title=f"{n_patients} patients — NSD at {args.tolerance_mm:g} mm"))
    console.print(f"wrote {args.out}" + (f" and {args.npz_dir}/<metric>.npz" if args.npz_dir else ""))
    return 0
