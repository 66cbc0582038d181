"""Training configuration of the 2D arms: defaults, YAML loading, merging and resolution.

A run's settings come from, in increasing priority: the defaults of
:class:`TrainConfig` (the seed's settings), a YAML file (``--config``), and
explicit overrides (CLI options / keyword arguments). The fully resolved
configuration is written to ``RUN/config.yaml`` and is what a resumed run
compares against.

A config mapping may hold per-model sections (``enet: {width: 16}``,
``customnet: {width: 8}``) that apply only when that model is trained, so one file
serves both arms.

Override keys may be top-level field names (``epochs``), dotted paths
(``optim.lr``, ``loss.class_weights.esophagus``) or, for convenience, a field
name that is unique within one section (``lr`` → ``optim.lr``).

Examples
--------
>>> cfg = resolve_config({"model": "customnet", "data": "/d", "out": "/r"}, {"lr": 5e-4, "epochs": 3})
>>> cfg.optim.lr, cfg.epochs, cfg.width, cfg.loss.class_weights["esophagus"]
(0.0005, 3, 64, 0.3)
>>> resolve_config({"epochs": 5, "enet": {"width": 8}, "customnet": {"width": 4}}, {"model": "enet"}).width
8
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from thoraxseg.arms import SCHEDULES, arm_names
from thoraxseg.errors import ConfigError
from thoraxseg.losses import DEFAULT_CLASS_WEIGHTS
from thoraxseg.networks import MODELS_2D, SIZE_MULTIPLE
from thoraxseg.utils.settings import build_dataclass, is_device
from thoraxseg.utils.yamlfile import read_yaml_mapping

#: How slices reach the network grid (see :class:`TrainConfig`, ``preprocessing``).
PREPROCESSING: tuple[str, ...] = ("spacing", "square")


@dataclass
class LossConfig:
    """``dice_weight · Dice + ce_weight · CE``; Dice weights per class name (see :mod:`thoraxseg.losses.dice_ce`).

    ``ce_balanced``: weight the cross-entropy by ``1/√frequency`` of each class in the training
    slices (off in the seed; helps short runs find small organs such as the trachea).
    """

    dice_weight: float = 0.7
    ce_weight: float = 0.3
    class_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CLASS_WEIGHTS))
    eps: float = 1e-5
    ce_balanced: bool = False


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (stepped once per epoch).

    ``schedule``: ``none`` (constant), ``cosine`` (from ``lr`` down to ``min_lr`` at the last
    epoch) or ``poly`` (``lr · (1 − epoch/epochs)^poly_power``, nnU-Net style).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    schedule: str = "none"
    min_lr: float = 0.0
    poly_power: float = 0.9


@dataclass
class AugmentConfig:
    """Random in-plane augmentation of training slices (validation and prediction are never augmented).

    Spatial (applied with probability ``prob``): rotation uniform in ``±rotation_deg``
    degrees, isotropic scaling uniform in ``scale``, translation uniform in
    ``±translate`` × slice side. Intensity (always): Gaussian noise of ``noise_std``
    (HU/1000, i.e. 0.01 = 10 HU), then, on the windowed input, a contrast factor uniform in
    ``intensity_scale`` and an offset uniform in ``±intensity_shift`` (window units;
    0.05 = 50 HU with the window −1000…1000). Field of view (with probability ``fov_prob``,
    ``preprocessing: spacing`` only): everything outside a random, nearly square rectangle
    (side log-uniform from ``fov_min_mm`` to the whole crop, so a 200 mm cardiac field of view
    is drawn as often as a 500 mm one), centred near the slice's organs, becomes air
    and background — as in a scan reconstructed or cropped to a small field of view, which
    then reaches the network padded with air. No flips:
    a left-right flip moves heart and aortic arch to the wrong side and an
    anterior-posterior flip puts the heart behind the spine — neither is anatomy.
    """

    enabled: bool = True
    prob: float = 0.8
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.05
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: float = 0.05
    noise_std: float = 0.01
    # 0.6, not 0.3: over 4 training seeds per arm (benchmarks/spacing2d.py, README) the 200 mm crop's aorta
    # Δ to the training grid went −0.076 → −0.013 (CustomNet) and −0.062 → −0.045 (ENet), the training grid's
    # mean Dice unchanged within the seeds' spread
    fov_prob: float = 0.6
    fov_min_mm: float = 150.0


@dataclass
class TrainConfig:
    """All settings of a 2D training run (the seed's values are the defaults).

    Attributes
    ----------
    model
        ``enet`` or ``customnet`` (``nnunet3d`` runs are delegated before this is built).
    data
        Dataset root (any layout with labelled cases, see :func:`thoraxseg.data.layout.discover_cases`).
    out
        Run folder.
    seed
        Seeds the patient split, weight initialisation, data order and augmentation.
    epochs
        Number of epochs (one epoch = one pass over the training slices, or
        ``samples_per_epoch`` random slices).
    batch_size
        Slices per optimisation step (per process under DDP).
    width
        Network width (``None``: ENet 16, CustomNet 64).
    dropout
        ENet spatial dropout after stage 1 (stage 1 uses a tenth).
    image_size
        Side (pixels) of the square training crops (and the smallest prediction grid).
    preprocessing
        ``spacing`` (default): every slice is resampled to the pixel size ``spacing_mm``, padded
        with air to at least ``image_size`` and, in training, cropped to ``image_size`` — a
        pixel is the same number of mm on every scan. ``square``: the pre-0.2 policy, pad to a
        square and resize to ``image_size`` (the pixel size then depends on the field of view).
    spacing_mm
        In-plane pixel size in mm of ``preprocessing: spacing`` (``None``: derived from the
        training images so that their median field of view just fills ``image_size`` pixels;
        the derived value is written to ``config.yaml``).
    windows
        CT windows in HU, ``[(low, high), ...]``, one input channel each: HU are clipped to the
        window and mapped linearly to [−1, 1]. A window must keep air and lung apart (trachea
        ≈ −950 HU inside lungs ≈ −850 HU).
    val_fraction
        Fraction of patients held out for validation (at least one), when ``val_cases`` is empty.
    val_cases
        Explicit validation patient IDs (overrides ``val_fraction``).
    samples_per_epoch
        Random training slices per epoch (``None``: all slices, each once).
    num_workers
        DataLoader worker processes (0: load in the main process; unused with ``cache_on_gpu``).
    cache_on_gpu
        Keep the preprocessed training slices in GPU memory and gather batches there
        (``None``: whenever training on CUDA; 256×256 float16 slices take 128 KiB each).
    val_batch_size
        Slices per forward pass when validating.
    threads
        CPU threads of torch's intra-op pool (``None``: torch's default, one per core). On a
        machine shared with other busy processes, fewer threads than cores can be much faster.
    device
        ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each process takes its ``LOCAL_RANK`` GPU).
    amp
        bfloat16 autocast on CUDA (ignored on CPU).
    """

    model: str = "enet"
    data: str = ""
    out: str = ""
    seed: int = 0
    epochs: int = 100
    batch_size: int = 8
    width: int | None = None
    dropout: float = 0.1
    image_size: int = 256
    preprocessing: str = "spacing"
    spacing_mm: float | None = None
    windows: list[tuple[float, float]] = field(default_factory=lambda: [(-1000.0, 1000.0)])
    val_fraction: float = 0.2
    val_cases: list[str] = field(default_factory=list)
    samples_per_epoch: int | None = None
    num_workers: int = 0
    cache_on_gpu: bool | None = None
    val_batch_size: int = 32
    threads: int | None = None
    device: str = "cpu"
    amp: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as written to ``config.yaml``."""
        return _plain(dataclasses.asdict(self))


