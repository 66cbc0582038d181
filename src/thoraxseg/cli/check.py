"""``thoraxseg check DIR`` — validate a dataset and flag misplaced labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from thoraxseg.data.check import CheckReport, OrganPlacement, ReferencePair, check_dataset
from thoraxseg.utils.atomic import write_json_atomic
from thoraxseg.utils.progress import console


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


def _heart_cell(heart: OrganPlacement | None, pair: ReferencePair | None) -> str:
    """``41%``, or ``41% (GT2.nii.gz 0%)`` for a reference pair."""
    cell = f"{heart.air_fraction:.0%}" if heart else "-"
    clean = next((o for o in pair.clean_organs if o.organ == "heart"), None) if pair else None
    if pair is not None and clean is not None:
        cell += f" ({Path(pair.clean).name} {clean.air_fraction:.0%})"
    return cell


def print_report(report: CheckReport) -> None:
    """Print the per-case table (stdout) and one line per problem (errors to stderr)."""
    table = Table(title=f"check: {report.root}", show_lines=False)
    for col in ("patient", "shape", "spacing (mm)", "organs (mL)", "heart on air", "status"):
        table.add_column(col)
    for c in report.cases:
        organs = ", ".join(f"{o.organ[:3]} {o.volume_ml:.0f}" for o in c.organs) or "-"
        heart = next((o for o in c.organs if o.organ == "heart"), None)
        style = {"ok": "green", "warning": "yellow", "error": "red"}[c.status]
        table.add_row(
            c.patient_id,
            "×".join(map(str, c.shape)) if c.shape else "-",
            "×".join(f"{s:.3g}" for s in c.spacing_mm) if c.spacing_mm else "-",
            organs,
            _heart_cell(heart, c.reference),
            f"[{style}]{c.status}[/{style}]",
        )
    if report.cases:
        console.print(table)
    for line in report.errors:
        print(f"thoraxseg: error: {line}", file=sys.stderr)
    for c in report.cases:
        for line in c.errors:
            print(f"thoraxseg: error: {line}", file=sys.stderr)
        for line in c.warnings:
            console.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)
        for line in c.notes:
            console.print(f"note: {line}", soft_wrap=True)
    n_err = sum(1 for c in report.cases if c.errors) + len(report.errors)
    console.print(f"{len(report.cases)} case(s): {n_err} with errors, {report.n_warnings} with warnings")


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
