"""``thoraxseg phantom`` — write a synthetic thorax CT cohort (SegTHOR training layout)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from thoraxseg.cli import add_overwrite
from thoraxseg.data.layout import COURSE_CLEAN_LABEL_NAME, COURSE_PATIENTS, COURSE_REFERENCE_PATIENT
from thoraxseg.data.phantom import SIZES, generate_cohort
from thoraxseg.utils.progress import console


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="generate a synthetic thorax CT cohort with SegTHOR labels",
        description=(
            "Write DIR/train/Patient_XX/{Patient_XX.nii.gz (int16 HU), GT.nii.gz (uint8)} and "
            "DIR/phantom.json. The same --seed gives byte-identical files."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--cases", type=_positive_int, default=None, metavar="N",
                   help="number of patients (default 10; 40 with --course-layout)")
    p.add_argument("--size", choices=SIZES, default="small",
                   help="small: 128×128×34-57 (3.6-5.5 mm in-plane, ~10 mm slices; CPU work); full: SegTHOR 512×512×135-227 "
                        "(default small)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--corrupt-heart", action="store_true",
                   help="move every heart label with the course's corruption (−27°, shift (50, 40, 15) voxels "
                        "on the 512 grid); Patient_01 keeps GT_clean.nii.gz")
    p.add_argument("--course-layout", action="store_true",
                   help="with --corrupt-heart: write the course's SegTHOR copy exactly — the clean reference is "
                        "Patient_27/GT2.nii.gz next to its moved GT.nii.gz; up to 40 patients, fewer than 27 keep "
                        "the course's numbering (Patient_01..Patient_{N-1} and Patient_27)")
    add_overwrite(p, "replace DIR if it is an earlier phantom cohort")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    cases = args.cases if args.cases is not None else (COURSE_PATIENTS if args.course_layout else 10)
    out = generate_cohort(args.out, cases, size=args.size, seed=args.seed,
                          corrupt_heart=args.corrupt_heart, overwrite=args.overwrite, course_layout=args.course_layout)
    what = " with corrupted heart labels" if args.corrupt_heart else ""
    if args.course_layout:
        what += f" in the course layout (reference {out / 'train' / COURSE_REFERENCE_PATIENT / COURSE_CLEAN_LABEL_NAME})"
    console.print(f"wrote {cases} {args.size} phantom case(s){what} to {out} "
                  f"in {time.perf_counter() - start:.1f} s (parameters: {out / 'phantom.json'})")
    return 0