#: Keys that may differ between a run and its resumption (they do not change the result on one device).
RESUME_FREE_KEYS: frozenset[str] = frozenset({"epochs", "device", "num_workers", "cache_on_gpu", "val_batch_size",
                                              "threads", "out"})


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; raises :class:`ConfigError` naming the file when it is unusable."""
    return read_yaml_mapping(path)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces).

    >>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: t for name, t in hints.items() if dataclasses.is_dataclass(t)}


def _expand_key(key: str) -> list[str]:
    """``"optim.lr"`` → ``["optim", "lr"]``; a bare section field (``"lr"``) → its section path."""
    if "." in key:
        return key.split(".")
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    if key in top:
        return [key]
    owners = [s for s, t in _sections().items() if key in {f.name for f in dataclasses.fields(t)}]
    if len(owners) == 1:
        return [owners[0], key]
    if len(owners) > 1:
        raise ConfigError(f"setting {key!r} is ambiguous; write one of {', '.join(f'{o}.{key}' for o in owners)}")
    raise ConfigError(f"unknown setting {key!r}; valid top-level settings: {', '.join(sorted(top))}")


def overrides_to_nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"optim.lr": 1e-3, "batch_size": 4}`` into a nested mapping (``None`` values are dropped).

    >>> overrides_to_nested({"lr": 0.01, "augment.enabled": False, "epochs": None})
    {'optim': {'lr': 0.01}, 'augment': {'enabled': False}}
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        path = _expand_key(key)
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return nested


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check values and fill model-dependent defaults (``width``). Raises :class:`ConfigError`."""
    cfg.model = cfg.model.lower()
    if cfg.model not in MODELS_2D:
        raise ConfigError(f"model {cfg.model!r} is not a 2D model; expected one of {', '.join(MODELS_2D)}")
    if cfg.width is None:
        cfg.width = MODELS_2D[cfg.model]
    multiple = SIZE_MULTIPLE[cfg.model]
    checks = [
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.width >= 2, "width must be >= 2"),
        (cfg.image_size >= multiple and cfg.image_size % multiple == 0,
         f"image_size must be a positive multiple of {multiple} for {cfg.model}"),
        (cfg.preprocessing in PREPROCESSING, f"preprocessing must be one of {', '.join(PREPROCESSING)}"),
        (cfg.spacing_mm is None or (math.isfinite(cfg.spacing_mm) and cfg.spacing_mm > 0),
         f"spacing_mm must be a positive number of mm, got {cfg.spacing_mm!r}"),
        (cfg.spacing_mm is None or cfg.preprocessing == "spacing",
         "spacing_mm applies to preprocessing: spacing only (preprocessing: square resizes each slice)"),
        (len(cfg.windows) >= 1 and all(w[0] < w[1] for w in cfg.windows),
         "windows must be a list of (low, high) HU with low < high"),
        (0.0 < cfg.val_fraction < 1.0, "val_fraction must be in (0, 1)"),
        (cfg.samples_per_epoch is None or cfg.samples_per_epoch >= 1, "samples_per_epoch must be >= 1"),
        (cfg.num_workers >= 0, "num_workers must be >= 0"),
        (cfg.val_batch_size >= 1, "val_batch_size must be >= 1"),
        (cfg.threads is None or cfg.threads >= 1, "threads must be >= 1"),
        (0.0 <= cfg.dropout < 1.0, "dropout must be in [0, 1)"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.optim.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}"),
        (cfg.loss.dice_weight >= 0 and cfg.loss.ce_weight >= 0 and cfg.loss.dice_weight + cfg.loss.ce_weight > 0,
         "loss.dice_weight and loss.ce_weight must be >= 0 and not both 0"),
        (set(cfg.loss.class_weights) <= set(DEFAULT_CLASS_WEIGHTS),
         f"loss.class_weights keys must be among {', '.join(DEFAULT_CLASS_WEIGHTS)}"),
        (all(v >= 0 for v in cfg.loss.class_weights.values()) and sum(cfg.loss.class_weights.values()) > 0,
         "loss.class_weights must be >= 0 and not all 0"),
        (0.0 <= cfg.augment.prob <= 1.0, "augment.prob must be in [0, 1]"),
        (0 < cfg.augment.scale[0] <= cfg.augment.scale[1], "augment.scale must be (low, high) with 0 < low <= high"),
        (0.0 <= cfg.augment.fov_prob <= 1.0, f"augment.fov_prob must be in [0, 1], got {cfg.augment.fov_prob!r}"),
        (cfg.augment.fov_min_mm > 0, f"augment.fov_min_mm must be > 0 mm, got {cfg.augment.fov_min_mm!r}"),
        (is_device(cfg.device), f"device must be cpu, cuda or cuda:N, got {cfg.device!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    cfg.loss.class_weights = {**DEFAULT_CLASS_WEIGHTS, **cfg.loss.class_weights}
    if cfg.data:
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    if cfg.out:
        cfg.out = str(Path(cfg.out).expanduser().resolve())
    return cfg


def resolve_config(
    config: Mapping[str, Any] | str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Defaults ← ``config`` (mapping or YAML path) ← ``overrides``; validated, paths made absolute.

    Raises
    ------
    ConfigError
        Unknown keys, wrong types or invalid values (one line naming the setting).
    """
    base: dict[str, Any] = {}
    if isinstance(config, str | Path):
        base = load_yaml(config)
    elif config is not None:
        base = dict(config)
    nested = overrides_to_nested(overrides or {})
    sections = {name: base.pop(name) for name in arm_names() if name in base}
    model = str(nested.get("model", base.get("model", TrainConfig.model))).lower()
    for name, section in sections.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"setting {name}: expected a mapping of settings for that model, got {section!r}")
        if name == model:
            base = deep_merge(base, section)
    merged = deep_merge(base, nested)
    return validate(build_dataclass(TrainConfig, merged))


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from a resolved dict (``config.yaml`` or a checkpoint)."""
    return validate(build_dataclass(TrainConfig, data))


def dump_yaml(cfg: TrainConfig) -> str:
    """The YAML text of ``RUN/config.yaml`` (``model`` first, then the rest in field order)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: frozenset[str] = RESUME_FREE_KEYS,
                       prefix: str = "") -> list[str]:
    """Human-readable list of settings that differ (``"optim.lr: 0.001 -> 0.01"``), ignoring ``ignore``.

    >>> config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: 2 -> 3']
    """
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs.extend(config_differences(a, b, ignore, f"{name}."))
        elif _plain(a) != _plain(b):
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs
