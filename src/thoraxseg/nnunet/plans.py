"""nnU-Net planning and preprocessing (``3d_fullres``), and the reduced ``cpu`` plan.

Planning and preprocessing are nnU-Net's own, called through its Python API
(:mod:`nnunetv2.experiment_planning.plan_and_preprocess_api`): dataset
fingerprint (with nnU-Net's integrity check), :class:`ExperimentPlanner`
(the default ``nnUNetPlans``), then :class:`DefaultPreprocessor` for
``3d_fullres`` only. Classes are passed in directly rather than looked up by
name, so nothing here depends on nnU-Net's class search (which imports every
trainer variant and fails where torchvision does not import).

The ``cpu`` plan (``nnUNetPlans_cpu``) is derived from nnU-Net's default plan
by :func:`make_cpu_plans`. It keeps everything that defines the data (target
spacing, axis transpose, CT normalisation, resampling, hence the same
preprocessed arrays) and changes only the network and batch (:class:`CpuPlan`,
settable per run as ``cpu_plan``; defaults :data:`CPU_PLAN`):

* feature maps: 16 in the first stage (nnU-Net: 32), doubling per stage, at
  most 128 (nnU-Net: 320) — about 1/4 of the channels and ~1/16 of the FLOPs;
* patch: each axis capped at 32 voxels (``max_patch``, axes in nnU-Net's
  transposed order), then the U-Net topology (number of stages, pooling and
  kernel sizes) recomputed for that patch with nnU-Net's own
  ``get_pool_and_conv_props``. On the small phantom (~4.5 mm in-plane, ~10 mm
  slices) that is 144 × 144 × 300 mm, enough for the mediastinum, and one
  training step costs ~1/6 of a 48 × 64 × 64 patch's;
* batch size 2 (nnU-Net's minimum);
* Dice pooled over the batch (``batch_dice``) by nnU-Net's own rule for
  ``3d_fullres``, applied to the reduced patch: a patch under 25 % of the median
  image (the 32³ patch is 4.5 % of the small phantom) pools it, as nnU-Net does
  when its patch is a small crop; the per-patch Dice of a 32³ patch that misses
  an organ punishes predicting it at all;
* only the ``3d_fullres`` configuration is kept.

The changes are also written into the plans JSON under ``"thoraxseg_cpu_plan"``.
Training keeps nnU-Net's foreground sampling (one patch of each batch of 2 on
an organ, one anywhere): centring every patch on an organ learns faster but
leaves the network blind to the thorax far from the organs, where it then
predicts large false organs on whole volumes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.errors import ConfigError
from thoraxseg.utils.atomic import write_json_atomic

CONFIGURATION = "3d_fullres"
DEFAULT_PLANS = "nnUNetPlans"
CPU_PLANS = "nnUNetPlans_cpu"
PLAN_CHOICES = ("default", "cpu")

@dataclass(frozen=True)
class CpuPlan:
    """The numbers of the ``--plans cpu`` network (settable as ``cpu_plan`` in a run config).

    Attributes
    ----------
    max_patch
        Largest patch per axis, voxels, in nnU-Net's transposed (z, y, x) order; each axis of
        nnU-Net's default patch is capped at this, then fitted to the pooling.
    base_features, max_features
        Feature maps of the first stage, doubling per stage up to ``max_features``.
    batch_size
        Patches per training step.
    batch_dice
        Dice pooled over the batch (True) or per patch (False); ``None``: nnU-Net's own rule for
        ``3d_fullres`` applied to the reduced patch (pooled when the patch holds less than
        ``lowres_creation_threshold``, 25 %, of the median image's voxels — then most patches miss
        some organ, and a per-patch Dice punishes predicting it at all).
    """

    max_patch: tuple[int, int, int] = (32, 32, 32)
    base_features: int = 16
    max_features: int = 128
    batch_size: int = 2
    batch_dice: bool | None = None

    @classmethod
    def from_settings(cls, value: Mapping[str, Any] | None) -> CpuPlan:
        """Parse a ``cpu_plan`` setting (missing keys take the defaults), checking every value.

        >>> CpuPlan.from_settings({"max_patch": [16, 64, 64], "base_features": 8})
        CpuPlan(max_patch=(16, 64, 64), base_features=8, max_features=128, batch_size=2, batch_dice=None)
        """
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(f"cpu_plan must be a mapping (max_patch, base_features, max_features, batch_size), "
                              f"got {value!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"unknown cpu_plan setting(s): {', '.join(unknown)}; known: {', '.join(names)}")
        kw: dict[str, Any] = {}
        if "max_patch" in value:
            patch = value["max_patch"]
            if (not isinstance(patch, Sequence) or isinstance(patch, str) or len(patch) != 3
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in patch)):
                raise ConfigError(f"cpu_plan.max_patch must be three integers >= 8 (z, y, x voxels), got {patch!r}")
            kw["max_patch"] = tuple(int(v) for v in patch)
        for key in ("base_features", "max_features", "batch_size"):
            if key in value:
                v = value[key]
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ConfigError(f"cpu_plan.{key} must be an integer >= 1, got {v!r}")
                kw[key] = int(v)
        if "batch_dice" in value:
            if value["batch_dice"] is not None and not isinstance(value["batch_dice"], bool):
                raise ConfigError(f"cpu_plan.batch_dice must be true, false or null (nnU-Net's rule), "
                                  f"got {value['batch_dice']!r}")
            kw["batch_dice"] = value["batch_dice"]
        plan = cls(**kw)
        if plan.max_features < plan.base_features:
            raise ConfigError(f"cpu_plan.max_features ({plan.max_features}) must be >= base_features "
                              f"({plan.base_features})")
        return plan

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for YAML and JSON)."""
        return {"max_patch": list(self.max_patch), "base_features": self.base_features,
                "max_features": self.max_features, "batch_size": self.batch_size, "batch_dice": self.batch_dice}


