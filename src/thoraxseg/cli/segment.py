"""``thoraxseg segment``: CT (NIfTI/NRRD/MHA/DICOM) → labels, Slicer .seg.nrrd, DICOM-SEG, RTSTRUCT, QC summary."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from thoraxseg.export.segment import segment

    results = segment(args.inputs, args.model, args.out, formats=args.formats, series_uid=args.series,
                      device=args.device, postprocess=args.postprocess, overwrite=args.overwrite,
                      batch_size=args.batch_size, tta=args.tta, step=args.step)
    for r in results:
        flags = ", ".join(r.summary["flags"]) or "none"
        print(f"{r.name}: {r.folder} ({len(r.files)} files; QC flags: {flags})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from thoraxseg.export.segment import FORMATS

    p = subparsers.add_parser(
        "segment", help="segment CTs with a model (run folder or bundle): NIfTI, .seg.nrrd, DICOM-SEG, RTSTRUCT",
        description="Segments each INPUT (a NIfTI/NRRD/MHA file, a folder or zip of one DICOM CT series, or a "
                    "folder of such cases) and writes labels.nii.gz, labels.seg.nrrd, seg.dcm and rtstruct.dcm "
                    "(DICOM input), summary.json and preview.png to OUT (one input) or OUT/<case>/.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="CT image, DICOM folder/zip, or folder of cases")
    p.add_argument("--model", required=True, type=Path, help="training run folder or bundle (thoraxseg export-model)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--formats", help=f"comma-separated subset of {','.join(FORMATS)} "
                                     "(default: all that apply; DICOM formats need DICOM input)")
    p.add_argument("--series", help="Series Instance UID to read when a DICOM folder holds several series")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="skip keeping the largest connected component per organ")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.add_argument("--batch-size", type=int, help="2D arms: slices per forward pass (default 32)")
    p.add_argument("--no-tta", dest="tta", action="store_false", default=None,
                   help="nnunet3d: no mirroring test-time augmentation")
    p.add_argument("--step", type=float, help="nnunet3d: sliding-window step as a fraction of the patch (default 0.5)")
    p.set_defaults(func=run)
