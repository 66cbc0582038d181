"""``thoraxseg export-model``: pack a trained run into one verified bundle zip."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from thoraxseg.errors import InputError
    from thoraxseg.inference.bundle import export_model, open_model

    if args.out.exists() and not args.overwrite:
        raise InputError(args.out, "already exists (use --overwrite to replace it)")
    path = export_model(args.run, args.out)
    with open_model(path) as model:  # prove the bundle opens (hashes, versions) before reporting success
        print(f"wrote {path} ({model.arm}, {len(model.manifest['files'])} files, model sha256 {model.sha256[:16]}…)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-model", help="pack a trained run into a model bundle (zip) for thoraxseg segment",
        description="Writes a zip with the weights, resolved config, label map, preprocessing facts, training "
                    "organ volume ranges, package versions and a sha256 manifest (nnunet3d: nnU-Net's model folder).",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="training run folder")
    p.add_argument("--out", required=True, type=Path, help="bundle file to write (e.g. model.zip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=run)
