"""The arms: one registry of every model thoraxseg can train, predict with and export.

An :class:`Arm` names its implementation (train, predict, the files a bundle packs, an up-front
settings check, preprocessing facts) as callables or ``"module:function"`` strings, imported on
first use — so the registry sits low in the package (it imports no arm) and the built-in arms
(``enet``, ``customnet``: :mod:`thoraxseg.training`/:mod:`thoraxseg.inference.predict2d`;
``nnunet3d``: :mod:`thoraxseg.nnunet`) register themselves here by name. Everything that lists or
dispatches on arms — ``thoraxseg train --model``, ``predict``, ``export-model``/``segment``
bundles, the study file's ``model:``, SLURM scripts and the report's arm order — asks the
registry, so a new arm is one :func:`register_arm` call (see ``tests/test_arms.py``, which runs a
tiny extra arm through ``thoraxseg study``).

Examples
--------
>>> arm_names()[:3]
('enet', 'customnet', 'nnunet3d')
>>> get_arm("nnunet3d").launcher
'python'
>>> get_arm("enett")
Traceback (most recent call last):
...
thoraxseg.errors.ConfigError: model: 'enett' is not one of enet, customnet, nnunet3d (did you mean enet?)
"""

from __future__ import annotations

from thoraxseg.arms.registry import Arm, TrainOption, arm_names, get_arm, register_arm, unregister_arm

#: Learning-rate schedules of the 2D arms (``optim.schedule``).
SCHEDULES: tuple[str, ...] = ("none", "cosine", "poly")

#: The 2D arms' ``thoraxseg train`` flags (settings of :class:`thoraxseg.training.config.TrainConfig`).
_2D_TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("--batch-size", "batch_size", "slices per step and process (default 8)", int),
    TrainOption("--lr", "lr", "AdamW learning rate (default 1e-3)", float),
    TrainOption("--schedule", "schedule", "learning-rate schedule (default none)", choices=SCHEDULES),
    TrainOption("--image-size", "image_size", "side of the square training crops in pixels (default 256)", int),
    TrainOption("--spacing-mm", "spacing_mm", "in-plane pixel size in mm every slice is resampled to "
                "(default: the training set's median field of view / image size)", float),
    TrainOption("--width", "width", "network width (default: ENet 16, CustomNet 64)", int),
    TrainOption("--val-fraction", "val_fraction", "fraction of patients for validation (default 0.2)", float),
    TrainOption("--samples-per-epoch", "samples_per_epoch", "random training slices per epoch (default: all)", int),
    TrainOption("--loader-workers", "num_workers", "DataLoader worker processes (default 0)", int,
                old_flags=("--workers",)),
    TrainOption("--threads", "threads", "CPU threads for torch (default: one per core)", int),
    TrainOption("--amp", "amp", "bfloat16 autocast on CUDA", switch=True),
    TrainOption("--no-augment", "augment.enabled", "disable augmentation", switch=False),
)
_2D_PREDICT = ("batch_size", "checkpoint", "amp")

for _name, _what in (("enet", "ENet, 2D (Paszke et al. 2016)"), ("customnet", "CustomNet, 2D U-Net (64→512)")):
    register_arm(Arm(
        name=_name,
        description=_what,
        train_impl="thoraxseg.training:train_2d_arm",
        predict_impl="thoraxseg.inference.predict2d:predict_2d",
        files_impl="thoraxseg.inference.bundle:files_2d",
        facts_impl="thoraxseg.inference.bundle:facts_2d",
        check_impl="thoraxseg.training:check_2d_settings",
        train_options=_2D_TRAIN_OPTIONS,
        predict_options=_2D_PREDICT,
        launcher="torchrun",
    ))
register_arm(Arm(
    name="nnunet3d",
    description="nnU-Net v2 3d_fullres (the real nnunetv2)",
    train_impl="thoraxseg.nnunet.api:train_nnunet_arm",
    predict_impl="thoraxseg.nnunet.api:predict_nnunet",
    files_impl="thoraxseg.nnunet.api:files_nnunet",
    facts_impl="thoraxseg.nnunet.api:facts_nnunet",
    check_impl="thoraxseg.nnunet.settings:check_settings",
    train_options=(
        TrainOption("--folds", "folds", "fold to train: 0-4 or 'all'"),
        TrainOption("--iterations-per-epoch", "iterations_per_epoch", "training iterations per epoch", int),
        TrainOption("--plans", "plans", "nnU-Net plans: default, or reduced for CPU", choices=("default", "cpu")),
    ),
    predict_options=("tta", "step", "checkpoint", "folds", "verbose"),
    packages=("thoraxseg", "torch", "nnunetv2"),
    launcher="python",
))

__all__ = ["SCHEDULES", "Arm", "TrainOption", "arm_names", "get_arm", "register_arm", "unregister_arm"]