#: The ``--plans cpu`` network (README, "``--plans cpu``: what it changes", with the variants measured).
CPU_PLAN = CpuPlan()
#: The ``cpu`` plan of runs made before ``cpu_plan`` was recorded in ``config.yaml``: they continue with it
#: (a new default never changes an old run).
LEGACY_CPU_PLAN = CpuPlan(max_patch=(32, 32, 32), base_features=16, max_features=128, batch_size=2, batch_dice=False)
#: nnU-Net's ``ExperimentPlanner.lowres_creation_threshold``: 3d_fullres pools its Dice over the batch when
#: its patch holds less than this share of the median image (and a 3d_lowres configuration exists).
LOWRES_CREATION_THRESHOLD = 0.25
_MIN_FEATURE_MAP_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length


def plans_identifier(plans: str) -> str:
    """nnU-Net plans identifier for a ``--plans`` choice.

    >>> plans_identifier("cpu")
    'nnUNetPlans_cpu'
    """
    if plans == "default":
        return DEFAULT_PLANS
    if plans == "cpu":
        return CPU_PLANS
    raise ConfigError(f"plans must be one of {', '.join(PLAN_CHOICES)}, got {plans!r}")


def _topology(spacing: list[float], patch: list[int]) -> tuple[list[int], Any, Any]:
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, pools, kernels, new_patch, _ = get_pool_and_conv_props(spacing, patch, _MIN_FEATURE_MAP_EDGE, 999999)
    return [int(p) for p in new_patch], pools, kernels


