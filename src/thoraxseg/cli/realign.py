"""``thoraxseg realign estimate|apply|corrupt`` — find and undo a rigidly moved organ label."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from thoraxseg.errors import InputError
from thoraxseg.labels import organ_from_name
from thoraxseg.utils.atomic import write_json_atomic
from thoraxseg.utils.progress import console


def _label(text: str) -> int:
    try:
        return int(organ_from_name(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "realign",
        help="estimate and undo a rigid transform applied to one organ's labels",
        description=(
            "Label realignment. `estimate` finds the correction from one reference pair (moved and "
            "clean label of the same patient), `apply` moves that label back in every GT of a dataset, "
            "`corrupt` reproduces the SegTHOR course corruption on any dataset."
        ),
    )
    rs = p.add_subparsers(dest="realign_command", metavar="{estimate,apply,corrupt}")
    rs.required = True

    e = rs.add_parser("estimate", help="estimate the correction from a moved/clean label pair -> fix.json",
                      description="Estimate the voxel matrix that maps the moved label back onto the clean one.")
    e.add_argument("--moved", type=Path, required=True, help="moved (corrupted) label file, e.g. GT.nii.gz")
    e.add_argument("--clean", type=Path, required=True, help="clean label file of the same patient, e.g. GT_clean.nii.gz or the course's Patient_27/GT2.nii.gz")
    e.add_argument("--label", type=_label, default=2, help="organ code or name to realign (default 2 = heart)")
    e.add_argument("--method", choices=("sweep", "elastix"), default="sweep",
                   help="sweep: centroid + rotation sweep + rigid refinement (default); elastix: itk-elastix "
                        "rigid then affine, for comparison")
    e.add_argument("--seed", type=int, default=0, help="seed of the point sampling (default 0)")
    e.add_argument("--out", type=Path, required=True, help="output fix.json")
    e.add_argument("--overlay", type=Path, default=None, help="also write a before/after overlay PNG")
    e.add_argument("--image", type=Path, default=None,
                   help="CT for --overlay (default: the case image next to --moved)")
    e.set_defaults(func=run_estimate)

    a = rs.add_parser("apply", help="apply fix.json to every GT of a dataset (writes a corrected copy)",
                      description="Copy DATA to OUT with the label moved back in every GT.nii.gz; images are "
                                  "copied unchanged; other labels keep their voxels.")
    a.add_argument("--transform", type=Path, required=True, help="fix.json from `realign estimate`")
    a.add_argument("--data", type=Path, required=True, help="dataset to correct (SegTHOR layout)")
    a.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    a.add_argument("--label", type=_label, default=None,
                   help="organ code or name (default: the label in fix.json, else 2 = heart)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    a.add_argument("--summary", type=Path, default=None, help="also write the per-patient rows as JSON")
    a.set_defaults(func=run_apply)

    c = rs.add_parser("corrupt", help="move one label of every GT by the course transform (testing, teaching)",
                      description="Copy DATA to OUT with the label moved as in the SegTHOR course: rotate by "
                                  "ROTATION_DEG in-plane about CENTER, then translate by SHIFT (voxels on the "
                                  "512 grid, scaled to each patient's grid).")
    c.add_argument("--data", type=Path, required=True, help="clean dataset (SegTHOR layout)")
    c.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    c.add_argument("--label", type=_label, default=2, help="organ code or name to move (default 2 = heart)")
    c.add_argument("--rotation-deg", type=float, default=-27.0, help="in-plane rotation, degrees (default -27)")
    c.add_argument("--center", type=float, nargs=3, default=[275.0, 200.0, 0.0], metavar=("X", "Y", "Z"),
                   help="rotation centre, voxels on the 512 grid (default 275 200 0)")
    c.add_argument("--shift", type=float, nargs=3, default=[50.0, 40.0, 15.0], metavar=("X", "Y", "Z"),
                   help="translation, voxels on the 512 grid (default 50 40 15)")
    c.add_argument("--keep-clean", choices=("first", "all", "none"), default="first",
                   help="which patients keep their original label as GT_clean.nii.gz (default first)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.set_defaults(func=run_corrupt)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, list):
        return "(" + ", ".join(f"{x:.{digits}f}" for x in v) + ")"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def run_estimate(args: argparse.Namespace) -> int:
    from thoraxseg.realign.estimate import estimate_transform
    from thoraxseg.realign.fixfile import save_transform

    image = None
    if args.overlay is not None:
        image = args.image or _case_image(args.moved)
    result = estimate_transform(args.moved, args.clean, label=args.label, method=args.method, seed=args.seed)
    if args.overlay is not None:
        _write_overlay(result, image, args.moved, args.clean, args.label, args.overlay)
    save_transform(result, args.out)
    rot = result["rotation"]
    table = Table(title=f"realign estimate ({result['method']}, label {result['label']} {result['label_name']})")
    table.add_column("quantity")
    table.add_column("value")
    table.add_row("rotation of the correction", f"{rot['angle_deg']:.3f}° about axis {_fmt(rot['axis_voxel'])}")
    table.add_row("in-plane angle: correction / corruption",
                  f"{rot['inplane_deg']:+.3f}° / {rot['corruption_inplane_deg']:+.3f}°")
    table.add_row("shift of the organ centroid (voxels)", _fmt(result["shift_at_centroid_voxel"], 2))
    table.add_row("shift of the organ centroid (mm)", _fmt(result["shift_at_centroid_mm"], 2))
    table.add_row("matrix offset (voxels / mm)",
                  f"{_fmt(result['translation_voxel'], 2)} / {_fmt(result['translation_mm'], 2)}")
    table.add_row("IoU moved vs clean: before → after", f"{result['iou_before']:.4f} → {result['iou_after']:.4f}")
    table.add_row("runtime (s)", f"{result['runtime_s']:.2f}")
    console.print(table)
    console.print(f"wrote {args.out}" + (f" and {args.overlay}" if args.overlay else ""))
    return 0


def _case_image(moved: Path) -> Path:
    from thoraxseg.data.layout import discover_cases

    cases = [c for c in discover_cases(moved.parent) if c.image_path.parent == moved.parent]
    if len(cases) != 1:
        raise InputError(moved.parent, "cannot find the case image for --overlay; give it with --image")
    return cases[0].image_path


def _write_overlay(result: dict[str, Any], image: Path | None, moved: Path, clean: Path, label: int,
                   out: Path) -> None:
    import numpy as np

    from thoraxseg.data.volume import load_image, load_label
    from thoraxseg.realign.estimate import APPLY_MODE
    from thoraxseg.realign.figures import overlay_png
    from thoraxseg.realign.geometry import move_label_cropped

    assert image is not None
    ct = load_image(image)
    mov = load_label(moved)
    if ct.shape != mov.shape:
        raise InputError(image, f"shape {ct.shape} differs from the label's {mov.shape}")
    fixed, _ = move_label_cropped(mov.array, label, np.asarray(result["matrix_voxel"]), APPLY_MODE)
    overlay_png(ct, mov, fixed, load_label(clean), label, out,
                title=f"{result['label_name']}: moved → fixed (IoU {result['iou_before']:.3f} → "
                      f"{result['iou_after']:.3f})")


def _apply_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("patient", "voxels", "overlap", "Δ voxels", "on air before", "on air after", "status"):
        table.add_column(col, justify="left" if col in ("patient", "status") else "right")
    for r in rows:
        status = r["note"] or ("[yellow]still on air[/yellow]" if r["suspicious_after"] else "[green]ok[/green]")

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        table.add_row(r["patient"], str(r["voxels_before"]), str(r["overlap_voxels"]), f"{r['voxels_change']:+d}",
                      pct(r["air_before"]), pct(r["air_after"]), status)
    return table


def run_apply(args: argparse.Namespace) -> int:
    from thoraxseg.realign.apply import apply_transform_to_dataset
    from thoraxseg.realign.fixfile import load_transform

    fix = load_transform(args.transform)
    label = args.label if args.label is not None else (fix.label or 2)
    rows = apply_transform_to_dataset(fix.content, args.data, args.out, label=label, overwrite=args.overwrite)
    console.print(_apply_table(rows, f"realign apply: label {label}, {args.data} → {args.out}"))
    n_bad = sum(1 for r in rows if r["suspicious_after"])
    console.print(f"{len(rows)} patient(s) corrected; {n_bad} with the label still on air; "
                  f"{sum(r['overlap_voxels'] for r in rows)} voxel(s) overlapped other organs")
    if args.summary is not None:
        write_json_atomic(args.summary, rows)
    return 0


def run_corrupt(args: argparse.Namespace) -> int:
    from thoraxseg.realign.corrupt import corrupt_dataset

    rows = corrupt_dataset(args.data, args.out, label=args.label, rotation_deg=args.rotation_deg,
                           center=args.center, shift=args.shift, keep_clean=args.keep_clean,
                           overwrite=args.overwrite)
    table = Table(title=f"realign corrupt: label {args.label}, {args.rotation_deg:+g}° about {args.center}, "
                        f"shift {args.shift} (512 grid)")
    for col in ("patient", "voxels", "overlap", "Δ voxels", "GT_clean"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["patient"], str(r["voxels_before"]), str(r["overlap_voxels"]), f"{r['voxels_change']:+d}",
                      "yes" if r["clean_copy"] else "")
    console.print(table)
    console.print(f"wrote {args.out} (parameters and exact matrices in {args.out / 'corruption.json'})")
    return 0
