"""``thoraxseg nnunet export|prepare``: nnU-Net v2 raw export, and preparation of a run folder.

Training and prediction of the nnU-Net arm go through ``thoraxseg train --model
nnunet3d`` and ``thoraxseg predict`` (see :mod:`thoraxseg.nnunet.api`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run_export(args: argparse.Namespace) -> int:
    from thoraxseg.nnunet.export import MAPPING_FILE, export_dataset, read_mapping

    folder = export_dataset(args.data, args.out, dataset_id=args.dataset_id, name=args.name, mode=args.mode,
                            overwrite=args.overwrite)
    n = len(read_mapping(folder))
    print(f"wrote {n} case(s) to {folder} (case → patient IDs in {MAPPING_FILE})")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from thoraxseg.nnunet.api import prepare_nnunet

    run = prepare_nnunet(args.data, args.out, config=args.config, plans=args.plans, dataset_id=args.dataset_id,
                         dataset_name=args.name)
    print(run)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("nnunet", help="nnU-Net v2 helpers (export to nnU-Net raw format)",
                              description="nnU-Net v2 helpers. Train/predict: thoraxseg train --model nnunet3d, "
                                          "thoraxseg predict.")
    sub = p.add_subparsers(dest="nnunet_command", metavar="SUBCOMMAND")
    sub.required = True
    e = sub.add_parser(
        "export", help="write labelled cases as an nnU-Net v2 raw dataset",
        description="Writes RAW/DatasetXXX_NAME/{imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, "
                    "dataset.json, thoraxseg_cases.json}. Case IDs are NAME_001, NAME_002, ... in patient order; "
                    "thoraxseg_cases.json maps them back to patient IDs.",
    )
    e.add_argument("--data", required=True, type=Path, help="cohort with labels (SegTHOR layout or Patient_XX/)")
    e.add_argument("--out", required=True, type=Path, help="nnU-Net raw folder (nnUNet_raw)")
    e.add_argument("--dataset-id", type=int, default=55, help="nnU-Net dataset ID 1-999 (default 55)")
    e.add_argument("--name", default="SegTHOR", help="dataset name (default SegTHOR)")
    e.add_argument("--mode", choices=("copy", "symlink"), default="copy",
                   help="copy the files (default; portable) or symlink to the sources")
    e.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    e.set_defaults(func=run_export)
    r = sub.add_parser(
        "prepare", help="export, fingerprint, plan and preprocess into a run folder (no training)",
        description="Does the preparation of 'thoraxseg train --model nnunet3d' once, so that several fold "
                    "jobs (e.g. a SLURM array) can then train into the same run folder.",
    )
    r.add_argument("--data", required=True, type=Path, help="cohort with labels (SegTHOR layout or Patient_XX/)")
    r.add_argument("--out", required=True, type=Path, help="run folder RUN")
    r.add_argument("--plans", choices=("default", "cpu"), help="nnU-Net plans (default: default)")
    r.add_argument("--config", type=Path, help="YAML settings file (as for thoraxseg train)")
    r.add_argument("--dataset-id", type=int, help="nnU-Net dataset ID 1-999 (default 55)")
    r.add_argument("--name", help="dataset name (default SegTHOR)")
    r.set_defaults(func=run_prepare)