def cpu_patch_and_topology(
    spacing: list[float], patch: list[int], max_patch: tuple[int, ...] = CPU_PLAN.max_patch
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Cap a patch (voxels, nnU-Net's transposed axis order) and recompute the U-Net topology.

    Returns the new patch, the pooling strides per stage and the kernel sizes per stage.
    Each axis ends at most at ``max_patch`` and divisible by its total pooling factor.

    >>> p, strides, kernels = cpu_patch_and_topology([4.0, 3.0, 3.0], [80, 160, 160], (32, 32, 32))
    >>> p, len(strides) == len(kernels)
    ([32, 32, 32], True)
    """
    target = [min(int(p), int(m)) for p, m in zip(patch, max_patch, strict=True)]
    while True:
        new_patch, pools, kernels = _topology(list(spacing), target)
        over = [i for i, (p, m) in enumerate(zip(new_patch, max_patch, strict=True)) if p > m]
        if not over:
            return new_patch, [list(s) for s in pools], [list(k) for k in kernels]
        for i in over:  # padding to the pooling factor overshot the cap: step down and recompute
            target[i] -= 1


def make_cpu_plans(plans: dict[str, Any], cpu: CpuPlan = CPU_PLAN) -> dict[str, Any]:
    """Derive the ``nnUNetPlans_cpu`` plans from nnU-Net's default plans (see module docstring).

    Parameters
    ----------
    plans
        Content of ``nnUNetPlans.json`` (not modified).
    cpu
        The reduced network's numbers.

    Returns
    -------
    dict
        New plans with ``plans_name = "nnUNetPlans_cpu"`` and one configuration, ``3d_fullres``.
    """
    if CONFIGURATION not in plans.get("configurations", {}):
        raise ConfigError(f"nnU-Net made no {CONFIGURATION} configuration for {plans.get('dataset_name')} "
                          "(2D data?); the nnunet3d arm needs 3D volumes")
    out = deepcopy(plans)
    cfg = out["configurations"][CONFIGURATION]
    arch = cfg["architecture"]["arch_kwargs"]
    old = {
        "patch_size": list(cfg["patch_size"]),
        "batch_size": int(cfg["batch_size"]),
        "features_per_stage": list(arch["features_per_stage"]),
        "n_stages": int(arch["n_stages"]),
        "batch_dice": bool(cfg.get("batch_dice", False)),
    }
    patch, strides, kernels = cpu_patch_and_topology(list(cfg["spacing"]), list(cfg["patch_size"]), cpu.max_patch)
    n = len(strides)
    features = [min(cpu.max_features, cpu.base_features * 2**i) for i in range(n)]
    enc = list(arch["n_conv_per_stage"]) + [arch["n_conv_per_stage"][-1]] * n
    dec = list(arch["n_conv_per_stage_decoder"]) + [arch["n_conv_per_stage_decoder"][-1]] * n
    arch.update({
        "n_stages": n,
        "features_per_stage": features,
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage": enc[:n],
        "n_conv_per_stage_decoder": dec[: n - 1],
    })
    median = [float(v) for v in cfg.get("median_image_size_in_voxels", patch)]
    share = float(np.prod(patch, dtype=np.float64) / np.prod(median, dtype=np.float64))
    batch_dice = cpu.batch_dice if cpu.batch_dice is not None else share < LOWRES_CREATION_THRESHOLD
    cfg["patch_size"] = patch
    cfg["batch_size"] = cpu.batch_size
    cfg["batch_dice"] = bool(batch_dice)
    cfg["data_identifier"] = f"{CPU_PLANS}_{CONFIGURATION}"
    out["configurations"] = {CONFIGURATION: cfg}
    out["plans_name"] = CPU_PLANS
    out["thoraxseg_cpu_plan"] = {
        "derived_from": plans.get("plans_name", DEFAULT_PLANS),
        "nnunet_default": old,
        "cpu": {"patch_size": patch, "batch_size": cpu.batch_size, "features_per_stage": features, "n_stages": n,
                "batch_dice": bool(batch_dice), "patch_share_of_median_image": round(share, 4)},
        "cpu_plan": cpu.as_dict(),
        "unchanged": "spacing, transpose, normalisation, resampling, losses, augmentation, optimiser",
    }
    return out


def write_splits(preprocessed_dataset: Path, case_ids: list[str], seed: int = 12345) -> list[dict[str, list[str]]]:
    """Write nnU-Net's ``splits_final.json``: its own seeded k-fold split, k = min(5, cases).

    nnU-Net would make a 5-fold split itself, but fails with fewer than 5 cases;
    this uses nnU-Net's :func:`generate_crossval_split` with the same seed.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(case_ids) < 2:
        raise ConfigError(f"nnU-Net cross-validation needs at least 2 labelled cases, got {len(case_ids)}")
    splits = generate_crossval_split(sorted(case_ids), seed=seed, n_splits=min(5, len(case_ids)))
    splits = [{"train": [str(k) for k in s["train"]], "val": [str(k) for k in s["val"]]} for s in splits]
    write_json_atomic(preprocessed_dataset / "splits_final.json", splits)
    return splits


def plan_and_preprocess(
    dataset_id: int,
    preprocessed_dataset: Path,
    plans: str = "default",
    num_processes: int = 2,
    check_integrity: bool = True,
    verbose: bool = False,
    cpu: CpuPlan = CPU_PLAN,
) -> str:
    """Fingerprint, plan and preprocess ``3d_fullres`` with nnU-Net (inside :func:`nnunet_environment`).

    Parameters
    ----------
    dataset_id
        nnU-Net dataset ID (already exported to ``nnUNet_raw``).
    preprocessed_dataset
        ``nnUNet_preprocessed/DatasetXXX_Name`` (where the plans JSON is written).
    plans
        ``"default"`` (nnU-Net's ``nnUNetPlans``) or ``"cpu"`` (``nnUNetPlans_cpu``).
    num_processes
        nnU-Net worker pool size for fingerprinting and preprocessing.
    check_integrity
        Run nnU-Net's ``verify_dataset_integrity`` first.
    cpu
        The ``cpu`` plan's network numbers.

    Returns
    -------
    str
        The plans identifier.
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    identifier = plans_identifier(plans)
    extract_fingerprint_dataset(dataset_id, DatasetFingerprintExtractor, num_processes,
                                check_dataset_integrity=check_integrity, clean=True, verbose=verbose,
                                show_progress_bar=verbose)
    plan_experiment_dataset(dataset_id, ExperimentPlanner)
    if plans == "cpu":
        default = json.loads((preprocessed_dataset / f"{DEFAULT_PLANS}.json").read_text(encoding="utf-8"))
        write_json_atomic(preprocessed_dataset / f"{CPU_PLANS}.json", make_cpu_plans(default, cpu))
    preprocess_dataset(dataset_id, identifier, (CONFIGURATION,), [num_processes], verbose=verbose,
                       show_progress_bar=verbose)
    return identifier
