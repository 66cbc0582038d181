"""Study configuration (YAML) with defaults, validation and resolution.

A study file names the data (an existing SegTHOR copy or a phantom cohort to
generate), the label fix, the arms to train and the evaluation settings. See
``configs/demo.yaml`` and ``configs/segthor_gpu.yaml``.

Examples
--------
>>> cfg = StudyConfig.from_dict({"data": {"phantom": {"cases": 8}}, "arms": {"enet": {"model": "enet"}}})
>>> cfg.data.phantom["cases"], cfg.data.test_cases, list(cfg.arms)
(8, 4, ['enet'])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thoraxseg.arms import get_arm
from thoraxseg.errors import ConfigError
from thoraxseg.labels import organ_from_name
from thoraxseg.utils.settings import build_dataclass, choice, is_device, unknown_message
from thoraxseg.utils.yamlfile import read_yaml_mapping


@dataclass
class DataSection:
    """Where the cases come from and how they are split (patient level)."""

    root: str | None = None  #: existing dataset (SegTHOR layout); relative to the config file
    phantom: dict[str, Any] | None = None  #: generate_cohort kwargs: cases, size, seed, corrupt_heart
    test_cases: int = 4  #: held-out labelled patients for evaluation
    split_seed: int = 0


@dataclass
class RealignSection:
    """Label fix: ``enabled`` is ``auto``, ``true`` or ``false``.

    ``auto`` estimates the fix on a reference pair (``GT.nii.gz`` + a clean label, any of
    :data:`thoraxseg.data.layout.CLEAN_LABEL_NAMES`: ``GT_clean.nii.gz`` or the course's
    ``GT2.nii.gz``) whose ``GT.nii.gz`` looks moved; without one it stops the study when ``check``
    flags the label anywhere. ``true`` requires a pair and always applies; ``false`` trains on the
    labels as they are.

    ``method: qa`` needs no reference pair: ``thoraxseg qa`` judges every label against the
    prediction of the trained run ``qa_run`` (a run folder, relative to the config file; trained on
    phantoms, on another dataset, …) and applies the fixes its gate accepts (``realign/qa/``).
    """

    enabled: str | bool = "auto"
    label: str = "heart"
    method: str = "sweep"  #: sweep or elastix (estimate on the reference pair), or qa (no pair needed)
    reference: str | None = None  #: patient ID of the reference pair; default: the first case that has one
    qa_run: str | None = None  #: with method qa: the trained run whose predictions are the reference


@dataclass
class ArmSection:
    """One arm: a model and its training/prediction options (passed through to the trainer)."""

    model: str
    epochs: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  #: trainer config overrides
    predict: dict[str, Any] = field(default_factory=dict)  #: predictor options (e.g. tta, step)


@dataclass
class StudyConfig:
    """A whole study. ``device`` is ``cpu`` or ``cuda``; ``seed`` seeds every stage."""

    name: str = "study"
    seed: int = 0
    device: str = "cpu"
    data: DataSection = field(default_factory=DataSection)
    realign: RealignSection = field(default_factory=RealignSection)
    arms: dict[str, ArmSection] = field(default_factory=dict)
    postprocess: bool = True
    tolerance_mm: float = 2.0
    workers: int = 2
    #: torch CPU threads for every stage (``None``: torch's default, one per core). On a machine whose
    #: other cores are busy, fewer threads than cores avoid torch's thread pool thrashing.
    threads: int | None = None
    n_boot: int = 2000
    unpaired: bool = False
    source: str | None = None  #: the file it was read from

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: Path | None = None, source: str | None = None) -> StudyConfig:
        """Build and check a study from its YAML mapping; every value is checked here, before any stage runs.

        Raises :class:`~thoraxseg.errors.ConfigError` (one line: the file, the setting, the bad value;
        unknown keys with the nearest valid name).
        """
        where = source or "study config"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level")
        try:
            return cls._build(raw, base_dir, source)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def _build(cls, raw: dict[str, Any], base_dir: Path | None, source: str | None) -> StudyConfig:
        unknown = set(map(str, raw)) - set(_FIELDS)
        if unknown:
            raise ConfigError(unknown_message(unknown, _FIELDS))
        top = {k: v for k, v in raw.items() if k not in ("data", "realign", "arms")}
        cfg: StudyConfig = build_dataclass(cls, top)
        cfg.source = source
        cfg.data = build_dataclass(DataSection, raw.get("data") or {}, "data.")
        cfg.realign = build_dataclass(RealignSection, raw.get("realign") or {}, "realign.")
        arms_raw = raw.get("arms") or {}
        if not isinstance(arms_raw, dict):
            raise ConfigError(f"setting arms: expected a mapping of arm name to settings, got {arms_raw!r}")
        for name, spec in arms_raw.items():
            spec = dict(spec or {})
            spec.setdefault("model", name)
            get_arm(spec["model"], where=f"arm {name!r}: model")
            cfg.arms[str(name)] = build_dataclass(ArmSection, spec, f"arms.{name}.")
        cfg._check(base_dir)
        return cfg

    def _check(self, base_dir: Path | None) -> None:
        data, realign = self.data, self.realign
        if data.root is None and data.phantom is None:
            raise ConfigError("data needs `root` (a dataset) or `phantom` (generate one)")
        if data.root is not None and base_dir is not None and not Path(data.root).is_absolute():
            data.root = str((base_dir / data.root).resolve())
        organ_from_name(realign.label)  # validates
        if isinstance(realign.enabled, str):
            enabled = choice(realign.enabled.lower(), ("auto", "true", "false"), "realign.enabled")
            realign.enabled = {"true": True, "false": False}.get(enabled, enabled)
        choice(realign.method, ("sweep", "elastix", "qa"), "realign.method")
        if realign.method == "qa":
            if not realign.qa_run:
                raise ConfigError(f"realign.method qa needs realign.qa_run (a trained run folder), got "
                                  f"{realign.qa_run!r}")
            if base_dir is not None and not Path(realign.qa_run).is_absolute():
                realign.qa_run = str((base_dir / realign.qa_run).resolve())
        elif realign.qa_run is not None:
            raise ConfigError(f"realign.qa_run is only used with realign.method: qa (method is {realign.method!r})")
        if not self.arms:
            raise ConfigError("no arms to train")
        checks = [
            (is_device(self.device),
             f"device must be cpu, cuda or cuda:N, not {self.device!r}"),
            (data.test_cases >= 1, f"data.test_cases must be >= 1, not {data.test_cases!r}"),
            (self.threads is None or self.threads >= 1, f"threads must be a positive integer, not {self.threads!r}"),
            (self.workers >= 1, f"workers must be >= 1 (processes), not {self.workers!r}"),
            (self.n_boot >= 1, f"n_boot must be >= 1 (bootstrap resamples), not {self.n_boot!r}"),
            (math.isfinite(self.tolerance_mm) and self.tolerance_mm >= 0,
             f"tolerance_mm must be a finite number of mm >= 0, not {self.tolerance_mm!r}"),
            *((arm.epochs is None or arm.epochs >= 1, f"arm {name!r}: epochs must be >= 1, not {arm.epochs!r}")
              for name, arm in self.arms.items()),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name, arm_section in self.arms.items():  # each arm's own settings, before any stage runs
            arm = get_arm(arm_section.model)
            try:
                arm.check(arm_section.config, arm_section.epochs)
                arm.check_predict_options(arm_section.predict)
            except ConfigError as exc:
                raise ConfigError(f"arm {name!r} ({arm.name}): {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d


#: Keys of a study file's top level.
_FIELDS = tuple(f.name for f in dataclasses.fields(StudyConfig) if f.name != "source")


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file."""
    p = Path(path)
    raw = read_yaml_mapping(p, missing="study config not found")
    return StudyConfig.from_dict(raw, base_dir=p.parent, source=str(p))
