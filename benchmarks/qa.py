"""Benchmark `thoraxseg qa`: detection and correction of per-patient misplaced labels, no clean reference.

Reference: a CustomNet trained on 10 small phantoms of seed 7 (indices 0–9), exactly the test
suite's shared run (``tests/trained_fixture.py``), trained once and cached in ``WORK/ref``.
Judged patients: small phantoms of seed 7 with indices 20, 21, … (patients the run never saw; ``--first``
sets the first index, ``--move-seed`` the moved cohort's draw).
Three cohorts of the same patients (so one prediction per patient serves all three):

* ``moved`` — each patient gets its own random rigid move of the heart or the aorta (in-plane
  10–40°, out of plane ±5°, shift ±25 mm) with probability 0.5, or none
  (:func:`thoraxseg.qa.synthetic.misplaced_cohort`);
* ``clean`` — no move at all;
* ``course`` — every heart moved by the course corruption (−27°, shift (50, 40, 15) on the
  512 grid, scaled), and *no* reference pair used.

The moved and course cohorts are judged twice: with the fit of a misplaced organ refined on the CT
(the default) and by the fit onto the reference alone (``--no-ct-refine``), side by side.

Printed: precision/recall of "misplaced" (patient-organ level), for every fixed organ the IoU gap
to the nearest-neighbour limit (IoU with the clean label of the exact inverse applied to the moved
label) and the rotation error against the exact inverse, the number of changed labels on clean
patients and on the clean cohort, the Dice statistics behind the gate thresholds, seconds per
patient (QA only, the reference prediction excluded) and the load average.

``--size full`` judges the same patients on the SegTHOR grid (512 × 512, 2–3 mm slices) against the
same reference (trained on small phantoms; its prediction resampled by the 2D arm's own mm pipeline).
``--ref-size full`` trains the reference on the same 10 patients on the full grid instead (``WORK/ref-full``).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/qa.py [--cases 20] [--first 20] [--move-seed 1] [--size small|full] [--ref-size small|full]
[--cohorts moved clean course] [--work DIR]``
(2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from thoraxseg.data.overlap import iou
from thoraxseg.data.volume import load_label
from thoraxseg.labels import Organ, label_name
from thoraxseg.qa import synthetic
from thoraxseg.qa.assess import Gate
from thoraxseg.qa.run import REFERENCE_POSTPROCESS, run_qa
from thoraxseg.qa.synthetic import misplaced_cohort
from thoraxseg.realign.geometry import relative_rotation_deg

console = Console(width=160, highlight=False)
ROOT = Path(__file__).resolve().parents[1]
SEED = 7
FIRST = 20
HEART = int(Organ.HEART)


def reference_run(work: Path, size: str = "small") -> Path:
    """The shared test run (tests/trained_fixture.py), trained once into ``work/ref`` (``work/ref-full``: the
    same settings and patients on the full grid)."""
    root = work / ("ref" if size == "small" else f"ref-{size}")
    run = root / "run"
    if (run / "best.pt").is_file():
        return run
    sys.path.insert(0, str(ROOT / "tests"))
    from trained_fixture import train_shared_run

    return train_shared_run(root, size=size)


def cached(path: Path, make) -> dict:
    """The truth of the cohort cached in ``path``, or ``make()`` (which writes it there)."""
    if (path / "truth.json").is_file():
        return json.loads((path / "truth.json").read_text())
    return make()


def judge(name: str, data: Path, truth: dict, pred: Path, work: Path, ct_refine: bool = True) -> dict:
    """Run QA with ``--fix`` (the fit refined on the CT or not); compare with the truth (the clean labels:
    ``work/clean``)."""
    qa_dir, fix_dir = work / f"qa_{name}", work / f"fixed_{name}"
    t0 = time.perf_counter()
    result = run_qa(data, reference=pred, out=qa_dir, fix=fix_dir, overwrite=True, overlays=False,
                    gate=Gate(ct_refine=ct_refine))
    wall = time.perf_counter() - t0
    moved = {(p["patient"], p["organ"]): p for p in truth["patients"] if p["organ"]}
    tp = fp = fn = 0
    gaps, rot_err, changed_clean, other_flags = [], [], 0, []
    for p in result["patients"]:
        pid = p["patient"]
        clean = load_label(work / "clean" / "train" / pid / "GT.nii.gz")
        spacing = clean.spacing
        for r in p["organs"]:
            key = (pid, r["organ"])
            found = r["verdict"] == "misplaced"
            if key in moved:
                tp += found
                fn += not found
                if r["fix_accepted"]:
                    code = int(Organ[r["organ"].upper()])
                    fixed = load_label(fix_dir / "train" / pid / "GT.nii.gz").array
                    t = moved[key]
                    gaps.append(t["limit_iou"] - iou(fixed == code, clean.array == code))
                    rot_err.append(relative_rotation_deg(np.asarray(r["matrix_voxel"]),
                                                         np.linalg.inv(np.asarray(t["matrix_voxel"])), spacing))
            else:
                fp += found
                if r["verdict"] not in ("consistent", "absent", "misplaced"):
                    other_flags.append(f"{pid}/{r['organ']}: {r['verdict']}")
        if not any(k[0] == pid for k in moved):
            src = data / "train" / pid / "GT.nii.gz"
            changed_clean += (fix_dir / "train" / pid / "GT.nii.gz").read_bytes() != src.read_bytes()
    return {"name": name, "result": result, "tp": tp, "fp": fp, "fn": fn, "gaps": gaps, "rot_err": rot_err,
            "changed_clean": changed_clean, "other_flags": other_flags, "wall_s": wall,
            "per_patient_s": result["seconds"]["qa_per_patient"]}


def _fmt_range(values: list[float], digits: int = 3) -> str:
    return "-" if not values else f"{min(values):.{digits}f} … {max(values):.{digits}f} (mean {np.mean(values):.{digits}f})"


def gate_stats(clean: dict, moved: dict, truth: dict) -> Table:
    """Dice before/after the fit and fit motion, clean organs vs moved organs (the gate's evidence)."""
    moved_keys = {(p["patient"], p["organ"]) for p in truth["patients"] if p["organ"]}
    table = Table(title="evidence for the gate thresholds (Dice vs the reference, fit gain, fit motion)")
    for c in ("organ", "clean: Dice", "clean: gain of the fit", "clean: fit move mm", "moved: Dice before",
              "moved: Dice after the fit onto the reference"):
        table.add_column(c)
    for code in (1, 2, 3, 4):
        name = label_name(code)
        cd, cg, cm, md, ma = [], [], [], [], []
        for p in clean["result"]["patients"]:
            r = next(r for r in p["organs"] if r["organ"] == name)
            if r["dice"] is not None:
                cd.append(r["dice"])
            if r["dice_after"] is not None:
                cg.append(r["dice_after"] - r["dice"])
                cm.append(r["fit_move_mm"])
        for p in moved["result"]["patients"]:
            if (p["patient"], name) in moved_keys:
                r = next(r for r in p["organs"] if r["organ"] == name)
                md.append(r["dice"])
                if r["dice_fit_reference"] is not None:  # the fit onto the reference: what the gate judges
                    ma.append(r["dice_fit_reference"])
        table.add_row(name, _fmt_range(cd), _fmt_range(cg), _fmt_range(cm, 1), _fmt_range(md), _fmt_range(ma))
    return table


def realct_cases(folder: Path, n: int = 6, seed: int = 0) -> Table:
    """Heart and aorta of the real CT moved by random rigid moves, judged against a *biased* reference.

    The reference is the clean label with the organ turned by ±3° in-plane and shifted by up to 3 mm per
    axis (a model that is a little off). Printed per case: the IoU gap to the nearest-neighbour limit
    and the rotation error of the fix, by the fit onto the reference alone and refined on the CT.
    """
    from thoraxseg.data.volume import load_image
    from thoraxseg.qa.assess import assess_case, verdict_text
    from thoraxseg.realign.estimate import APPLY_MODE
    from thoraxseg.realign.geometry import centroid, move_label_cropped, rigid_voxel_matrix

    image, labels = load_image(folder / f"{folder.name}.nii.gz"), load_label(folder / "GT.nii.gz")
    ct, clean, sp = image.array, labels.array, np.asarray(labels.spacing)
    rng = np.random.default_rng(seed)
    table = Table(title=f"real CT {folder.name}: moved organ, reference off by 3° and up to 3 mm (seed {seed})")
    for c in ("organ", "move: in-plane °, out of plane °, shift mm", "gap, reference fit", "gap, CT-refined",
              "rotation error °, reference fit", "CT-refined", "verdict (refined)", "s (refined)"):
        table.add_column(c)
    for code in (HEART, int(Organ.AORTA)):
        for _ in range(n // 2):
            angle = float(rng.uniform(10, 30) * rng.choice([-1, 1]))
            tilt, shift = rng.uniform(-5, 5, 2), rng.uniform(-15, 15, 3)
            c = centroid(clean == code)
            move = rigid_voxel_matrix(np.deg2rad([tilt[0], tilt[1], angle]), shift, c, sp)
            moved, _ = move_label_cropped(clean, code, move)
            bias = rigid_voxel_matrix(np.deg2rad([0.0, 0.0, float(rng.choice([-3.0, 3.0]))]), rng.uniform(-3, 3, 3), c, sp)
            reference, _ = move_label_cropped(clean, code, bias)
            truth = np.linalg.inv(move)
            limit, _ = move_label_cropped(moved, code, truth, APPLY_MODE)
            best = iou(limit == code, clean == code)
            cells = []
            for refine in (False, True):
                t0 = time.perf_counter()
                rows, fixed = assess_case(moved, reference, sp, ct, labels.affine, organs=[code],
                                          gate=Gate(ct_refine=refine))
                cells.append((best - iou(fixed == code, clean == code),
                              relative_rotation_deg(np.asarray(rows[0]["matrix_voxel"]), truth, sp),
                              time.perf_counter() - t0, verdict_text(rows[0])))
            table.add_row(label_name(code), f"{angle:+.1f}, {tilt[0]:+.1f}/{tilt[1]:+.1f}, "
                          + "/".join(f"{v:+.1f}" for v in shift), f"{cells[0][0]:.3f}", f"{cells[1][0]:.3f}",
                          f"{cells[0][1]:.2f}", f"{cells[1][1]:.2f}", cells[1][3], f"{cells[1][2]:.1f}")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20, help="patients per cohort (default 20)")
    parser.add_argument("--first", type=int, default=FIRST,
                        help=f"index of the first judged phantom (default {FIRST}; the reference saw 0–9)")
    parser.add_argument("--move-seed", type=int, default=1, help="seed of the moved cohort's random moves")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="phantom grid of the judged cohorts (the reference is trained on small phantoms either "
                             "way; full: SegTHOR geometry, 512 × 512, 2–3 mm slices)")
    parser.add_argument("--ref-size", choices=("small", "full"), default="small",
                        help="phantom grid of the reference run's 10 training patients (default small: the test "
                             "suite's shared run)")
    parser.add_argument("--cohorts", nargs="+", choices=("moved", "clean", "course"),
                        default=["moved", "clean", "course"], help="cohorts to judge (default all three)")
    parser.add_argument("--realct", type=Path, default=ROOT.parent / "shared" / "data" / "realct" / "Patient_R1",
                        help="real CT folder for the biased-reference table (skipped where absent)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the comparison runs without the CT refinement (--no-ct-refine)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.qa-work"),
                        help="cache folder: reference run (WORK/ref), cohorts and predictions (WORK/SIZE-CASES) "
                             "(default benchmarks/.qa-work)")
    args = parser.parse_args()
    os.environ.setdefault("THORAXSEG_NO_PROGRESS", "1")
    torch.set_num_threads(2)
    if args.first < 10:
        parser.error(f"--first {args.first}: the reference run trained on indices 0–9; judge others")
    indices = list(range(args.first, args.first + args.cases))
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = reference_run(args.work, args.ref_size)
    t_ref = time.perf_counter() - t0
    size = args.size
    # cohorts and predictions per grid and patients; the moved cohort per move seed
    work = args.work / f"{size}-{indices[0]}-{args.cases}"
    folders = {"moved": work / f"moved-seed{args.move_seed}", "clean": work / "clean", "course": work / "course"}
    makers = {
        "moved": lambda: misplaced_cohort(folders["moved"], indices, SEED, args.move_seed, 0.5, size=size),
        "clean": lambda: misplaced_cohort(folders["clean"], indices, SEED, 0, 0.0, size=size),
        # every heart moved by the course corruption (no reference pair)
        "course": lambda: synthetic.course_cohort(folders["course"], indices, seed=SEED, size=size),
    }
    # the clean cohort is always made: it is the truth and the images the reference predicts
    truths = {n: cached(folders[n], makers[n]) for n in makers if n == "clean" or n in args.cohorts}
    # cleaned as `qa --run` cleans its reference (run.REFERENCE_POSTPROCESS)
    pred = work / ("pred_largest" if args.ref_size == "small" else f"pred_largest-ref-{args.ref_size}")
    t_pred = 0.0
    if not pred.is_dir():
        from thoraxseg.inference import predict

        t0 = time.perf_counter()
        partial = work / "pred.partial"  # renamed when complete: an interrupted run leaves no half-filled cache
        shutil.rmtree(partial, ignore_errors=True)
        predict(run, work / "clean", partial, postprocess=REFERENCE_POSTPROCESS)
        partial.rename(pred)
        t_pred = time.perf_counter() - t0
    cohorts = {n: truths[n] for n in makers if n in args.cohorts}
    results = {n: judge(n, folders[n], t, pred, work) for n, t in cohorts.items()}
    if not args.no_baseline:  # the same cohorts fixed by the fit onto the reference alone (--no-ct-refine)
        results.update({f"{n}, no CT refinement": judge(n, folders[n], cohorts[n], pred, work, ct_refine=False)
                        for n in ("moved", "course") if n in cohorts})
    load = os.getloadavg()

    table = Table(title=f"thoraxseg qa on {args.cases} {size} phantoms (seed {SEED}, indices {indices[0]}–"
                        f"{indices[-1]}); reference = CustomNet trained on {args.ref_size} phantoms of seed {SEED}, "
                        f"indices 0–9")
    for c in ("cohort", "moved organs", "TP", "FP", "FN", "precision", "recall", "fixed", "IoU gap to limit",
              "rotation error °", "changed clean labels", "other flags", "s / patient"):
        table.add_column(c)
    for n, r in results.items():
        n_moved = r["tp"] + r["fn"]
        prec = r["tp"] / (r["tp"] + r["fp"]) if r["tp"] + r["fp"] else float("nan")
        rec = r["tp"] / n_moved if n_moved else float("nan")
        table.add_row(n, str(n_moved), str(r["tp"]), str(r["fp"]), str(r["fn"]), f"{prec:.3f}", f"{rec:.3f}",
                      str(len(r["gaps"])), _fmt_range(r["gaps"]), _fmt_range(r["rot_err"], 2),
                      str(r["changed_clean"]), str(len(r["other_flags"])), f"{r['per_patient_s']:.2f}")
    console.print(table)
    if "clean" in results and "moved" in results:
        console.print(gate_stats(results["clean"], results["moved"], truths["moved"]))
    for n, r in results.items():
        if r["other_flags"]:
            console.print(f"{n}: other flags on unmoved organs: " + "; ".join(r["other_flags"]))
    if (args.realct / "GT.nii.gz").is_file():
        for seed in (0, 1):
            console.print(realct_cases(args.realct, seed=seed))
    if t_ref > 1:
        console.print(f"reference run: {t_ref:.1f} s (trained or loaded; not counted above)")
    if t_pred:
        console.print(f"reference prediction: {t_pred:.1f} s for {args.cases} patients (not counted above)")
    console.print(f"torch threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}, load average "
                  f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
