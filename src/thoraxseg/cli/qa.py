"""``thoraxseg qa`` — find and fix misplaced organ labels against a trained model's prediction."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from thoraxseg.utils.progress import console


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 folds, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qa",
        help="judge every label against a trained model's prediction; find and fix misplaced organs",
        description=(
            "Label QA without a clean reference: each patient's prediction by a trained run is the "
            "reference. Per patient and organ: Dice/IoU, centroid offset, volume ratio, HD95, on-air "
            "fraction and a verdict (consistent, misplaced, missing, extra, swapped, disagreement). "
            "Misplaced organs get a rigid fit onto the reference; --fix writes a corrected copy."
        ),
    )
    p.add_argument("--data", type=Path, required=True, help="dataset to check (SegTHOR layout)")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--run", type=Path, help="trained run (any arm) whose prediction is the reference")
    ref.add_argument("--cross-validate", type=_positive, metavar="K",
                     help="instead: train K quick runs on DATA; each patient is predicted by the run that did "
                          "not see it")
    ref.add_argument("--reference", type=Path, metavar="PRED_DIR",
                     help="instead: existing predictions Patient_XX.nii.gz (e.g. `thoraxseg predict` output)")
    p.add_argument("--out", type=Path, default=Path("qa"), help="QA folder (default ./qa; must not exist)")
    p.add_argument("--fix", type=Path, default=None, metavar="OUT_DATA",
                   help="write a corrected copy of DATA here (accepted fixes only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the registrations and the fold split (default 0)")
    p.add_argument("--device", default="cpu", help="device of the prediction / fold training (default cpu)")
    p.add_argument("--cv-epochs", type=int, default=None, help="epochs of each cross-validation run (default 10)")
    p.add_argument("--no-overlays", action="store_true", help="skip the before/after PNGs of misplaced organs")
    p.add_argument("--no-ct-refine", action="store_true",
                   help="fix misplaced organs by the fit onto the reference alone (default: refine that fit on the CT)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --out / --fix folders")
    p.set_defaults(func=run)


_STYLE = {"consistent": "green", "absent": "dim", "misplaced": "yellow", "missing": "red", "extra": "red",
          "swapped": "red", "disagreement": "magenta"}


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def qa_table(result: dict[str, Any]) -> Table:
    """The on-screen table: one row per patient and organ."""
    from thoraxseg.qa.assess import verdict_text

    table = Table(title=f"label QA of {result['data']} (reference: {result['reference']['kind']})")
    for col in ("patient", "organ", "Dice", "centroid Δ mm", "vol ratio", "HD95 mm", "on air", "Dice after fit",
                "fit rot °", "fit move mm", "verdict"):
        table.add_column(col, justify="left" if col in ("patient", "organ", "verdict") else "right")
    for p in result["patients"]:
        for r in p["organs"]:
            style = _STYLE.get(r["verdict"], "")
            note = f" ({r['note']})" if r["note"] and r["verdict"] != "consistent" else ""
            verdict = verdict_text(r) + note
            table.add_row(p["patient"], r["organ"], _f(r["dice"]), _f(r["centroid_offset_mm"], ".1f"),
                          _f(r["volume_ratio"], ".2f"), _f(r["hd95_mm"], ".1f"),
                          "-" if r["air_fraction"] is None else f"{r['air_fraction']:.1%}", _f(r["dice_after"]),
                          _f(r["fit_rotation_deg"], ".1f"), _f(r["fit_move_mm"], ".1f"),
                          f"[{style}]{verdict}[/{style}]" if style else verdict)
    return table


def run(args: argparse.Namespace) -> int:
    from thoraxseg.qa.assess import Gate
    from thoraxseg.qa.run import run_qa

    cv = {"epochs": args.cv_epochs} if args.cv_epochs is not None else None
    gate = Gate(ct_refine=not args.no_ct_refine)
    result = run_qa(args.data, run=args.run, out=args.out, fix=args.fix, cross_validate=args.cross_validate,
                    reference=args.reference, gate=gate, seed=args.seed, overwrite=args.overwrite, device=args.device,
                    overlays=not args.no_overlays, cv_options=cv)
    console.print(qa_table(result))
    s = result["summary"]
    counts = ", ".join(f"{n} {v}" for v, n in s["verdicts"].items() if n)
    console.print(f"{s['patients']} patient(s): {counts}; flagged: {', '.join(s['flagged_patients']) or 'none'}; "
                  f"fixed: {', '.join(s['fixed_patients']) or 'none'}")
    console.print(f"wrote {args.out}/qa.csv, {args.out}/qa.json" + (f" and the corrected copy {args.fix}"
                                                                     if args.fix else ""))
    return 0
