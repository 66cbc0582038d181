"""``thoraxseg evaluate`` on SegTHOR-size files: reading, the whole command, and MONAI on the same files.

Two 512 × 512 × 200 label pairs (0.98 × 0.98 × 2.5 mm) from ``metrics_speed.make_case``: the plain
one, and one with interior holes (2 % of every organ's voxels removed at random, seeded, in the ground
truth and the prediction), plus a full-size phantom CT (int16 HU) resampled to the same size.
Printed, side by side in this one run:

* reading with ``load_volume``: label, CT (best of ``--repeats``; targets 0.3 s and 0.6 s);
* ``compute_metrics`` on the arrays in memory (best of ``--repeats``);
* the whole evaluation in this process (``evaluate_folders``: file checks, reading, metrics; best of
  ``--repeats``); target ≤ 1.5 × the in-memory metrics;
* ``thoraxseg evaluate`` as a process, start-up, imports, file checks, reading, summary table and CSV
  included (best of ``--repeats``);
* MONAI as a process on the same files: nibabel reading, one-hot, ``compute_dice``,
  ``compute_hausdorff_distance`` (max and 95th percentile) and ``compute_average_surface_distance``
  (symmetric) — four of our ten metrics; target: ours ≥ 30 × faster. MONAI is run once (minutes);
* the import floor of each side: a process that only imports the libraries it needs (ours: numpy,
  scipy.ndimage, scipy.spatial, nibabel, pandas, rich; MONAI's: numpy, nibabel, torch, monai.metrics),
  best of ``--repeats`` — what no evaluation written on those libraries can get under.

Both processes get the same threads (``--threads``, default 2). Run:
``.venv/bin/python benchmarks/evaluate_speed.py [--repeats 3] [--skip-monai] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_speed import SPACING, make_case
from segment import make_ct
from thoraxseg.data.volume import load_volume, save_volume
from thoraxseg.metrics.engine import compute_metrics
from thoraxseg.metrics.evaluate import evaluate_folders

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "thoraxseg"

OUR_IMPORTS = "import numpy, scipy.ndimage, scipy.spatial, nibabel, pandas, rich.table"
MONAI_IMPORTS = "import numpy, nibabel, torch, monai.metrics"

MONAI_SCRIPT = """
import sys, numpy as np, nibabel as nib, torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
gt_img, pr_img = nib.load(sys.argv[1]), nib.load(sys.argv[2])
sp = [float(v) for v in gt_img.header.get_zooms()[:3]]
def onehot(img):
    a = torch.from_numpy(np.asarray(img.dataobj).astype(np.int64))
    return torch.nn.functional.one_hot(a, 5).permute(3, 0, 1, 2)[None].float()
y, yp = onehot(gt_img), onehot(pr_img)
d = compute_dice(yp, y, include_background=False)
h = compute_hausdorff_distance(yp, y, spacing=sp)
h95 = compute_hausdorff_distance(yp, y, percentile=95, spacing=sp)
a = compute_average_surface_distance(yp, y, symmetric=True, spacing=sp)
print("dice", d.numpy().round(4).tolist(), "hd95", h95.numpy().round(3).tolist())
"""


def with_holes(gt: np.ndarray, pred: np.ndarray, fraction: float = 0.02, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``fraction`` of every organ's voxels at random (seeded) in both label volumes."""
    rng = np.random.default_rng(seed)
    out = []
    for lab in (gt, pred):
        lab = lab.copy()
        hole = (lab > 0) & (rng.random(lab.shape, dtype=np.float32) < fraction)
        lab[hole] = 0
        out.append(lab)
    return out[0], out[1]


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_process(argv: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-monai", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temp folder)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        gt, pred = make_case()
        cases = {"plain": (gt, pred), "holes 2 %": with_holes(gt, pred)}
        affine = np.diag([*SPACING, 1.0])
        ct, _ = make_ct(gt.shape)
        ct_path = work / "ct.nii.gz"
        save_volume(ct, ct_path)
        rows = []
        for name, (g, p) in cases.items():
            folder = work / name.split()[0]
            for sub, arr in (("gt", g), ("pred", p)):
                (folder / sub).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(arr, affine), folder / sub / "Patient_01.nii.gz")
            gt_file, pred_file = folder / "gt" / "Patient_01.nii.gz", folder / "pred" / "Patient_01.nii.gz"
            t_label = best(lambda f=gt_file: load_volume(f), args.repeats)
            t_mem = best(lambda g=g, p=p: compute_metrics(g, p, SPACING), args.repeats)
            t_whole = best(lambda f=folder: evaluate_folders(f / "gt", f / "pred"), args.repeats)
            argv = [str(EXE), "evaluate", "--gt", str(folder / "gt"), "--pred", str(folder / "pred"),
                    "--out", str(folder / "metrics.csv")]
            t_eval = min(run_process(argv, args.threads) for _ in range(args.repeats))
            t_monai = (float("nan") if args.skip_monai else
                       run_process([sys.executable, "-c", MONAI_SCRIPT, str(gt_file), str(pred_file)], args.threads))
            rows.append((name, t_label, t_mem, t_whole, t_eval, t_monai))
            print(f"{name}: read label {t_label:.3f} s, in memory {t_mem:.3f} s, evaluate_folders {t_whole:.3f} s, "
                  f"evaluate process {t_eval:.3f} s, "
                  f"MONAI process {t_monai:.1f} s", flush=True)
        t_ct = best(lambda: load_volume(ct_path), args.repeats)
    floors = {side: min(run_process([sys.executable, "-c", code], args.threads) for _ in range(args.repeats))
              for side, code in (("ours", OUR_IMPORTS), ("MONAI", MONAI_IMPORTS))}
    print(f"\nread CT 512x512x200 int16: {t_ct:.3f} s (target <= 0.6 s)")
    print(f"import floor (a process importing only the libraries): ours {floors['ours']:.3f} s, "
          f"MONAI {floors['MONAI']:.3f} s; the 30x target needs ours <= MONAI / 30")
    print("| case | read label (s) | metrics in memory (s) | `evaluate_folders` (s) | ratio to in memory "
          "(target <= 1.5) | `thoraxseg evaluate` process (s) | MONAI process (s) | MONAI / ours (target >= 30) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, t_label, t_mem, t_whole, t_eval, t_monai in rows:
        print(f"| {name} | {t_label:.3f} | {t_mem:.3f} | {t_whole:.3f} | {t_whole / t_mem:.2f} | {t_eval:.3f} | "
              f"{t_monai:.1f} | {t_monai / t_eval:.1f} (import floor alone: {t_monai / floors['ours']:.1f}) |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
