"""Benchmark of ``thoraxseg segment``: wall time, peak memory and the slowest step per arm and input format.

A phantom CT is resampled to ``--shape`` (default 512 × 512 × 200, SegTHOR's size) and
written as NIfTI and as a DICOM series. Models:

- every ``--run`` (a trained run folder of any arm, e.g. the demo's ``runs/demo/arms/<arm>/run``);
- with ``--nnunet-default``, nnU-Net's default plan (the full-size 3D setting: nnU-Net plans it for
  ``--nnunet-cases`` full-size phantoms, 512 × 512 at ~1 mm) with one training step, i.e. untrained weights
  as for the 2D rows, predicted without mirroring (``--no-tta``): on 2 cores one 56 × 192 × 192 tile of its
  32→320-feature network takes ~10 s, ×8 with mirroring, so the default (mirrored) prediction is timed per
  tile and its total estimated from the tile count (printed as such, not run);
- for each 2D arm and settings set in ``--settings`` (``demo``: ``configs/train2d_demo.yaml``;
  ``full``: the defaults, image size 256, ENet width 16, CustomNet width 64), a run with
  freshly initialised weights: the prediction cost does not depend on the weights' values,
  but an untrained network predicts speckle, whose tens of thousands of contours would make the
  RTSTRUCT step meaningless (minutes), so these rows write every format but the RTSTRUCT; the
  ``writers on GT`` row gives the export cost of real organ shapes (add its RTSTRUCT seconds).

Each is exported to a bundle, and every (model, input) pair runs ``thoraxseg segment`` in its
own process pinned to ``--threads`` cores (``taskset`` + ``OMP_NUM_THREADS``), so the peak
memory is that process's maximum resident set size (``wait4``). The per-step seconds come
from the case's ``summary.json``. A last row times the writers (NIfTI, .seg.nrrd, DICOM-SEG,
RTSTRUCT) on the phantom's ground-truth labels at the same size, in this process.

Usage::

    python benchmarks/segment.py --run runs/demo/arms/enet/run --run runs/demo/arms/customnet/run \\
        --run runs/demo/arms/nnunet3d/run             # demo runs + full-size untrained 2D settings
    python benchmarks/segment.py --shape 128 128 40 --settings demo  # quick check of the script
    python benchmarks/segment.py --arms "" --nnunet-default --inputs nifti   # nnU-Net default plan, ~30 min

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
from thoraxseg.inference import run_model_name
from thoraxseg.inference.bundle import export_model
from thoraxseg.networks import build_model
from thoraxseg.training.config import dump_yaml, load_yaml, resolve_config
from thoraxseg.training.trainer import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def make_ct(shape: tuple[int, int, int], seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A full-size phantom CT (int16 HU) and its GT labels resampled to exactly ``shape`` voxels, same field of view."""
    case = generate_case(seed=seed, index=0, size="full")
    src = case.image
    factors = [n / s for n, s in zip(shape, src.shape, strict=True)]
    arr = ndimage.zoom(src.array.astype(np.float32), factors, order=1, grid_mode=True, mode="nearest")
    arr = np.rint(arr[: shape[0], : shape[1], : shape[2]]).astype(np.int16)
    lab = ndimage.zoom(np.asarray(case.labels, np.uint8), factors, order=0, grid_mode=True, mode="nearest")
    aff = src.affine.copy()
    aff[:3, :3] = src.affine[:3, :3] / np.array(factors)
    # keep the field of view: the first voxel centre moves by half the size change of a voxel
    aff[:3, 3] = src.affine[:3, 3] + src.affine[:3, :3] @ ((1 / np.array(factors) - 1) / 2)
    return Volume(arr, aff), np.ascontiguousarray(lab[: shape[0], : shape[1], : shape[2]])


def time_writers(ct: Volume, labels: np.ndarray, dicom: Path, out: Path) -> dict[str, float]:
    """Seconds of each writer on ``labels`` (ground truth) for the DICOM series ``dicom``."""
    from thoraxseg.data.dicom import read_ct_series
    from thoraxseg.data.volume import save_label
    from thoraxseg.export.dicomseg import write_dicom_seg
    from thoraxseg.export.rtstruct import write_rtstruct
    from thoraxseg.export.segnrrd import write_seg_nrrd

    out.mkdir(parents=True, exist_ok=True)
    sec: dict[str, float] = {}
    t = time.perf_counter()
    series = read_ct_series(dicom)
    sec["read"] = time.perf_counter() - t
    for name, fn in (("write_nifti", lambda: save_label(labels, ct, out / "labels.nii.gz")),
                     ("write_seg-nrrd", lambda: write_seg_nrrd(labels, ct, out / "labels.seg.nrrd")),
                     ("write_dicom-seg", lambda: write_dicom_seg(labels, series, out / "seg.dcm")),
                     ("write_rtstruct", lambda: write_rtstruct(labels, series, out / "rtstruct.dcm"))):
        t = time.perf_counter()
        fn()
        sec[name] = time.perf_counter() - t
    return sec


