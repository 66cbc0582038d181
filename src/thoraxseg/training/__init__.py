"""Training of every arm: the 2D networks here, nnU-Net delegated to :mod:`thoraxseg.nnunet`.

Example::

    from thoraxseg.training import train
    train("enet", Path("cohort"), Path("runs/enet"), epochs=20, image_size=128)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thoraxseg.errors import ConfigError
from thoraxseg.training.config import MODEL_NAMES, TrainConfig, load_yaml, resolve_config

#: Options that only the nnU-Net arm understands (passed through to ``train_nnunet``).
NNUNET_OPTIONS: tuple[str, ...] = ("folds", "iterations_per_epoch", "plans")


def train(
    model: str,
    data: Path,
    out: Path,
    config: Mapping[str, Any] | Path | str | None = None,
    epochs: int | None = None,
    device: str = "cpu",
    **overrides: Any,
) -> Path:
    """Train one arm into the run folder ``out`` (resuming from ``out/last.pt`` when present).

    Parameters
    ----------
    model
        ``enet``, ``customnet`` or ``nnunet3d``.
    data
        Dataset root with labelled cases (SegTHOR layout).
    out
        Run folder (see :mod:`thoraxseg.training.trainer` for its contents).
    config
        Settings mapping or YAML file, applied over the defaults.
    epochs
        Overrides ``epochs`` of the config (default 100).
    device
        ``cpu``, ``cuda`` or ``cuda:N``.
    **overrides
        Any :class:`~thoraxseg.training.config.TrainConfig` setting (``batch_size=4``,
        ``lr=5e-4``, ``"augment.enabled"=False`` via ``**{...}``); ``None`` values are
        ignored. For ``nnunet3d``: ``folds``, ``iterations_per_epoch``, ``plans``.

    Returns
    -------
    pathlib.Path
        The run folder.
    """
    name = model.lower()
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")
    if name == "nnunet3d":
        from thoraxseg.nnunet.api import train_nnunet

        passthrough = {k: v for k, v in overrides.items() if v is not None}
        return train_nnunet(Path(data), Path(out), config=config, epochs=epochs, device=device, **passthrough)
    extra = sorted(k for k in NNUNET_OPTIONS if overrides.get(k) is not None)
    if extra:
        raise ConfigError(f"option(s) {', '.join(extra)} apply to nnunet3d only, not {name}")
    settings = {k: v for k, v in overrides.items() if k not in NNUNET_OPTIONS}
    if isinstance(config, str | Path):
        config = load_yaml(config)
    base = dict(config or {})
    base.pop("model", None)
    cfg = resolve_config(base, {**settings, "model": name, "data": str(data), "out": str(out),
                                "epochs": epochs, "device": device})
    from thoraxseg.training.trainer import train_2d

    return train_2d(cfg)


__all__ = ["MODEL_NAMES", "NNUNET_OPTIONS", "TrainConfig", "resolve_config", "train"]
