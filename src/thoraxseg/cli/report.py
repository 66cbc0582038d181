"""``thoraxseg report``: the self-contained HTML report of a study folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from thoraxseg.utils.progress import console


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="build the self-contained HTML report of a study folder",
        description="Build one self-contained HTML file (figures embedded, no network needed) from a study "
        "folder: dataset and check, label fix, metrics per arm, distributions, statistics, training curves, "
        "best/worst case overlays and 3D surface renders. Stages that did not run are marked 'not run'.",
    )
    p.add_argument("--study", required=True, type=Path, metavar="DIR", help="study folder (thoraxseg study --out)")
    p.add_argument("--out", type=Path, metavar="HTML", help="output file (default: DIR/report.html)")
    p.add_argument("--screenshot", type=Path, metavar="PNG",
                   help="also save a PNG of the first screen (headless Chromium; e.g. for the README)")
    p.add_argument("--window", nargs=2, type=int, default=(1280, 900), metavar=("W", "H"),
                   help="screenshot size in CSS pixels (default 1280 900)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thoraxseg.report import build_report

    path = build_report(args.study, args.out)
    console.print(f"report: {path}")
    if args.screenshot is not None:
        from thoraxseg.report.browser import screenshot

        shot = screenshot(path, args.screenshot, width=args.window[0], height=args.window[1])
        console.print(f"screenshot: {shot}")
    return 0
