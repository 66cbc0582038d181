"""``thoraxseg compare``: paired statistics between arms from their metrics CSVs."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from thoraxseg.stats.constants import DEFAULT_METRICS, HIGHER_IS_BETTER
from thoraxseg.utils.progress import console


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="paired statistical comparison of arms (tests, Holm, effect sizes, bootstrap CIs)",
        description="Compare segmentation arms on the same patients: Shapiro–Wilk on the paired differences → "
        "paired t-test or Wilcoxon signed-rank, Holm correction within each metric, Cohen's d_z, "
        "rank-biserial r, seeded bootstrap 95 % CI, precision/recall shift. Writes OUT/stats.csv, "
        "OUT/shift.csv and OUT/summary.txt.",
    )
    p.add_argument("--metrics", nargs="+", required=True, type=Path, metavar="CSV",
                   help="one metrics CSV per arm (output of `thoraxseg evaluate`)")
    p.add_argument("--names", nargs="+", metavar="NAME",
                   help="arm names, same order (default: the folder of .../<arm>/metrics.csv, else the file stem)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--unpaired", action="store_true",
                   help="also report Mann–Whitney U (ignores the pairing; for reproducing unpaired analyses)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--metric", dest="metric_names", nargs="+", default=list(DEFAULT_METRICS),
                   choices=sorted(HIGHER_IS_BETTER), metavar="METRIC",
                   help=f"metrics to compare (default: {' '.join(DEFAULT_METRICS)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thoraxseg.stats.compare import run_comparison, summary_renderables, write_outputs

    result = run_comparison(args.metrics, args.names, unpaired=args.unpaired, seed=args.seed, n_boot=args.n_boot,
                            alpha=args.alpha, metric_names=args.metric_names)
    write_outputs(result, args.out)
    # A terminal gets tables that fit its width; piped output (logs) gets the full tables, unwrapped.
    out = console if console.is_terminal else Console(width=max(console.width, 160), highlight=False)
    for item in summary_renderables(result, compact=out.width < 150):
        out.print(item)
    console.print(f"wrote {args.out / 'stats.csv'}, {args.out / 'shift.csv'} and {args.out / 'summary.txt'} "
                  "(full tables: means, raw p, rank-biserial r)")
    return 0
