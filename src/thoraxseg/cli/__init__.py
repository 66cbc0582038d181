"""The ``thoraxseg`` command: one CLI, one subcommand per pipeline stage.

Each stage module under :mod:`thoraxseg.cli` exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from thoraxseg import __version__
from thoraxseg.errors import ThoraxsegError

#: Stage modules, in data-flow order. A module that fails to import is reported, not fatal.
STAGES: tuple[str, ...] = (
    "phantom",
    "check",
    "realign",
    "train",
    "predict",
    "export_model",
    "segment",
    "qa",
    "nnunet",
    "slurm",
    "evaluate",
    "compare",
    "report",
    "study",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thoraxseg",
        description="Segment thoracic organs at risk (esophagus, heart, trachea, aorta) in 3D CT (SegTHOR).",
    )
    parser.add_argument("--version", action="version", version=f"thoraxseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for stage in STAGES:
        try:
            module = importlib.import_module(f"thoraxseg.cli.{stage}")
        except ModuleNotFoundError as exc:
            if exc.name == f"thoraxseg.cli.{stage}":
                continue  # stage not built in this version
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thoraxseg`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except ThoraxsegError as exc:
        print(f"thoraxseg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thoraxseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected bug: one line unless debugging
        if os.environ.get("THORAXSEG_DEBUG"):
            raise
        print(f"thoraxseg: internal error: {type(exc).__name__}: {exc} (set THORAXSEG_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 3
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
