"""Settings of the nnU-Net arm: one typed dataclass, resolved and checked before any work starts.

Defaults < a config mapping or YAML file (``nnunet3d:``/``nnunet:`` sections are merged in) <
explicit arguments; built by :func:`thoraxseg.utils.settings.build_dataclass` (types coerced,
unknown keys refused with the nearest valid name), then plan-dependent defaults are filled in
and every range is checked (:func:`resolve_settings`).

Examples
--------
>>> s = resolve_settings({"epochs": "3", "final_validation": "false"}, plans="cpu")
>>> s["epochs"], s["final_validation"], s["iterations_per_epoch"]
(3, False, 40)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thoraxseg.errors import ConfigError, InputError
from thoraxseg.nnunet.env import default_processes
from thoraxseg.nnunet.export import EXPORT_MODES, dataset_folder_name
from thoraxseg.nnunet.plans import PLAN_CHOICES, CpuPlan
from thoraxseg.utils.settings import build_dataclass, check_device, choice, unknown_message
from thoraxseg.utils.yamlfile import read_yaml_mapping

MODEL = "nnunet3d"

#: (epochs, iterations per epoch, validation iterations per epoch) when not given.
RUN_LENGTH: dict[str, tuple[int, int, int]] = {
    "default": (1000, 250, 50),  # nnU-Net's own
    # 2400 steps of CPU_PLAN, ~9 min on 2 cores: all four organs on the small phantom (README, CPU plans)
    "cpu": (60, 40, 4),
}


@dataclass
class NnunetSettings:
    """Every setting of an nnU-Net run (``None``: filled in by :func:`resolve_settings`)."""

    folds: Any = "0"  #: "0", "0,2", "0-4", "all" or a list
    plans: str = "default"  #: default (nnU-Net's plan) or cpu (thoraxseg.nnunet.plans.CPU_PLAN)
    device: str = "cpu"  #: cpu, cuda or cuda:N
    seed: int = 0
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    dataset_id: int = 55
    dataset_name: str = "SegTHOR"
    export_mode: str = "copy"  #: one of thoraxseg.nnunet.export.EXPORT_MODES
    num_workers: int | None = None  #: nnU-Net's augmentation worker processes (nnUNet_n_proc_DA)
    num_processes: int | None = None  #: processes for planning/preprocessing
    pools: str | None = None  #: thread or process: nnU-Net's export pools
    save_every: int = 1
    initial_lr: float | None = None
    batch_size: int | None = None
    cpu_plan: dict[str, Any] | None = None  #: CpuPlan fields (plans cpu only)
    oversample_foreground: float | None = None
    final_validation: bool | None = None
    check_integrity: bool = True
    verbose: bool = False


#: Settings a config file/dict may hold (``model`` and the derived ``resolved``/``versions`` are also accepted).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(NnunetSettings)}
_IGNORED_KEYS = {"model", "data", "out", "resolved", "versions", "created"}
#: Settings that define a run; a rerun into the same RUN must not change them.
IDENTITY_KEYS = ("plans", "dataset_id", "dataset_name", "cpu_plan")


def parse_folds(folds: str | int | Sequence[int | str]) -> list[int | str]:
    """Folds to train: ``0``, ``"0,2"``, ``"0-4"``, ``"all"`` (nnU-Net's fold on all cases) or a list.

    >>> parse_folds("0-2"), parse_folds("all"), parse_folds(3), parse_folds("1,all")
    ([0, 1, 2], ['all'], [3], [1, 'all'])
    """
    items: list[int | str] = []
    parts: Sequence[Any] = folds.split(",") if isinstance(folds, str) else (
        [folds] if isinstance(folds, int) else list(folds))
    for part in parts:
        text = str(part).strip()
        if text == "all":
            items.append("all")
        elif "-" in text:
            lo, _, hi = text.partition("-")
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise ConfigError(f"bad fold range {text!r}")
            items.extend(range(int(lo), int(hi) + 1))
        elif text.isdigit():
            items.append(int(text))
        else:
            raise ConfigError(f"folds must be integers, ranges like 0-4, or 'all'; got {part!r}")
    if not items:
        raise ConfigError("no fold given")
    return list(dict.fromkeys(items))


def _load_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, str | Path):
        config = read_yaml_mapping(config, error=InputError)
    cfg = dict(config)
    for section in ("nnunet3d", "nnunet"):
        if isinstance(cfg.get(section), Mapping):
            cfg.update(cfg.pop(section))
    model = cfg.get("model", MODEL)
    if model != MODEL:
        raise ConfigError(f"config is for model {model!r}, not {MODEL}")
    unknown = set(map(str, cfg)) - set(DEFAULTS) - _IGNORED_KEYS
    if unknown:
        raise ConfigError(unknown_message(unknown, DEFAULTS, what="nnunet3d setting"))
    return {k: v for k, v in cfg.items() if k in DEFAULTS}


def resolve_settings(config: Mapping[str, Any] | str | Path | None = None, **explicit: Any) -> dict[str, Any]:
    """Merge defaults < config < explicit arguments (None = not given), fill plan-dependent defaults, check ranges.

    Returns the settings as a plain dict (the keys of :class:`NnunetSettings`; ``folds`` a list).

    >>> s = resolve_settings(None, plans="cpu", folds="all")
    >>> s["folds"], s["epochs"], s["iterations_per_epoch"], s["num_workers"], s["pools"], s["final_validation"]
    (['all'], 60, 40, 0, 'thread', False)
    """
    unknown = {k for k, v in explicit.items() if v is not None} - set(DEFAULTS)
    if unknown:
        raise ConfigError(unknown_message(unknown, DEFAULTS, what="nnunet3d setting"))
    merged = {**_load_config(config), **{k: v for k, v in explicit.items() if v is not None}}
    s = dataclasses.asdict(build_dataclass(NnunetSettings, merged))
    choice(s["plans"], PLAN_CHOICES, "plans")
    if s["device"] == "cuda:0":
        s["device"] = "cuda"
    check_device(s["device"])
    s["folds"] = parse_folds(s["folds"])
    epochs, iters, val_iters = RUN_LENGTH[s["plans"]]
    s["epochs"] = epochs if s["epochs"] is None else s["epochs"]
    s["iterations_per_epoch"] = s["iterations_per_epoch"] or iters
    s["val_iterations_per_epoch"] = s["val_iterations_per_epoch"] or val_iters
    for key in ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "save_every"):
        if s[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {s[key]}")
    on_gpu = s["device"].startswith("cuda")
    if s["num_workers"] is None:
        s["num_workers"] = None if on_gpu else 0  # None: nnU-Net's own on CUDA
    if s["num_workers"] is not None and s["num_workers"] < 0:
        raise ConfigError(f"num_workers must be >= 0, got {s['num_workers']}")
    s["num_processes"] = s["num_processes"] or default_processes()
    if s["num_processes"] < 1:
        raise ConfigError(f"num_processes must be >= 1, got {s['num_processes']}")
    if s["pools"] is None:
        s["pools"] = "process" if on_gpu else "thread"
    choice(s["pools"], ("thread", "process"), "pools")
    choice(s["export_mode"], EXPORT_MODES, "export_mode")
    if s["initial_lr"] is not None and not s["initial_lr"] > 0:
        raise ConfigError(f"initial_lr must be > 0, got {s['initial_lr']}")
    if s["batch_size"] is not None and s["batch_size"] < 1:
        raise ConfigError(f"batch_size must be >= 1, got {s['batch_size']}")
    if s["final_validation"] is None:  # nnU-Net's whole-volume validation with mirroring: minutes on a CPU
        s["final_validation"] = s["plans"] != "cpu"
    if s["oversample_foreground"] is None:
        # nnU-Net's 0.33 (with batch 2: one patch on an organ, one anywhere). Not more on CPU either: with
        # every patch on an organ (1.0) the small CPU patch learns faster, but never sees the thorax far from
        # the organs and predicts large false organs there on whole volumes.
        s["oversample_foreground"] = 0.33
    if not 0 <= s["oversample_foreground"] <= 1:
        raise ConfigError(f"oversample_foreground must be in [0, 1], got {s['oversample_foreground']}")
    # None: the run's own plan when continuing one (see api._start), else CPU_PLAN
    s["cpu_plan"] = None if s["cpu_plan"] is None else CpuPlan.from_settings(s["cpu_plan"]).as_dict()
    if s["plans"] != "cpu" and s["cpu_plan"] is not None:
        raise ConfigError(f"cpu_plan is a setting of --plans cpu; it does nothing with plans {s['plans']!r}")
    dataset_folder_name(s["dataset_id"], s["dataset_name"])  # validates
    return s


def check_settings(name: str, config: Mapping[str, Any], epochs: int | None = None) -> None:
    """The ``nnunet3d`` arm's up-front check (:class:`thoraxseg.arms.Arm`): resolve, raising ConfigError."""
    resolve_settings(config or None, epochs=epochs)
