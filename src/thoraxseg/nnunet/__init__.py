"""The ``nnunet3d`` arm: nnU-Net v2 ``3d_fullres``, driven in code.

Modules, in pipeline order: :mod:`~thoraxseg.nnunet.settings` (one typed settings object),
:mod:`~thoraxseg.nnunet.export` (cohort → nnU-Net raw format), :mod:`~thoraxseg.nnunet.plans`
(nnU-Net's planner, the reduced CPU plan), :mod:`~thoraxseg.nnunet.env` (scoped ``nnUNet_*``
folders and pools), :mod:`~thoraxseg.nnunet.trainer` (nnU-Net's trainer subclass),
:mod:`~thoraxseg.nnunet.runlog` (epoch log and curves) and :mod:`~thoraxseg.nnunet.api`
(``train_nnunet``, ``predict_nnunet``). Importing this package does not import nnU-Net.
"""
