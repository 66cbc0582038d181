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

from thoraxseg.arms.registry import Arm, arm_names, get_arm, register_arm, unregister_arm

_2D_TRAIN_FLAGS = frozenset({"seed", "batch_size", "lr", "schedule", "image_size", "spacing_mm", "width",
                             "val_fraction", "samples_per_epoch", "num_workers", "amp", "threads",
                             "augment.enabled"})
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
        train_flags=_2D_TRAIN_FLAGS,
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
    train_flags=frozenset({"seed", "folds", "iterations_per_epoch", "plans"}),
    predict_options=("tta", "step", "checkpoint", "folds", "verbose"),
    packages=("thoraxseg", "torch", "nnunetv2"),
    launcher="python",
))

__all__ = ["Arm", "arm_names", "get_arm", "register_arm", "unregister_arm"]
