"""The :class:`Arm` record and the registry (name → arm, in registration order)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thoraxseg.errors import ConfigError
from thoraxseg.utils.settings import choice

if TYPE_CHECKING:
    from thoraxseg.data.postprocess import Postprocess

#: A callable, or ``"package.module:function"`` imported on first use.
Impl = Callable[..., Any] | str


def _load(impl: Impl) -> Callable[..., Any]:
    if callable(impl):
        return impl
    module, _, attr = impl.partition(":")
    return getattr(importlib.import_module(module), attr)


#: Settings every arm takes from a ``thoraxseg train`` option of its own (``--seed``).
COMMON_TRAIN_SETTINGS: frozenset[str] = frozenset({"seed"})


@dataclass(frozen=True)
class TrainOption:
    """One arm-specific ``thoraxseg train`` flag and the arm setting it sets.

    >>> TrainOption("--no-augment", "augment.enabled", "disable augmentation", switch=False).dest
    'augment_enabled'
    """

    flag: str  #: e.g. ``"--batch-size"``
    setting: str  #: dotted settings key, e.g. ``"augment.enabled"``
    help: str
    type: Callable[[str], Any] = str  #: parses the flag's value (ignored for a switch)
    choices: tuple[str, ...] | None = None
    switch: bool | None = None  #: a flag without a value that sets this (``--amp``: True, ``--no-augment``: False)
    old_flags: tuple[str, ...] = ()  #: earlier spellings, still read (with a note)

    @property
    def dest(self) -> str:
        """The argparse destination (the setting with ``_`` for ``.``)."""
        return self.setting.replace(".", "_")


@dataclass(frozen=True)
class Arm:
    """One arm of the study: how to train it, predict with it and pack it into a bundle.

    Attributes
    ----------
    name
        The ``model:`` name (``RUN/config.yaml``, study files, ``--model``).
    description
        One line for help texts.
    train_impl
        ``(name, data, out, config=None, epochs=None, device="cpu", **settings) -> Path``: train (or
        resume) into the run folder ``out``, which must then hold ``config.yaml`` with ``model: <name>``.
    predict_impl
        ``(run, images, out, postprocess=True, device="cpu", **options) -> list[Path]``: write
        ``out/Patient_XX.nii.gz`` (uint8, source geometry) for every case under ``images``, cleaned by
        :func:`~thoraxseg.data.postprocess.clean_up` with ``postprocess``.
    files_impl
        ``(run, cfg) -> dict[str, Path]``: the files (bundle-relative name → path) prediction reads.
    facts_impl
        ``(run, cfg) -> dict``: what the model expects of its input (written into a bundle's manifest).
    check_impl
        ``(name, config, epochs) -> None``: check a settings mapping up front (before any work), raising
        :class:`~thoraxseg.errors.ConfigError`; None: nothing to check.
    train_options
        The arm's own ``thoraxseg train`` flags (:class:`TrainOption`); ``thoraxseg train`` and
        ``thoraxseg slurm train`` offer them, and refuse them for other arms.
    predict_options
        The keyword options of ``predict_impl`` beyond run/images/out/postprocess/device.
    packages
        Distributions whose major.minor version a bundle of this arm must match.
    launcher
        ``"torchrun"`` (data-parallel processes on SLURM) or ``"python"`` (one process).
    """

    name: str
    description: str
    train_impl: Impl
    predict_impl: Impl
    files_impl: Impl
    facts_impl: Impl | None = None
    check_impl: Impl | None = None
    train_options: tuple[TrainOption, ...] = ()
    predict_options: tuple[str, ...] = ()
    packages: tuple[str, ...] = ("thoraxseg", "torch")
    launcher: str = "python"

    @property
    def train_flags(self) -> frozenset[str]:
        """Settings this arm takes from ``thoraxseg train`` options: ``--seed`` and its own options."""
        return COMMON_TRAIN_SETTINGS | {o.setting for o in self.train_options}

    def train(self, data: Path, out: Path, config: Mapping[str, Any] | Path | str | None = None,
              epochs: int | None = None, device: str = "cpu", **settings: Any) -> Path:
        """Train into ``out``; see ``train_impl``."""
        return Path(_load(self.train_impl)(self.name, Path(data), Path(out), config=config, epochs=epochs,
                                           device=device, **settings))

    def predict(self, run: Path, images: Path, out: Path, postprocess: Postprocess = True, device: str = "cpu",
                **options: Any) -> list[Path]:
        """Predict every case of ``images``; options this arm does not take are refused (one line)."""
        given = {k: v for k, v in options.items() if v is not None}
        self.check_predict_options(given)
        return list(_load(self.predict_impl)(Path(run), Path(images), Path(out), postprocess=postprocess,
                                             device=device, **given))

    def check_predict_options(self, options: Mapping[str, Any]) -> None:
        """Refuse prediction options (not None) that this arm does not take (one ConfigError line)."""
        foreign = sorted(k for k, v in options.items() if v is not None and k not in self.predict_options)
        if foreign:
            takes = f"it takes {', '.join(self.predict_options)}" if self.predict_options else "it takes none"
            raise ConfigError(f"prediction option(s) {', '.join(foreign)} do not apply to {self.name} ({takes})")

    def files(self, run: Path, cfg: dict[str, Any]) -> dict[str, Path]:
        """Files a bundle of ``run`` packs (bundle-relative name → path)."""
        return dict(_load(self.files_impl)(Path(run), cfg))

    def facts(self, run: Path, cfg: dict[str, Any]) -> dict[str, Any]:
        """Preprocessing facts of ``run`` ({} when the arm states none)."""
        return dict(_load(self.facts_impl)(Path(run), cfg)) if self.facts_impl else {}

    def check(self, config: Mapping[str, Any] | None, epochs: int | None = None) -> None:
        """Check settings before any work starts (raises ConfigError)."""
        if self.check_impl is not None:
            _load(self.check_impl)(self.name, dict(config or {}), epochs)


_REGISTRY: dict[str, Arm] = {}


def register_arm(arm: Arm, replace: bool = False) -> Arm:
    """Add ``arm`` to the registry (``replace`` to redefine an existing name); returns it."""
    if not arm.name or not arm.name.isidentifier():
        raise ValueError(f"arm name must be an identifier, got {arm.name!r}")
    if arm.launcher not in ("python", "torchrun"):
        raise ValueError(f"arm {arm.name}: launcher must be python or torchrun, got {arm.launcher!r}")
    if arm.name in _REGISTRY and not replace:
        raise ValueError(f"arm {arm.name!r} is already registered")
    _REGISTRY[arm.name] = arm
    return arm


def unregister_arm(name: str) -> None:
    """Remove an arm (tests)."""
    _REGISTRY.pop(name, None)


def arm_names() -> tuple[str, ...]:
    """Registered arm names, in registration order (built-ins first)."""
    return tuple(_REGISTRY)


def get_arm(name: str, where: str = "model") -> Arm:
    """The arm called ``name`` (case-insensitive); ConfigError naming ``where``, the value and the nearest name."""
    key = str(name).lower()
    return _REGISTRY[choice(key if key in _REGISTRY else name, arm_names(), where)]
