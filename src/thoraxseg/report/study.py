"""Reading a study folder for the report, tolerating missing stages.

The layout is the one written by ``thoraxseg study`` (see ``docs/dev/contracts.md``).
Nothing here raises for a stage that did not run: the corresponding attribute is
``None`` (or empty) and the report says "not run". A file that exists but cannot
be parsed is recorded in :attr:`Study.problems` and shown in the report.

Volumes for figures are read through :mod:`thoraxseg.data.volume` and then
reoriented to the closest canonical (RAS+) orientation with nibabel, so every
figure has the same anatomical orientation whatever the file's affine:
array axes ``(x, y, z)`` = (towards patient Right, Anterior, Superior).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from thoraxseg.arms import arm_names
from thoraxseg.data.layout import Case, StudyLayout, discover_cases, read_stage_timings
from thoraxseg.data.volume import load_image, load_label, to_ras
from thoraxseg.errors import InputError, ThoraxsegError


def _natural_key(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


@dataclass
class Study:
    """Everything the report needs from a study folder (``None`` = stage not run).

    Attributes
    ----------
    root
        The study folder.
    config_text
        ``study.yaml`` as text.
    check, check_fixed
        ``check.json`` (on ``data/raw``) and ``check_fixed.json`` (after the label fix) content.
    fix, apply
        ``realign/fix.json`` and ``realign/apply.json`` content.
    overlay_png
        ``realign/overlay.png`` bytes when the study wrote one.
    qa, qa_overlays
        ``realign/qa/qa.json`` content (``realign.method: qa``) and its before/after overlays
        (``realign/qa/overlays/*.png``: file stem → PNG bytes).
    split
        ``data/split.json`` content.
    arms
        Arm names (folders under ``arms/``) in display order.
    metrics, logs
        Per-arm ``metrics.csv`` and ``run/log.csv`` tables (arms without one are absent).
    run_configs
        Per-arm resolved ``run/config.yaml`` (arms without one are absent).
    stats, shift
        ``compare/stats.csv`` and ``compare/shift.csv`` tables.
    timings
        Seconds per finished stage, in the order the stages finished (``.stages/*.json``).
    problems
        Files that exist but could not be read (``path: problem``).
    """

    root: Path
    config_text: str | None = None
    check: Any = None
    check_fixed: Any = None
    fix: Any = None
    apply: Any = None
    overlay_png: bytes | None = None
    qa: Any = None
    qa_overlays: dict[str, bytes] = field(default_factory=dict)
    split: Any = None
    phantom: Any = None
    arms: list[str] = field(default_factory=list)
    metrics: dict[str, pd.DataFrame] = field(default_factory=dict)
    logs: dict[str, pd.DataFrame] = field(default_factory=dict)
    run_configs: dict[str, dict] = field(default_factory=dict)
    stats: pd.DataFrame | None = None
    shift: pd.DataFrame | None = None
    summary_txt: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def layout(self) -> StudyLayout:
        """Where the study's files are (:class:`thoraxseg.data.layout.StudyLayout`)."""
        return StudyLayout(self.root)

    @property
    def synthetic(self) -> bool:
        """True when the input cohort is the built-in phantom (``phantom.json`` or the config says so)."""
        if self.phantom is not None:
            return True
        return bool(self.config_text and re.search(r"\bphantom\b", self.config_text))

    def compare_settings(self) -> dict[str, Any]:
        """The study's ``seed``, ``n_boot`` and ``unpaired`` (from ``study.yaml``; absent keys left out)."""
        import yaml

        try:
            cfg = yaml.safe_load(self.config_text or "") or {}
        except yaml.YAMLError:
            return {}
        if not isinstance(cfg, dict):
            return {}
        return {k: cfg[k] for k in ("seed", "n_boot", "unpaired") if k in cfg}

    def raw_cases(self) -> list[Case]:
        """Cases of ``data/raw`` (empty when absent or unreadable)."""
        return self._cases(self.layout.raw)

    def fixed_cases(self) -> list[Case]:
        """Cases of ``data/fixed`` (empty when absent)."""
        return self._cases(self.layout.fixed)

    def test_cases(self) -> list[Case]:
        """Held-out cases with images and GT: ``data/testset``, else the split's test IDs in ``data/fixed``."""
        cases = [c for c in self._cases(self.layout.testset) if c.label_path is not None]
        if cases:
            return cases
        test_ids = set(self.split.get("test", [])) if isinstance(self.split, dict) else set()
        return [c for c in self.fixed_cases() or self.raw_cases() if c.patient_id in test_ids and c.label_path]

    def prediction_path(self, arm: str, patient: str) -> Path | None:
        """``arms/<arm>/pred/<patient>.nii.gz`` (or ``.nii``) when it exists."""
        for suffix in (".nii.gz", ".nii"):
            p = self.layout.pred(arm) / f"{patient}{suffix}"
            if p.is_file():
                return p
        return None

    def _cases(self, folder: Path) -> list[Case]:
        if not folder.is_dir():
            return []
        try:
            return discover_cases(folder)
        except ThoraxsegError as exc:
            self._problem(folder, str(exc))
            return []

    def _problem(self, path: Path, problem: str) -> None:
        text = f"{path}: {problem}" if str(path) not in problem else problem
        if text not in self.problems:
            self.problems.append(text)


def _read_json(study: Study, path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        study._problem(path, f"unreadable JSON ({exc})")
        return None


def _read_csv(study: Study, path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        study._problem(path, f"unreadable CSV ({type(exc).__name__})")
        return None
    return df


def load_study(root: str | Path) -> Study:
    """Read a study folder (see module docstring).

    Raises
    ------
    InputError
        If ``root`` is not a folder.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(base, "study folder not found")
    study = Study(root=base)
    lay = study.layout
    cfg = lay.config
    if cfg.is_file():
        study.config_text = cfg.read_text(encoding="utf-8", errors="replace")
    study.check = _read_json(study, lay.check)
    study.check_fixed = _read_json(study, lay.check_fixed)
    study.fix = _read_json(study, lay.realign / "fix.json")
    study.apply = _read_json(study, lay.realign / "apply.json")
    overlay = lay.realign / "overlay.png"
    if overlay.is_file():
        data = overlay.read_bytes()
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            study.overlay_png = data
        else:
            study._problem(overlay, "not a PNG file")
    study.qa = _read_json(study, lay.qa / "qa.json")
    qa_figs = lay.qa / "overlays"
    if qa_figs.is_dir():
        for png in sorted(qa_figs.glob("*.png"), key=lambda p: _natural_key(p.name)):
            data = png.read_bytes()
            if data[:8] == b"\x89PNG\r\n\x1a\n":
                study.qa_overlays[png.stem] = data
            else:
                study._problem(png, "not a PNG file")
    study.split = _read_json(study, lay.split)
    study.phantom = _read_json(study, lay.phantom_json)
    arms_dir = lay.arms
    order = arm_names()  # the registry's order (built-in arms first); other folders follow, naturally sorted
    names = sorted((p.name for p in arms_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                   key=lambda n: (order.index(n) if n in order else len(order), _natural_key(n))) \
        if arms_dir.is_dir() else []
    study.arms = names
    from thoraxseg.stats.compare import validate_metrics

    for arm in names:
        df = _read_csv(study, lay.metrics(arm))
        if df is not None:
            try:
                study.metrics[arm] = validate_metrics(df, lay.metrics(arm))
            except InputError as exc:
                study._problem(lay.metrics(arm), str(exc))
        log = _read_csv(study, lay.run(arm) / "log.csv")
        if log is not None and "epoch" in log.columns and len(log):
            study.logs[arm] = log
        elif log is not None:
            study._problem(lay.run(arm) / "log.csv", "no epoch column or no rows")
        cfg_path = lay.run(arm) / "config.yaml"
        if cfg_path.is_file():
            try:
                cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                study._problem(cfg_path, f"unreadable ({type(exc).__name__})")
            else:
                if isinstance(cfg, dict):
                    study.run_configs[arm] = cfg
    study.stats = _read_csv(study, lay.compare / "stats.csv")
    study.shift = _read_csv(study, lay.compare / "shift.csv")
    summary = lay.compare / "summary.txt"
    if summary.is_file():
        study.summary_txt = summary.read_text(encoding="utf-8", errors="replace")
    study.timings = read_stage_timings(base, study._problem)
    return study


@dataclass
class Canonical:
    """A volume reoriented to RAS+ (axes: towards Right, Anterior, Superior), with its spacing in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]


def to_canonical(array: np.ndarray, affine: np.ndarray) -> Canonical:
    """Reorient ``array`` (axes ``(x, y, z)`` with ``affine``) to RAS+ (:func:`thoraxseg.data.volume.to_ras`)."""
    ras, spacing = to_ras(array, affine)
    return Canonical(np.ascontiguousarray(ras), spacing)


def load_canonical(path: Path, label: bool = False) -> Canonical:
    """Read a CT (HU) or label volume and reorient it to RAS+."""
    vol = load_label(path) if label else load_image(path)
    return to_canonical(vol.array, vol.affine)


def image_geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """Shape and spacing (mm) from a NIfTI header only (no voxel data read); None when unreadable."""
    try:
        img = nib.load(str(path))
    except Exception:  # any unreadable header: the check section reports the details
        return None
    return tuple(int(s) for s in img.shape[:3]), tuple(float(z) for z in img.header.get_zooms()[:3])
