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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thoraxseg.errors import ConfigError
from thoraxseg.labels import organ_from_name
from thoraxseg.utils.yamlfile import read_yaml_mapping

ARM_MODELS = ("enet", "customnet", "nnunet3d")


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
        if not isinstance(raw, dict):
            raise ConfigError(f"{source or 'study config'}: expected a mapping at the top level")
        known = {"name", "seed", "device", "data", "realign", "arms", "postprocess", "tolerance_mm", "workers",
                 "threads", "n_boot", "unpaired"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source or 'study config'}: unknown keys: {', '.join(unknown)}")
        data = DataSection(**(raw.get("data") or {}))
        if data.root is None and data.phantom is None:
            raise ConfigError(f"{source or 'study config'}: data needs `root` (a dataset) or `phantom` (generate one)")
        if data.root is not None and base_dir is not None and not Path(data.root).is_absolute():
            data.root = str((base_dir / data.root).resolve())
        realign = RealignSection(**(raw.get("realign") or {}))
        organ_from_name(realign.label)  # validates
        if realign.enabled not in ("auto", True, False, "true", "false"):
            raise ConfigError(f"realign.enabled must be auto, true or false, not {realign.enabled!r}")
        if realign.method not in ("sweep", "elastix", "qa"):
            raise ConfigError(f"realign.method must be sweep, elastix or qa, not {realign.method!r}")
        if realign.method == "qa":
            if not isinstance(realign.qa_run, str) or not realign.qa_run:
                raise ConfigError(f"realign.method qa needs realign.qa_run (a trained run folder), got "
                                  f"{realign.qa_run!r}")
            if base_dir is not None and not Path(realign.qa_run).is_absolute():
                realign.qa_run = str((base_dir / realign.qa_run).resolve())
        elif realign.qa_run is not None:
            raise ConfigError(f"realign.qa_run is only used with realign.method: qa (method is {realign.method!r})")
        arms: dict[str, ArmSection] = {}
        for name, spec in (raw.get("arms") or {}).items():
            spec = dict(spec or {})
            spec.setdefault("model", name)
            if spec["model"] not in ARM_MODELS:
                raise ConfigError(f"arm {name!r}: model must be one of {', '.join(ARM_MODELS)}")
            arms[name] = ArmSection(**spec)
        if not arms:
            raise ConfigError(f"{source or 'study config'}: no arms to train")
        device = str(raw.get("device", "cpu"))
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, not {device!r}")
        threads = raw.get("threads")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"{source or 'study config'}: threads must be a positive integer, not {threads!r}")
        return cls(
            name=str(raw.get("name", "study")), seed=int(raw.get("seed", 0)), device=device, data=data,
            realign=realign, arms=arms, postprocess=bool(raw.get("postprocess", True)),
            tolerance_mm=float(raw.get("tolerance_mm", 2.0)), workers=int(raw.get("workers", 2)),
            threads=threads, n_boot=int(raw.get("n_boot", 2000)), unpaired=bool(raw.get("unpaired", False)), source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file."""
    p = Path(path)
    raw = read_yaml_mapping(p, missing="study config not found")
    try:
        return StudyConfig.from_dict(raw, base_dir=p.parent, source=str(p))
    except TypeError as exc:  # unknown key inside a section
        raise ConfigError(f"{p}: {exc}") from None
