"""Training of every arm (dispatched through :mod:`thoraxseg.arms`): the 2D networks here, nnU-Net in :mod:`thoraxseg.nnunet`.

Example::

    from thoraxseg.training import train
    train("enet", Path("cohort"), Path("runs/enet"), epochs=20, image_size=128)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thoraxseg.arms import get_arm
from thoraxseg.training.config import TrainConfig, load_yaml, resolve_config


def train(
    model: str,
    data: Path,
    out: Path,
    config: Mapping[str, Any] | Path | str | None = None,
    epochs: int | None = None,
    device: str = "cpu",
    **overrides: Any,
) -> Path:
    """Train one arm (any registered in :mod:`thoraxseg.arms`) into the run folder ``out``; resumes a run.

    Parameters
    ----------
    model
        A registered arm: ``enet``, ``customnet``, ``nnunet3d``, ...
    data
        Dataset root with labelled cases (SegTHOR layout).
    out
        Run folder (see :mod:`thoraxseg.training.trainer` for the 2D arms' contents).
    config
        Settings mapping or YAML file, applied over the defaults.
    epochs
        Overrides ``epochs`` of the config (2D default 100).
    device
        ``cpu``, ``cuda`` or ``cuda:N``.
    **overrides
        Settings of that arm; ``None`` values are ignored. 2D arms: any
        :class:`~thoraxseg.training.config.TrainConfig` setting (``batch_size=4``, ``lr=5e-4``,
        ``"augment.enabled"=False`` via ``**{...}``); ``nnunet3d``: any
        :class:`~thoraxseg.nnunet.settings.NnunetSettings` setting.

    Returns
    -------
    pathlib.Path
        The run folder.
    """
    arm = get_arm(model)
    return arm.train(Path(data), Path(out), config=config, epochs=epochs, device=device,
                     **{k: v for k, v in overrides.items() if v is not None})


def _resolved_2d(name: str, config: Mapping[str, Any] | Path | str | None, overrides: Mapping[str, Any]
                 ) -> TrainConfig:
    if isinstance(config, str | Path):
        config = load_yaml(config)
    base = dict(config or {})
    base.pop("model", None)
    return resolve_config(base, {**overrides, "model": name})


def check_2d_settings(name: str, config: Mapping[str, Any], epochs: int | None = None) -> None:
    """Check a 2D arm's settings mapping up front (types, ranges, unknown keys); raises ConfigError."""
    _resolved_2d(name, config, {"epochs": epochs})


def train_2d_arm(name: str, data: Path, out: Path, config: Mapping[str, Any] | Path | str | None = None,
                 epochs: int | None = None, device: str = "cpu", **overrides: Any) -> Path:
    """The ``enet``/``customnet`` arms' training: resolve the settings, then :func:`~thoraxseg.training.trainer.train_2d`."""
    cfg = _resolved_2d(name, config, {**overrides, "data": str(data), "out": str(out), "epochs": epochs,
                                      "device": device})
    from thoraxseg.training.trainer import train_2d

    return train_2d(cfg)


__all__ = ["TrainConfig", "check_2d_settings", "resolve_config", "train", "train_2d_arm"]
