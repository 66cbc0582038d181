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

#: Subcommand modules under :mod:`thoraxseg.cli`, in data-flow order (the order of ``thoraxseg --help``).
COMMANDS: tuple[str, ...] = (
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


def note(text: str) -> None:
    """One ``thoraxseg: note: …`` line on stderr (an old spelling read, a setting adjusted)."""
    print(f"thoraxseg: note: {text}", file=sys.stderr)


class RenamedFlag(argparse.Action):
    """An old spelling of a flag: still works, sets the new flag's value and prints one note (stderr)."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", nargs: int | str | None = 0,
                 **kwargs: object) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs=nargs, help=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        note(f"{option_string} is now {self.new}")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_overwrite(p: argparse.ArgumentParser, help: str) -> None:
    """``--overwrite`` (every command's word for "replace what is there"); ``--force`` is read as it, with a note."""
    p.add_argument("--overwrite", action="store_true", help=help)
    p.add_argument("--force", action=RenamedFlag, dest="overwrite", new="--overwrite")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``thoraxseg`` parser; with ``command`` (a name of :data:`COMMANDS`, ``-`` or ``_``) only that subcommand.

    Importing every subcommand's module costs ~1 s (the phantom generator, pandas, torch's settings); a
    command line that names its subcommand first registers only that one, so ``thoraxseg evaluate`` starts in
    the time its own imports take. ``--help`` and unknown words still see every subcommand.
    """
    module = command.replace("-", "_") if command else None
    parser = argparse.ArgumentParser(
        prog="thoraxseg",
        description="Segment thoracic organs at risk (esophagus, heart, trachea, aorta) in 3D CT (SegTHOR).",
    )
    parser.add_argument("--version", action="version", version=f"thoraxseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in (module,) if module in COMMANDS else COMMANDS:
        importlib.import_module(f"thoraxseg.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thoraxseg`` console script. Returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words and "_" not in words[0] else None)
    args = parser.parse_args(words)
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
