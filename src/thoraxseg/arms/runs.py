"""Run folders of every arm: which arm made a run (``RUN/config.yaml``'s ``model:``).

Below training and inference (both read run folders); the arm-specific contents of a run folder
are the arm's own (:mod:`thoraxseg.training.trainer`, :mod:`thoraxseg.nnunet.api`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thoraxseg.errors import InputError
from thoraxseg.utils.yamlfile import read_yaml_mapping

#: Every run folder's settings file; its ``model:`` names the arm.
RUN_CONFIG = "config.yaml"


def load_run_config(run: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` of a training run as a mapping with a ``model:`` entry.

    Raises
    ------
    InputError
        Missing or unreadable file, or no ``model:`` entry.
    """
    path = Path(run) / RUN_CONFIG
    cfg = read_yaml_mapping(path, error=InputError, missing="not a training run folder (config.yaml missing)")
    if not isinstance(cfg.get("model"), str):
        raise InputError(path, "no 'model:' entry")
    return cfg


def run_model_name(run: Path) -> str:
    """The ``model:`` of ``RUN/config.yaml`` (lower case); raises InputError when the run folder is unusable."""
    return str(load_run_config(run)["model"]).lower()
