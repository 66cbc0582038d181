"""Benchmark of ``thoraxseg segment``: wall time, peak memory and the slowest step per arm and input format.

A phantom CT is resampled to ``--shape`` (default 512 × 512 × 200, SegTHOR's size) and
written as NIfTI and as a DICOM series. For each 2D arm and each settings set (``demo``:
``configs/train2d_demo.yaml``; ``full``: the defaults, image size 256, ENet width 16,
CustomNet width 64) a run folder with freshly initialised weights is exported to a bundle
(inference cost does not depend on the weights' values); each ``--nnunet-run`` (a trained
nnunet3d run folder, e.g. the demo's ``arms/nnunet3d/run``) is exported too. Every
(model, input) pair runs ``thoraxseg segment`` in its own process pinned to ``--threads``
cores (``taskset`` + ``OMP_NUM_THREADS``), so the peak memory is that process's maximum
resident set size (``wait4``). The per-step seconds come from the case's ``summary.json``.

Usage::

    python benchmarks/segment.py                                   # 512×512×200, 2 cores, ENet + CustomNet
    python benchmarks/segment.py --nnunet-run runs/demo/arms/nnunet3d/run
    python benchmarks/segment.py --shape 128 128 40 --settings demo  # quick check of the script

Run it on an otherwise idle machine: it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from thoraxseg.data.dicom import write_ct_series
from thoraxseg.data.phantom.generator import generate_case
from thoraxseg.data.volume import Volume, save_volume
from thoraxseg.inference.bundle import export_model
from thoraxseg.networks import build_model
from thoraxseg.training.config import dump_yaml, load_yaml, resolve_config
from thoraxseg.training.trainer import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def make_ct(shape: tuple[int, int, int], seed: int = 0) -> Volume:
    """A full-size phantom CT resampled (linear) to exactly ``shape`` voxels, int16 HU, same field of view."""
    case = generate_case(seed=seed, index=0, size="full")
    src = case.image
    factors = [n / s for n, s in zip(shape, src.shape, strict=True)]
    arr = ndimage.zoom(src.array.astype(np.float32), factors, order=1, grid_mode=True, mode="nearest")
    arr = np.rint(arr[: shape[0], : shape[1], : shape[2]]).astype(np.int16)
    aff = src.affine.copy()
    aff[:3, :3] = src.affine[:3, :3] / np.array(factors)
    # keep the field of view: the first voxel centre moves by half the size change of a voxel
    aff[:3, 3] = src.affine[:3, 3] + src.affine[:3, :3] @ ((1 / np.array(factors) - 1) / 2)
    return Volume(arr, aff)


def make_2d_run(run: Path, arm: str, settings: str) -> Path:
    """A 2D run folder with initialised (untrained) weights and the ``settings`` configuration."""
    base = load_yaml(ROOT / "configs" / "train2d_demo.yaml") if settings == "demo" else {}
    cfg = resolve_config({**base, "model": arm})
    torch.manual_seed(0)
    net = build_model(arm, in_channels=len(cfg.windows), width=cfg.width, dropout=cfg.dropout)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": 0, "model": net.state_dict()},
               run / "best.pt")
    return run


def run_segment(inp: Path, bundle: Path, out: Path, threads: int) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and summary.json of one ``thoraxseg segment`` process."""
    env = {**os.environ, "THORAXSEG_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "thoraxseg", "segment", str(inp), "--model", str(bundle), "--out", str(out),
           "--overwrite"]
    if shutil.which("taskset") and (os.cpu_count() or 1) >= threads:
        cmd = ["taskset", "-c", f"0-{threads - 1}", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"segment failed on {inp}: {err.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    return wall, usage.ru_maxrss / 1024.0, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200), metavar=("X", "Y", "Z"))
    ap.add_argument("--threads", type=int, default=2, help="cores per segment process (default 2)")
    ap.add_argument("--arms", default="enet,customnet", help="2D arms (comma-separated)")
    ap.add_argument("--settings", default="demo,full", help="2D settings sets: demo, full (comma-separated)")
    ap.add_argument("--nnunet-run", type=Path, action="append", default=[], help="trained nnunet3d run folder(s)")
    ap.add_argument("--inputs", default="nifti,dicom", help="input formats: nifti, dicom")
    ap.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary folder)")
    args = ap.parse_args()

    console.print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="thoraxseg-bench-segment-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    ct = make_ct(shape)
    inputs = {}
    if "nifti" in args.inputs:
        inputs["nifti"] = work / "ct.nii.gz"
        save_volume(ct, inputs["nifti"])
    if "dicom" in args.inputs:
        inputs["dicom"] = work / "ct_dicom"
        shutil.rmtree(inputs["dicom"], ignore_errors=True)
        write_ct_series(ct, inputs["dicom"])
    console.print(f"CT {shape} at {ct.spacing} mm made in {time.perf_counter() - t0:.0f} s")

    models: list[tuple[str, Path]] = []
    for arm in [a for a in args.arms.split(",") if a]:
        for settings in [s for s in args.settings.split(",") if s]:
            run = make_2d_run(work / f"run_{arm}_{settings}", arm, settings)
            models.append((f"{arm} ({settings})", export_model(run, work / f"{arm}_{settings}.zip")))
    for i, run in enumerate(args.nnunet_run):
        models.append((f"nnunet3d ({run.name if i else 'given run'})", export_model(run, work / f"nnunet_{i}.zip")))

    table = Table(title=f"thoraxseg segment, {shape[0]}×{shape[1]}×{shape[2]} CT, {args.threads} cores")
    for col in ("model", "input", "wall s", "peak RSS MB", "predict s", "read s", "rtstruct s", "slowest step"):
        table.add_column(col)
    for name, bundle in models:
        for kind, inp in inputs.items():
            wall, rss, summary = run_segment(inp, bundle, work / "out" / f"{bundle.stem}_{kind}", args.threads)
            sec = {k: v for k, v in summary["manifest"]["seconds"].items() if k not in ("total", "open_model")}
            slowest = max(sec, key=sec.get)
            table.add_row(name, kind, f"{wall:.1f}", f"{rss:.0f}", f"{sec.get('predict', 0):.1f}",
                          f"{sec.get('read', 0):.1f}", f"{sec.get('write_rtstruct', float('nan')):.1f}",
                          f"{slowest} ({sec[slowest]:.1f} s)")
            console.print(f"{name:>22} {kind:>6}: {wall:.1f} s, {rss:.0f} MB; steps {sec}")
    console.print(table)
    console.print(f"load average after: {os.getloadavg()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
