"""Benchmark label realignment: accuracy and speed of `sweep` vs `elastix`, and of `apply`.

Data: a full-size phantom cohort (512×512×Z, SegTHOR geometry) corrupted with the course transform
(−27° about (275, 200, 0), shift (50, 40, 15) voxels), every patient keeping its clean heart; and
the real CT ``../shared/data/realct/Patient_R1`` (heart) corrupted with the same transform scaled
to its 120×126×164 grid. If the phantom generator is not importable, a synthetic heart on a
512×512×200 grid (``thoraxseg.realign.synthetic``) stands in, and the table says so.

For every case and method: the estimate is made from that case's (moved, clean) pair and applied
to that case with ``apply_transform_to_dataset`` (I/O included). Errors are against the exact
inverse ``F = M⁻¹`` of the corruption: rotation error = angle of ``R̂ Rᵀ`` (mm frame), translation
error = ``|F̂c − Fc|`` in voxels at the clean heart's centroid ``c``. "IoU best" is the IoU after
applying the exact inverse (nearest-neighbour resampling twice and parts moved off the grid cost a
little). Then the reference fix (first phantom patient, sweep) is applied to the whole cohort — the
real use — and per-patient IoU and air fractions are printed.

Run: ``.venv/bin/python benchmarks/realign.py [--cases 3] [--methods sweep elastix] [--work DIR]``.
Timings depend on machine load; the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from thoraxseg.data.transforms import COURSE_ROTATION_DEG
from thoraxseg.data.volume import load_label
from thoraxseg.labels import Organ
from thoraxseg.realign.apply import apply_transform_to_dataset
from thoraxseg.realign.corrupt import corrupt_dataset
from thoraxseg.realign.estimate import APPLY_MODE, estimate_transform
from thoraxseg.realign.geometry import (
    centroid,
    iou,
    move_label_cropped,
    relative_rotation_deg,
    rotation_parameters,
    translation_error_vox,
)

console = Console(width=180, highlight=False)  # wide enough for the tables when piped to a file

ROOT = Path(__file__).resolve().parents[1]
REALCT = Path(os.environ.get("THORAXSEG_REALCT_DIR", ROOT.parent / "shared" / "data" / "realct" / "Patient_R1"))
HEART = int(Organ.HEART)


def make_cohort(raw: Path, cases: int, seed: int) -> str:
    """Write the clean cohort; returns a description of the data source."""
    if raw.exists():
        return "cached: " + raw.name
    try:
        from thoraxseg.data.phantom import generate_cohort
    except ImportError:
        generate_cohort = None
    if generate_cohort is not None:
        t = time.perf_counter()
        generate_cohort(raw, cases, size="full", seed=seed, corrupt_heart=False, progress=False)
        return f"full-size phantom ({time.perf_counter() - t:.0f} s to generate)"
    from thoraxseg.realign.synthetic import synthetic_thorax, write_case

    for i in range(cases):
        ct, labels = synthetic_thorax((512, 512, 200), (0.9, 0.9, 2.5), seed=seed + i,
                                      heart_center_frac=(0.55 + 0.02 * i, 0.55 - 0.01 * i, 0.35))
        write_case(raw / "train" / f"Patient_{i + 1:02d}", ct, labels, (0.9, 0.9, 2.5))
    return "SYNTHETIC heart on 512x512x200 (phantom generator not importable)"


def evaluate_case(case_dir: Path, truth: np.ndarray, method: str, work: Path) -> dict:
    """Estimate on the case's own pair, apply to the case, compare with the truth."""
    moved_path, clean_path = case_dir / "GT.nii.gz", case_dir / "GT_clean.nii.gz"
    t = time.perf_counter()
    fix = estimate_transform(moved_path, clean_path, method=method)
    t_est = time.perf_counter() - t
    out = work / f"fixed_{method}_{case_dir.name}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    apply_transform_to_dataset(fix, case_dir, out)
    t_apply = time.perf_counter() - t
    clean = load_label(clean_path)
    moved = load_label(moved_path).array
    c = clean.array == HEART
    fixed = load_label(out / "GT.nii.gz").array == HEART
    best, _ = move_label_cropped(moved, HEART, truth, APPLY_MODE)
    matrix = np.asarray(fix["matrix_voxel"])
    shutil.rmtree(out, ignore_errors=True)
    return {
        "true_deg": -rotation_parameters(truth, clean.spacing)[2],
        "est_deg": fix["rotation"]["corruption_inplane_deg"],
        "rot_err": relative_rotation_deg(matrix, truth, clean.spacing),
        "trans_err": translation_error_vox(matrix, truth, centroid(c)),
        "iou_fixed": iou(fixed, c),
        "iou_best": iou(best == HEART, c),
        "t_est": t_est,
        "t_load": fix["load_s"],
        "t_apply": t_apply,
        "shape": "x".join(map(str, clean.shape)),
    }