def make_2d_run(run: Path, arm: str, settings: str, fov_mm: float) -> Path:
    """A 2D run folder with initialised (untrained) weights and the ``settings`` configuration.

    Its pixel size is what training on scans of ``fov_mm`` (in-plane field of view) would derive:
    ``fov_mm / image_size``, so this CT fills the network grid, as the median training scan would.
    """
    base = load_yaml(ROOT / "configs" / "train2d_demo.yaml") if settings == "demo" else {}
    size = resolve_config({**base, "model": arm}).image_size
    cfg = resolve_config({**base, "model": arm, "spacing_mm": round(fov_mm / size, 3)})
    torch.manual_seed(0)
    net = build_model(arm, in_channels=len(cfg.windows), width=cfg.width, dropout=cfg.dropout)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": 0, "model": net.state_dict()},
               run / "best.pt")
    return run


def make_nnunet_default_run(work: Path, cases: int) -> Path:
    """An nnU-Net run with nnU-Net's default plan for ``cases`` full-size phantoms, after one training step."""
    from thoraxseg.data.phantom import generate_cohort
    from thoraxseg.nnunet.api import train_nnunet

    data = work / "nnunet_default_data"
    if not data.is_dir():
        generate_cohort(data, cases=cases, size="full", seed=7)
    return train_nnunet(data, work / "run_nnunet_default", folds="all", epochs=1, iterations_per_epoch=1,
                        plans="default", val_iterations_per_epoch=1, final_validation=False)


