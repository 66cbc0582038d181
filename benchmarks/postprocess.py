"""Benchmark the connected-component clean-up: the largest component alone vs pieces bridged across missed slices.

A slice-wise model misses a few slices of a long organ and so cuts it into pieces stacked along the
slice axis. The plain largest 26-connected component (the clean-up before) then drops every piece
but one; :func:`thoraxseg.data.postprocess.keep_largest_component` with the grid's spacing keeps the
pieces stacked within ``SLICE_GAP_MM`` (or one missed slice) of each other. Model: the test suite's shared CustomNet
(``tests/trained_fixture.py``: 10 small phantoms of seed 7), trained once and cached in ``WORK/ref``.
Judged: held-out phantoms of seed 7 (indices 20, 21, …) on the small grid (8–12 mm slices) and on
the SegTHOR grid (``full``: 2–3 mm slices); the raw predictions are cached in ``WORK/pred-SIZE``.

Printed per grid: mean and minimum Dice and mean HD95 (mm) per organ with no clean-up, with the
largest component alone and with each slice gap in ``--gaps`` (mm), how many organs gained or lost
more than 0.01 Dice against the largest component alone, and the clean-up's seconds per volume for
the old and the new way, interleaved in one run (ratio), with the load average.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/postprocess.py [--cases 16] [--gaps 5 10 25] [--work DIR]``
(2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from thoraxseg.data.phantom.generator import generate_case
from thoraxseg.data.postprocess import SLICE_GAP_MM, keep_largest_component
from thoraxseg.inference.predict2d import load_run_model, predict_array, run_spacing_mm
from thoraxseg.labels import ORGANS, label_name
from thoraxseg.metrics.engine import compute_metrics
from thoraxseg.networks import SIZE_MULTIPLE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa import reference_run

console = Console(width=160, highlight=False)
SEED = 7
FIRST = 20


def raw_predictions(run: Path, size: str, cases: int, folder: Path) -> list[Path]:
    """Raw (not cleaned) predictions of held-out phantoms with their labels, cached as ``.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    model, cfg = load_run_model(run)
    spacing_mm, multiple = run_spacing_mm(cfg), SIZE_MULTIPLE[str(cfg["model"])]
    paths = []
    for index in range(FIRST, FIRST + cases):
        path = folder / f"{index}.npz"
        if not path.is_file():
            case = generate_case(SEED, index, size)
            vol = case.image
            pred = predict_array(model, vol.array, int(cfg["image_size"]), cfg["windows"], 32, "cpu", False,
                                 pixel_mm=vol.spacing[:2], spacing_mm=spacing_mm, multiple=multiple)
            tmp = folder / f"{index}.partial.npz"
            np.savez_compressed(tmp, pred=pred, gt=case.labels, spacing=np.array(vol.spacing))
            os.replace(tmp, path)
            console.print(f"  predicted {size} {case.patient_id}")
        paths.append(path)
    return paths


def judge(paths: list[Path], gaps: list[float]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Dice and HD95 per variant (case × organ) and the clean-up seconds of the old and new way."""
    variants = ["none", "largest"] + [f"{g:g} mm" for g in gaps]
    dice = {v: [] for v in variants}
    hd95 = {v: [] for v in variants}
    seconds = {"largest": 0.0, "new": 0.0}
    for path in paths:
        z = np.load(path)
        pred, gt, spacing = z["pred"], z["gt"], tuple(float(s) for s in z["spacing"])
        # timing interleaved: the old way, the new way (default gap), per case
        t = time.perf_counter()
        largest = keep_largest_component(pred)
        seconds["largest"] += time.perf_counter() - t
        t = time.perf_counter()
        keep_largest_component(pred, spacing=spacing)
        seconds["new"] += time.perf_counter() - t
        cleaned = {"none": pred, "largest": largest}
        cleaned.update({f"{g:g} mm": keep_largest_component(pred, spacing=spacing, slice_gap_mm=g) for g in gaps})
        for v, labels in cleaned.items():
            rows = compute_metrics(gt, labels, spacing)
            dice[v].append([float(r["dice"]) for r in rows])
            hd95[v].append([float(r["hd95"]) for r in rows])
    return ({v: np.array(d) for v, d in dice.items()}, {v: np.array(h) for v, h in hd95.items()},
            {k: s / len(paths) for k, s in seconds.items()})


def table(size: str, paths: list[Path], dice: dict, hd95: dict) -> Table:
    names = [label_name(o) for o in ORGANS]
    t = Table(title=f"{size} grid, {len(paths)} held-out phantoms: Dice mean (min) and HD95 mean (mm) per organ; "
                    "gained / lost > 0.01 Dice against the largest component alone")
    t.add_column("clean-up")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("mean Dice", justify="right")
    t.add_column("gained / lost", justify="right")
    base = dice["largest"]
    for v in dice:
        d, h = dice[v], hd95[v]
        cells = [f"{d[:, i].mean():.3f} ({d[:, i].min():.3f}), {np.nanmean(h[:, i]):.1f}" for i in range(len(names))]
        diff = d - base
        t.add_row(v, *cells, f"{d.mean():.4f}", f"{int((diff > 0.01).sum())} / {int((diff < -0.01).sum())}")
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=16, help="held-out phantoms per grid (default 16)")
    parser.add_argument("--gaps", type=float, nargs="+", default=[5.0, SLICE_GAP_MM, 25.0],
                        help=f"slice gaps (mm) to compare (default 5 {SLICE_GAP_MM:g} 25)")
    parser.add_argument("--sizes", nargs="+", default=["small", "full"], choices=["small", "full"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/thoraxseg-bench-postprocess"),
                        help="cache folder: the model (WORK/ref) and raw predictions (WORK/pred-SIZE)")
    args = parser.parse_args()
    run = reference_run(args.work)
    for size in args.sizes:
        paths = raw_predictions(run, size, args.cases, args.work / f"pred-{size}")
        dice, hd95, seconds = judge(paths, args.gaps)
        console.print(table(size, paths, dice, hd95))
        ratio = seconds["new"] / seconds["largest"]
        console.print(f"clean-up seconds per volume ({size}): largest component alone {seconds['largest']:.3f}, "
                      f"with the slice gap {seconds['new']:.3f} (ratio new/old {ratio:.2f}); "
                      f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
