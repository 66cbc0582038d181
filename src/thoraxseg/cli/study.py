"""``thoraxseg study --config study.yaml --out DIR`` — the whole comparison, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from thoraxseg.cli import add_overwrite
from thoraxseg.errors import ConfigError
from thoraxseg.study import load_study_config, run_study
from thoraxseg.utils.progress import console
from thoraxseg.utils.settings import check_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run check → realign → train → predict → evaluate → compare → report into one folder",
        description="Run a whole study; a killed study resumes, skipping stages whose outputs are complete.",
    )
    p.add_argument("--config", type=Path, required=True, help="study YAML (see configs/demo.yaml)")
    p.add_argument("--out", type=Path, default=None, help="study folder (default: runs/<name>)")
    add_overwrite(p, "re-run every stage (the study's stage markers are cleared first)")
    p.add_argument("--device", default=None, help="override the config's device: cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for every stage (overrides the config; default: one per core)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_study_config(args.config)
    if args.device:
        config.device = check_device(args.device, "--device")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        config.threads = args.threads
    out = args.out or Path("runs") / config.name
    report = run_study(config, out, force=args.overwrite)
    console.print(f"[bold green]report:[/bold green] {report.resolve()}")
    return 0