def time_nnunet_tiles(run: Path, ct: Volume, threads: int) -> dict[str, float]:
    """Seconds of one sliding-window tile with and without mirroring, and the tile count for ``ct``.

    The tile count is nnU-Net's own (``compute_steps_for_sliding_window``) for the CT resampled to the
    plan's spacing, step 0.5.
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    from thoraxseg.nnunet.api import load_predictor

    torch.set_num_threads(threads)
    predictor = load_predictor(run, tta=True)
    patch = list(predictor.configuration_manager.patch_size)
    target = predictor.configuration_manager.spacing  # (z, y, x) mm
    shape_zyx = [round(n * s / t) for n, s, t in zip(ct.shape[::-1], ct.spacing[::-1], target, strict=True)]
    steps = compute_steps_for_sliding_window([max(a, b) for a, b in zip(shape_zyx, patch, strict=True)], patch, 0.5)
    tile = torch.zeros((1, 1, *patch))
    out: dict[str, float] = {"tiles": float(np.prod([len(s) for s in steps]))}
    with torch.no_grad():
        predictor.use_mirroring = False
        predictor._internal_maybe_mirror_and_predict(tile)  # warm-up
        for mirror in (False, True):
            predictor.use_mirroring = mirror
            t0 = time.perf_counter()
            predictor._internal_maybe_mirror_and_predict(tile)
            out["mirrored" if mirror else "plain"] = time.perf_counter() - t0
    return out


def run_segment(inp: Path, bundle: Path, out: Path, threads: int, formats: str | None = None,
                extra: tuple[str, ...] = ()) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and summary.json of one ``thoraxseg segment`` process."""
    env = {**os.environ, "THORAXSEG_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "thoraxseg", "segment", str(inp), "--model", str(bundle), "--out", str(out),
           "--overwrite", *(["--formats", formats] if formats else []), *extra]
    if shutil.which("taskset") and (os.cpu_count() or 1) >= threads:
        cmd = ["taskset", "-c", f"0-{threads - 1}", *cmd]
    # Peak memory from GNU time in a small intermediate process: a child forked straight from this
    # (large) benchmark process reports this process's resident size as its own ru_maxrss.
    gnu_time = shutil.which("time") or "/usr/bin/time"
    cmd = [gnu_time, "-f", "maxrss_kb=%M", *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"segment failed on {inp}: {done.stderr.strip()}")
    rss_kb = next((int(line.split("=", 1)[1]) for line in reversed(done.stderr.splitlines())
                   if line.startswith("maxrss_kb=")), None)
    if rss_kb is None:
        raise SystemExit(f"no peak memory from {gnu_time} (install GNU time: apt-get install time)")
    summary = json.loads((out / "summary.json").read_text())
    return wall, rss_kb / 1024.0, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200), metavar=("X", "Y", "Z"))
    ap.add_argument("--threads", type=int, default=2, help="cores per segment process (default 2)")
    ap.add_argument("--arms", default="enet,customnet", help="2D arms (comma-separated)")
    ap.add_argument("--settings", default="demo,full", help="2D settings sets: demo, full (comma-separated)")
    ap.add_argument("--run", type=Path, action="append", default=[], help="trained run folder(s), any arm")
    ap.add_argument("--inputs", default="nifti,dicom", help="input formats: nifti, dicom")
    ap.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary folder)")
    ap.add_argument("--nnunet-default", action="store_true",
                    help="also time nnU-Net's default plan (untrained, no mirroring; mirrored cost per tile)")
    ap.add_argument("--nnunet-cases", type=int, default=3, help="full-size phantoms nnU-Net plans on (default 3)")
    ap.add_argument("--nnunet-run", type=Path, help="reuse this --nnunet-default run folder instead of making one")
    args = ap.parse_args()

    console.print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="thoraxseg-bench-segment-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    ct, gt = make_ct(shape)
    inputs = {}
    if "nifti" in args.inputs:
        inputs["nifti"] = work / "ct.nii.gz"
        save_volume(ct, inputs["nifti"])
    if "dicom" in args.inputs:
        inputs["dicom"] = work / "ct_dicom"
        shutil.rmtree(inputs["dicom"], ignore_errors=True)
        write_ct_series(ct, inputs["dicom"])
    console.print(f"CT {shape} at {ct.spacing} mm made in {time.perf_counter() - t0:.0f} s")

    models: list[tuple[str, Path, bool, tuple[str, ...]]] = []  # (name, bundle, trained, extra segment args)
    for i, run in enumerate(args.run):
        arm = run_model_name(run)
        models.append((f"{arm} (trained: {run})", export_model(run, work / f"trained_{i}_{arm}.zip"), True, ()))
    tiles = None
    if args.nnunet_default:
        t0 = time.perf_counter()
        nn_run = args.nnunet_run or make_nnunet_default_run(work, args.nnunet_cases)
        console.print(f"nnU-Net default-plan run {nn_run} ready in {time.perf_counter() - t0:.0f} s")
        tiles = time_nnunet_tiles(nn_run, ct, args.threads)
        models.append(("nnunet3d (default plan, untrained, no mirroring)",
                       export_model(nn_run, work / "nnunet_default.zip"), False, ("--no-tta",)))
    for arm in [a for a in args.arms.split(",") if a]:
        for settings in [s for s in args.settings.split(",") if s]:
            fov = max(n * d for n, d in zip(ct.shape[:2], ct.spacing[:2], strict=True))
            run = make_2d_run(work / f"run_{arm}_{settings}", arm, settings, fov)
            models.append((f"{arm} ({settings}, untrained)", export_model(run, work / f"{arm}_{settings}.zip"),
                           False, ()))

    table = Table(title=f"thoraxseg segment, {shape[0]}×{shape[1]}×{shape[2]} CT, {args.threads} cores")
    for col in ("model", "input", "wall s", "peak RSS MB", "predict s", "read s", "rtstruct s", "slowest step"):
        table.add_column(col)
    for name, bundle, trained, extra in models:
        for kind, inp in inputs.items():
            formats = None if trained or kind != "dicom" else "nifti,seg-nrrd,dicom-seg"
            wall, rss, summary = run_segment(inp, bundle, work / "out" / f"{bundle.stem}_{kind}", args.threads,
                                             formats, extra)
            sec = {k: v for k, v in summary["manifest"]["seconds"].items() if k not in ("total", "open_model")}
            slowest = max(sec, key=sec.get)
            table.add_row(name, kind, f"{wall:.1f}", f"{rss:.0f}", f"{sec.get('predict', 0):.1f}",
                          f"{sec.get('read', 0):.1f}",
                          f"{sec['write_rtstruct']:.1f}" if "write_rtstruct" in sec else "—",
                          f"{slowest} ({sec[slowest]:.1f} s)")
            console.print(f"{name:>22} {kind:>6}: {wall:.1f} s, {rss:.0f} MB; steps {sec}")
    if "dicom" in inputs:
        sec = time_writers(ct, gt, inputs["dicom"], work / "out" / "writers_gt")
        slowest = max(sec, key=sec.get)
        table.add_row("writers on GT", "dicom", f"{sum(sec.values()):.1f}", "", "", f"{sec['read']:.1f}",
                      f"{sec['write_rtstruct']:.1f}", f"{slowest} ({sec[slowest]:.1f} s)")
        console.print(f"{'writers on GT':>22}  dicom: steps { {k: round(v, 2) for k, v in sec.items()} }")
    console.print(table)
    if tiles is not None:
        n = int(tiles["tiles"])
        console.print(f"nnU-Net default plan, one tile on {args.threads} cores: {tiles['plain']:.1f} s, mirrored "
                      f"{tiles['mirrored']:.1f} s ({tiles['mirrored'] / tiles['plain']:.1f}x); {n} tiles for this CT "
                      f"-> sliding window ~{n * tiles['plain'] / 60:.0f} min, mirrored (segment's default) "
                      f"~{n * tiles['mirrored'] / 60:.0f} min (estimated from the tile times, not run)")
    console.print(f"load average after: {os.getloadavg()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
