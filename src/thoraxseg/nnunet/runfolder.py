"""The nnU-Net arm's run folder: its config, nnU-Net's model folder inside it, the trained folds, bundle files.

Shared by :mod:`thoraxseg.nnunet.train` and :mod:`thoraxseg.nnunet.predict`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thoraxseg.errors import InputError
from thoraxseg.nnunet.settings import (
    MODEL,
)

TRAINER_NAME = "ThoraxsegTrainer"
FOLD_LOG = "thoraxseg_log.csv"
PREPARED_MARKER = "prepared.json"
#: ``curves.png`` is redrawn after an epoch at most this often (s), and after the last epoch.
CURVES_EVERY_S = 30.0

@contextlib.contextmanager
def quiet(log: Path, verbose: bool) -> Iterator[None]:
    """Send nnU-Net's prints (stdout) to ``log`` unless verbose."""
    if verbose:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def nnunet_version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")


def read_run_config(run: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` of an nnunet3d run.

    Raises
    ------
    InputError
        Missing/unreadable file or another model.
    """
    from thoraxseg.arms.runs import load_run_config

    path = Path(run) / "config.yaml"
    cfg = load_run_config(run)
    if cfg.get("model") != MODEL:
        raise InputError(path, f"not an {MODEL} run (model: {cfg.get('model')})")
    return cfg


def _fold_key(fold: str) -> tuple[int, int | str]:
    return (0, int(fold)) if fold.isdigit() else (1, fold)


def trained_folds(results: Path) -> list[str]:
    """Folds with a ``fold_N`` folder under an nnU-Net results folder, in order (``all`` last)."""
    if not results.is_dir():
        return []
    names = [p.name[len("fold_"):] for p in results.iterdir() if p.is_dir() and p.name.startswith("fold_")]
    return sorted(names, key=_fold_key)


def files_nnunet(run: Path, cfg: dict[str, Any]) -> dict[str, Path]:
    """The files a model bundle packs (:meth:`thoraxseg.arms.Arm.files`): nnU-Net's own model folder.

    Plans, dataset JSONs and each trained fold's checkpoint, named relative to the run folder.
    """
    from thoraxseg.nnunet.trainer import find_checkpoint

    rel = Path(cfg.get("resolved", {}).get("results_folder", ""))
    results = run / rel
    if not rel.parts or not (results / "plans.json").is_file():
        raise InputError(results / "plans.json", "file not found (nnU-Net model folder missing; train it first)")
    files: dict[str, Path] = {}
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (results / name).is_file():
            files[(rel / name).as_posix()] = results / name
    folds = 0
    for fold in trained_folds(results):
        ckpt = find_checkpoint(results / f"fold_{fold}")
        if ckpt is not None:
            files[(rel / f"fold_{fold}" / ckpt.name).as_posix()] = ckpt
            folds += 1
    if not folds:
        raise InputError(results, "no trained fold (checkpoint_*.pth) in the nnU-Net model folder")
    return files


def facts_nnunet(run: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net: the plan's spacing, patch, normalisation and intensity statistics."""
    plans = json.loads((run / cfg["resolved"]["results_folder"] / "plans.json").read_text())
    conf = plans.get("configurations", {}).get("3d_fullres", {})
    return {"configuration": "3d_fullres", "spacing_mm": conf.get("spacing"), "patch_size": conf.get("patch_size"),
            "normalization": conf.get("normalization_schemes"),
            "intensity": plans.get("foreground_intensity_properties_per_channel")}