def write_figures(folder: Path, cases: list[tuple[str, Path, np.ndarray]]) -> None:
    """Before/after overlays of the reference phantom patient and of the real CT (sweep estimate)."""
    from thoraxseg.data.layout import discover_cases
    from thoraxseg.data.volume import load_image
    from thoraxseg.realign.figures import overlay_png

    picks = [(cases[0], "realign_overlay.png")]
    picks += [(c, "realign_overlay_realct.png") for c in cases if c[0].startswith("real CT")]
    for (name, case_dir, _), filename in picks:
        fix = estimate_transform(case_dir / "GT.nii.gz", case_dir / "GT_clean.nii.gz")
        moved = load_label(case_dir / "GT.nii.gz")
        fixed, _ = move_label_cropped(moved.array, HEART, np.asarray(fix["matrix_voxel"]), APPLY_MODE)
        image = load_image(discover_cases(case_dir)[0].image_path)
        overlay_png(image, moved, fixed, load_label(case_dir / "GT_clean.nii.gz"), HEART, folder / filename,
                    title=f"{name}: heart moved by the course transform, then fixed "
                          f"(IoU {fix['iou_before']:.3f} → {fix['iou_after']:.3f})")
        console.print(f"wrote {folder / filename}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="phantom patients (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["sweep", "elastix"], choices=["sweep", "elastix"])
    parser.add_argument("--work", type=Path, default=None, help="keep data here (default: a temporary folder)")
    parser.add_argument("--no-realct", action="store_true", help="skip Patient_R1")
    parser.add_argument("--figures", type=Path, default=None,
                        help="also write before/after overlays here (realign_overlay.png, realign_overlay_realct.png)")
    args = parser.parse_args()
    os.environ.setdefault("THORAXSEG_NO_PROGRESS", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="realign_bench_"))
    work.mkdir(parents=True, exist_ok=True)

    source = make_cohort(work / "raw", args.cases, args.seed)
    corrupted = work / "corrupt"
    if not corrupted.exists():
        corrupt_dataset(work / "raw", corrupted, keep_clean="all")
    record = json.loads((corrupted / "corruption.json").read_text())
    cases = [(f"phantom {p['patient']}", corrupted / "train" / p["patient"], np.linalg.inv(p["matrix_voxel"]))
             for p in record["patients"]]
    if not args.no_realct and (REALCT / "GT.nii.gz").is_file():
        real = work / "realct_corrupt"
        if not real.exists():
            corrupt_dataset(REALCT, real)
        rec = json.loads((real / "corruption.json").read_text())
        cases.append(("real CT Patient_R1", real, np.linalg.inv(rec["patients"][0]["matrix_voxel"])))

    t_itk = None
    if "elastix" in args.methods:
        t = time.perf_counter()
        import itk

        itk.ParameterObject  # noqa: B018 - itk loads its modules lazily; time it once, outside the estimates
        t_itk = time.perf_counter() - t

    table = Table(title=f"realign benchmark — {source}; course transform {COURSE_ROTATION_DEG:+.0f}°")
    cols = ["case", "grid", "method", "true angle °", "est angle °", "rot err °", "trans err vox", "IoU fixed",
            "IoU best", "estimate s (load)", "apply s"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("case", "grid", "method") else "right")
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for name, case_dir, truth in cases:
        for method in args.methods:
            r = evaluate_case(case_dir, truth, method, work)
            results[method].append(r)
            table.add_row(name, r["shape"], method, f"{r['true_deg']:.2f}", f"{r['est_deg']:.3f}",
                          f"{r['rot_err']:.3f}", f"{r['trans_err']:.3f}", f"{r['iou_fixed']:.4f}",
                          f"{r['iou_best']:.4f}", f"{r['t_est']:.2f} ({r['t_load']:.2f})", f"{r['t_apply']:.2f}")
    console.print(table)
    for method, rows in results.items():
        rot = max(r["rot_err"] for r in rows)
        trans = max(r["trans_err"] for r in rows)
        gap = max(r["iou_best"] - r["iou_fixed"] for r in rows)
        full = [r for r in rows if r["shape"].startswith("512x512")]
        t_est = max((r["t_est"] for r in full), default=float("nan"))
        t_apply = max((r["t_apply"] for r in full), default=float("nan"))
        console.print(
            f"{method}: worst rotation error {rot:.3f}° (target < 0.1), worst translation error {trans:.3f} voxel "
            f"(< 0.5), worst IoU gap to best {gap:+.4f} (< 0.01), slowest estimate at 512×512 {t_est:.2f} s "
            f"(< 10), slowest apply {t_apply:.2f} s (< 3)")
    if t_itk is not None:
        console.print(f"elastix: importing itk took {t_itk:.1f} s once (not included above)")

    # The real use: one reference pair's fix applied to every patient.
    ref = cases[0][1]
    fix = estimate_transform(ref / "GT.nii.gz", ref / "GT_clean.nii.gz")
    out = work / "fixed_cohort"
    shutil.rmtree(out, ignore_errors=True)
    rows = apply_transform_to_dataset(fix, corrupted, out)
    t2 = Table(title=f"reference fix ({cases[0][0]}, sweep) applied to the whole phantom cohort")
    for col in ("patient", "IoU fixed", "IoU best", "gap", "heart on air before", "after", "apply s"):
        t2.add_column(col, justify="left" if col == "patient" else "right")
    for row, (_, case_dir, truth) in zip(rows, cases, strict=False):
        c = load_label(case_dir / "GT_clean.nii.gz").array == HEART
        moved = load_label(case_dir / "GT.nii.gz").array
        best, _ = move_label_cropped(moved, HEART, truth, APPLY_MODE)
        fixed = load_label(out / "train" / row["patient"] / "GT.nii.gz").array == HEART
        i_fix, i_best = iou(fixed, c), iou(best == HEART, c)
        t2.add_row(row["patient"], f"{i_fix:.4f}", f"{i_best:.4f}", f"{i_best - i_fix:+.4f}",
                   f"{row['air_before']:.1%}", f"{row['air_after']:.1%}", f"{row['seconds']:.2f}")
    console.print(t2)
    if args.figures is not None:
        write_figures(args.figures, cases)
    load = os.getloadavg()
    console.print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
                  f"(1/5/15 min); timings are wall-clock")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
