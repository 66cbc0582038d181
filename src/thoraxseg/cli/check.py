"""``thoraxseg check DIR`` — validate a dataset and flag misplaced labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from thoraxseg.data.check import check_dataset, print_report
from thoraxseg.utils.atomic import write_json_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate a dataset (files, geometry, labels) and flag misplaced labels",
        description="Validate every case: exit 0 when clean (warnings allowed), 1 when any case has an error.",
    )
    p.add_argument("data", type=Path, help="dataset root (SegTHOR layout, Patient_XX/ folders or flat NIfTI)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too (misplaced labels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = check_dataset(args.data, workers=max(1, args.workers))
    print_report(report)
    if args.json is not None:
        write_json_atomic(args.json, report.to_dict())
    if not report.ok:
        return 1
    if args.strict and report.n_warnings:
        return 1
    return 0
