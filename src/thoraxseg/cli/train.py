"""``thoraxseg train``: train one arm (ENet, CustomNet, or nnU-Net 3D) into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from thoraxseg.arms import arm_names, get_arm
from thoraxseg.cli import note
from thoraxseg.errors import ConfigError
from thoraxseg.training.config import SCHEDULES


def _key_value(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``thoraxseg train`` (shared with ``thoraxseg slurm train``)."""
    p.add_argument("--model", required=True, choices=arm_names(), help="which arm to train")
    p.add_argument("--data", required=True, type=Path, help="dataset root with labelled cases (SegTHOR layout)")
    p.add_argument("--out", required=True, type=Path, help="run folder (resumes from RUN/last.pt when present)")
    p.add_argument("--config", type=Path, help="YAML file of settings (see docs; CLI options win)")
    p.add_argument("--epochs", type=int, help="number of epochs (default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--seed", type=int, help="seed of split, initialisation, data order, augmentation (default 0)")
    g = p.add_argument_group("2D arms (enet, customnet)")
    g.add_argument("--batch-size", type=int, help="slices per step and process (default 8)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default none)")
    g.add_argument("--image-size", type=int, help="side of the square training crops in pixels (default 256)")
    g.add_argument("--spacing-mm", type=float, help="in-plane pixel size in mm every slice is resampled to "
                   "(default: the training set's median field of view / image size)")
    g.add_argument("--width", type=int, help="network width (default: ENet 16, CustomNet 64)")
    g.add_argument("--val-fraction", type=float, help="fraction of patients for validation (default 0.2)")
    g.add_argument("--samples-per-epoch", type=int, help="random training slices per epoch (default: all)")
    g.add_argument("--loader-workers", type=int, dest="num_workers", help="DataLoader worker processes (default 0)")
    g.add_argument("--workers", type=int, dest="old_workers", help=argparse.SUPPRESS)  # before 0.3: --loader-workers
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core)")
    g.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast on CUDA")
    g.add_argument("--no-augment", dest="augment_enabled", action="store_false", default=None,
                   help="disable augmentation")
    p.add_argument("--set", dest="settings", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="any other setting of the arm, e.g. --set loss.class_weights.esophagus=0.4 (2D) or "
                        "--set final_validation=false (nnunet3d) (repeatable)")
    n = p.add_argument_group("nnU-Net arm (nnunet3d)")
    n.add_argument("--folds", help="fold to train: 0-4 or 'all' (nnunet3d)")
    n.add_argument("--iterations-per-epoch", type=int, help="training iterations per epoch (nnunet3d)")
    n.add_argument("--plans", choices=("default", "cpu"), help="nnU-Net plans: default, or reduced for CPU")


#: Options of :func:`add_train_arguments` that are not arm settings (paths, run length and device are passed apart).
_NOT_SETTINGS = frozenset({"help", "model", "data", "out", "config", "epochs", "device", "settings", "old_workers"})
#: Setting names of options whose argparse name differs (``--no-augment`` sets ``augment.enabled``).
_SETTING_NAMES = {"augment_enabled": "augment.enabled"}


def train_setting_actions() -> list[argparse.Action]:
    """The ``thoraxseg train`` options that are arm settings, in order (one list: overrides and SLURM argv)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    return [a for a in parser._actions if a.dest not in _NOT_SETTINGS]


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword overrides for :func:`thoraxseg.training.train` from parsed arguments."""
    overrides: dict[str, Any] = {_SETTING_NAMES.get(a.dest, a.dest): getattr(args, a.dest, None)
                                 for a in train_setting_actions()}
    if getattr(args, "old_workers", None) is not None:
        note("--workers of train is now --loader-workers (DataLoader processes); --workers is read as that")
        if overrides["num_workers"] is None:
            overrides["num_workers"] = args.old_workers
    flags = {k for k, v in overrides.items() if v is not None}
    arm = get_arm(args.model)
    foreign = sorted(flags - arm.train_flags)
    if foreign:
        owners = [a for a in arm_names() if set(foreign) <= get_arm(a).train_flags]
        where = f"apply to {', '.join(owners)} only" if owners else "do not apply"
        raise ConfigError(f"option(s) {', '.join(foreign)} {where}, not {arm.name}")
    for key, value in args.settings:  # --set KEY=VALUE: any setting of the arm, checked by its settings loader
        overrides[key] = value
    return {k: v for k, v in overrides.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from thoraxseg.training import train

    overrides = train_overrides(args)
    out = train(args.model, args.data, args.out, config=args.config, epochs=args.epochs, device=args.device,
                **overrides)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train ENet, CustomNet (2D) or nnU-Net (3D) into a run folder",
        description="Train one arm. Killing it and running the same command again resumes from RUN/last.pt. "
                    "Under torchrun (e.g. torchrun --nproc-per-node 4 -m thoraxseg.cli train ...) the 2D arms "
                    "train data-parallel.",
    )
    add_train_arguments(p)
    p.set_defaults(func=run)
