"""Train and predict with nnU-Net v2 (``3d_fullres``) as thoraxseg's ``nnunet3d`` arm (the public API).

The code lives in :mod:`~thoraxseg.nnunet.settings`, :mod:`~thoraxseg.nnunet.train`,
:mod:`~thoraxseg.nnunet.predict` and :mod:`~thoraxseg.nnunet.runfolder`; this module gathers their entry points.

:func:`train_nnunet` exports the cohort to nnU-Net's raw format, fingerprints,
plans and preprocesses it with nnU-Net, and trains the requested folds with
:class:`~thoraxseg.nnunet.trainer.ThoraxsegTrainer` (nnU-Net's trainer). All
nnU-Net folders live under ``RUN/nnunet/`` and the ``nnUNet_*`` environment
variables are set only for the duration of the call. A rerun with the same
``RUN`` continues where it stopped: preparation is skipped once complete, and
each fold continues from its last checkpoint (nnU-Net's ``--c``).

:func:`predict_nnunet` runs nnU-Net's predictor (sliding window, Gaussian
weighting, mirroring test-time augmentation, ensemble of the trained folds)
on every case of any layout :func:`~thoraxseg.data.layout.discover_cases`
accepts, applies the shared connected-component post-processing and writes
``OUT/Patient_XX.nii.gz`` (uint8) on exactly the source image's grid.

Run folder::

    RUN/config.yaml        model: nnunet3d, resolved settings, nnU-Net plan summary
    RUN/log.csv            one row per epoch and fold (nnU-Net's logger; pseudo Dice)
    RUN/curves.png         loss and validation Dice curves
    RUN/validation.json    nnU-Net's final validation Dice per fold and organ (whole cases)
    RUN/nnunet/{nnUNet_raw, nnUNet_preprocessed, nnUNet_results}
    RUN/nnunet/sessions.json   when each call started and from which epoch each fold went on
"""

from __future__ import annotations

from thoraxseg.nnunet.predict import load_predictor, predict_array, predict_nnunet
from thoraxseg.nnunet.runfolder import (
    FOLD_LOG,
    PREPARED_MARKER,
    TRAINER_NAME,
    facts_nnunet,
    files_nnunet,
    read_run_config,
    trained_folds,
)
from thoraxseg.nnunet.settings import MODEL, parse_folds, resolve_settings
from thoraxseg.nnunet.train import prepare_nnunet, train_nnunet, train_nnunet_arm

__all__ = [
    "FOLD_LOG",
    "MODEL",
    "PREPARED_MARKER",
    "TRAINER_NAME",
    "facts_nnunet",
    "files_nnunet",
    "load_predictor",
    "parse_folds",
    "predict_array",
    "predict_nnunet",
    "prepare_nnunet",
    "read_run_config",
    "resolve_settings",
    "train_nnunet",
    "train_nnunet_arm",
    "trained_folds",
]
