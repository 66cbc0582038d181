"""``thoraxseg train``: train one arm (ENet, CustomNet, or nnU-Net 3D) into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from thoraxseg.arms import TrainOption, arm_names, get_arm
from thoraxseg.cli import RenamedFlag
from thoraxseg.errors import ConfigError


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
    p.add_argument("--set", dest="settings", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="any other setting of the arm, e.g. --set loss.class_weights.esophagus=0.4 (2D) or "
                        "--set final_validation=false (nnunet3d) (repeatable)")
    for names, options in _option_groups():
        g = p.add_argument_group(f"options of {', '.join(names)}")
        for o in options:
            if o.switch is not None:
                g.add_argument(o.flag, dest=o.dest, action="store_true" if o.switch else "store_false", default=None,
                               help=o.help)
            else:
                g.add_argument(o.flag, dest=o.dest, type=o.type, choices=o.choices, help=o.help)
            for old in o.old_flags:
                g.add_argument(old, dest=o.dest, type=o.type, action=RenamedFlag, nargs=None, new=o.flag)


def _option_groups() -> list[tuple[list[str], tuple[TrainOption, ...]]]:
    """Arms that share the same train options, with those options (registration order; one group per set)."""
    groups: list[tuple[list[str], tuple[TrainOption, ...]]] = []
    for name in arm_names():
        options = get_arm(name).train_options
        if not options:
            continue
        for names, opts in groups:
            if opts == options:
                names.append(name)
                break
        else:
            groups.append(([name], options))
    return groups


#: Options of :func:`add_train_arguments` that are not arm settings (paths, run length and device are passed apart).
_NOT_SETTINGS = frozenset({"help", "model", "data", "out", "config", "epochs", "device", "settings"})


def train_setting_actions() -> list[argparse.Action]:
    """The ``thoraxseg train`` options that are arm settings, in order (one list: overrides and SLURM argv)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    return [a for a in parser._actions if a.dest not in _NOT_SETTINGS and not isinstance(a, RenamedFlag)]


def _setting_names() -> dict[str, str]:
    """argparse destination → dotted setting name, for every arm's train options."""
    return {o.dest: o.setting for name in arm_names() for o in get_arm(name).train_options}


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword overrides for :func:`thoraxseg.training.train` from parsed arguments."""
    names = _setting_names()
    overrides: dict[str, Any] = {names.get(a.dest, a.dest): getattr(args, a.dest, None)
                                 for a in train_setting_actions()}
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
