"""``thoraxseg predict``: segment CT volumes with a trained run (any arm), in the source geometry."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from thoraxseg.inference import predict

    written = predict(args.run, args.images, args.out, postprocess=args.postprocess, device=args.device,
                      tta=args.tta, step=args.step, batch_size=args.batch_size, checkpoint=args.checkpoint)
    print(f"wrote {len(written)} prediction(s) to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict label volumes with a trained run",
        description="Writes PRED_DIR/Patient_XX.nii.gz (uint8, same shape/spacing/origin/direction as the CT). "
                    "2D arms predict slice by slice; nnunet3d uses nnU-Net's sliding-window predictor.",
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (holds config.yaml)")
    p.add_argument("--images", required=True, type=Path, help="CT cases: SegTHOR layout, Patient_XX/ or flat folder")
    p.add_argument("--out", required=True, type=Path, help="output folder PRED_DIR")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="skip keeping the largest connected component per organ")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no-tta", dest="tta", action="store_false", default=None,
                   help="nnunet3d: no mirroring test-time augmentation")
    p.add_argument("--step", type=float, help="nnunet3d: sliding-window step as a fraction of the patch (default 0.5)")
    p.add_argument("--batch-size", type=int, help="2D arms: slices per forward pass (default 32)")
    p.add_argument("--checkpoint", help="best or last, every arm (2D default best; nnunet3d default: final, "
                                        "else latest, else best); 2D arms also a .pt path")
    p.set_defaults(func=run)
