"""Benchmark of the 2D arms: throughput, data-loading overhead, and learning on the phantom cohort.

Prints three tables:

1. **speed** — training images/s (forward + backward + AdamW step) and inference
   images/s for ENet (width 16), CustomNet at the seed width (64) and at the demo width,
   at ``--size``.
2. **loader** — step time with the real loader (cached slices → DataLoader →
   augmentation → batch) against the same batches already in memory; target overhead < 10 %.
3. **learn** — both arms trained with ``--config`` (default ``configs/train2d_demo.yaml``) on a
   small phantom cohort (20 patients: 16 train / 4 validation), with the 3D validation
   Dice per organ of the best epoch; targets: every organ > 0.5, CustomNet ≥ ENet.

Usage::

    python benchmarks/train2d.py                      # all parts, CPU
    python benchmarks/train2d.py --parts speed,loader --size 256 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from thoraxseg.data.layout import labelled_cases
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.losses import DiceCELoss
from thoraxseg.networks import build_model, count_parameters
from thoraxseg.training import train
from thoraxseg.training.config import load_yaml, resolve_config
from thoraxseg.training.data2d import BatchAugmenter, EpochSampler, SliceDataset, load_cases
from thoraxseg.training.trainer import make_batches, use_gpu_cache

console = Console(width=140, highlight=False)

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: torch.device, min_seconds: float, max_steps: int, warmup: int = 2) -> float:
    """Seconds per call of ``step()`` (after ``warmup`` calls), timed until min_seconds or max_steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < max_steps and (n < 2 or time.perf_counter() - t0 < min_seconds):
        step()
        n += 1
    _sync(device)
    return (time.perf_counter() - t0) / n


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()


def model_speed(name: str, width: int, size: int, batch: int, device: torch.device, amp: bool,
                min_seconds: float) -> tuple[float, float, int]:
    """(train seconds/step, inference seconds/step, parameters) for one network on random data."""
    net = build_model(name, width=width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss().to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 5, (batch, size, size), device=device)
    heavy = device.type == "cpu"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            out = net(x)
        loss_fn(out.float(), y).backward()
        opt.step()

    @torch.no_grad()
    def infer() -> None:
        with _autocast(device, amp):
            net(x)

    net.train()
    t_train = time_steps(step, device, min_seconds, 20 if heavy else 50, warmup=1 if heavy else 3)
    net.eval()
    t_inf = time_steps(infer, device, min_seconds / 2, 20 if heavy else 100, warmup=1 if heavy else 3)
    return t_train, t_inf, count_parameters(net)


def speed(device: torch.device, size: int, demo_width: int, amp: bool, min_seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"2D networks at {size}×{size}, {device} ({torch.get_num_threads()} CPU threads)"
                  + (", bf16 autocast" if amp else ""))
    for col in ("model", "width", "params (M)", "batch", "train ms/step", "train img/s", "infer img/s"):
        table.add_column(col, justify="right")
    heavy = device.type == "cpu"
    for name, width in (("enet", 16), ("customnet", 64), ("customnet", demo_width)):
        batch = 2 if (heavy and width >= 64 and size >= 256) else (8 if heavy else 32)
        t_train, t_inf, n_params = model_speed(name, width, size, batch, device, amp, min_seconds)
        table.add_row(name, str(width), f"{n_params / 1e6:.3f}", str(batch), f"{t_train * 1000:.0f}",
                      f"{batch / t_train:.1f}", f"{batch / t_inf:.1f}")
    console.print(table)


def loader_row(model: str, data: list, config: dict, device: torch.device, mode: str,
               steps: int) -> list[str]:
    """One row of the loader table: real pipeline vs the same augmented batches already on the device.

    ``mode``: ``"N"`` = DataLoader with N workers from the CPU cache; ``"gpu"`` = slices cached on the GPU.
    """
    on_gpu = mode == "gpu"
    cfg = resolve_config({**config, "model": model, "num_workers": 0 if on_gpu else int(mode),
                          "cache_on_gpu": on_gpu})
    ds = SliceDataset(data)
    if use_gpu_cache(cfg, device):
        ds.to(device)
    net = build_model(model, in_channels=len(cfg.windows), width=cfg.width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr)
    loss_fn = DiceCELoss().to(device)
    augment = BatchAugmenter(cfg.augment, cfg.seed, cfg.image_size, cfg.windows, device)
    sampler = EpochSampler(ds, cfg.seed, samples_per_epoch=steps * cfg.batch_size)

    def train_step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb).backward()
        opt.step()

    def load(batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb, params = batch
        return augment(xb.to(device, non_blocking=True), yb.to(device, non_blocking=True), params)

    in_memory = [load(b) for b in make_batches(ds, sampler, cfg, 0, device)]
    for xb, yb in in_memory[:2]:
        train_step(xb, yb)  # warm-up
    best_mem, best_real = float("inf"), float("inf")
    for _ in range(3):  # alternate, keep the best of each (the machine may be shared)
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in in_memory:
            train_step(xb, yb)
        _sync(device)
        best_mem = min(best_mem, (time.perf_counter() - t0) / len(in_memory))
        t0 = time.perf_counter()
        n = 0
        for batch in make_batches(ds, sampler, cfg, 0, device):
            train_step(*load(batch))
            n += 1
        _sync(device)
        best_real = min(best_real, (time.perf_counter() - t0) / n)
    t0 = time.perf_counter()
    n = 0
    for batch in make_batches(ds, sampler, cfg, 0, device):
        load(batch)
        n += 1
    _sync(device)
    alone = (time.perf_counter() - t0) / n
    overhead = best_real / best_mem - 1.0
    path = "slices on GPU" if on_gpu else f"DataLoader, {mode} workers"
    return [model, str(cfg.image_size), str(cfg.batch_size), path, f"{best_real * 1000:.1f}",
            f"{best_mem * 1000:.1f}", f"{overhead * 100:+.1f} %", f"{alone * 1000:.1f}",
            f"{alone / best_mem * 100:.1f} %"]


def loader_overhead(cohort: Path, config: dict, device: torch.device, modes: list[str], steps: int) -> None:
    from rich.table import Table

    cases = labelled_cases(cohort)[:6]
    table = Table(title=f"data loading overhead ({len(cases)} phantom patients, {steps} batches, {device})")
    for col in ("model", "size", "batch", "loading", "step ms (loader)", "step ms (in memory)", "overhead",
                "loader alone ms/batch", "loader / step"):
        table.add_column(col, justify="right")
    size = int(resolve_config({**config, "model": "enet"}).image_size)
    data = load_cases(cases, size, show=False)
    for model in ("enet", "customnet"):
        for mode in modes:
            table.add_row(*loader_row(model, data, config, device, mode, steps))
    console.print(table)


def learn(cohort: Path, config_path: Path, out: Path, device: str) -> bool:
    from rich.table import Table

    results: dict[str, dict[str, float]] = {}
    for model in ("enet", "customnet"):
        run = out / model
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        train(model, cohort, run, config=config_path, device=device)
        seconds = time.perf_counter() - t0
        rows = list(csv.DictReader((run / "log.csv").open()))
        best = max(rows, key=lambda r: float(r["val_dice_mean"] or "nan"))
        results[model] = {o: float(best[f"val_dice_{o}"]) for o in ORGAN_NAMES}
        results[model].update(mean=float(best["val_dice_mean"]), epoch=int(best["epoch"]), epochs=len(rows),
                              seconds=seconds)
    cfg = load_yaml(config_path)
    table = Table(title=f"validation Dice (3D, best epoch) on the phantom cohort — {config_path.name}: "
                        f"size {cfg.get('image_size')}, epochs {cfg.get('epochs')}, batch {cfg.get('batch_size')}")
    for col in ("model", *ORGAN_NAMES, "mean", "best epoch", "train time"):
        table.add_column(col, justify="right")
    for model, r in results.items():
        table.add_row(model, *(f"{r[o]:.3f}" for o in ORGAN_NAMES), f"{r['mean']:.3f}",
                      f"{int(r['epoch'])}/{int(r['epochs'])}", f"{r['seconds'] / 60:.1f} min")
    console.print(table)
    ok_organs = {m: all(r[o] > 0.5 for o in ORGAN_NAMES) for m, r in results.items()}
    ok_order = results["customnet"]["mean"] >= results["enet"]["mean"]
    for m, ok in ok_organs.items():
        console.print(f"target every organ > 0.5 for {m}: {'met' if ok else 'NOT met'}")
    console.print(f"target CustomNet >= ENet mean Dice: {'met' if ok_order else 'NOT met'} "
                  f"({results['customnet']['mean']:.3f} vs {results['enet']['mean']:.3f})")
    return all(ok_organs.values()) and ok_order


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="speed,loader,learn", help="comma-separated: speed, loader, learn")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=None, help="image size for the speed table (default: config's)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "train2d_demo.yaml")
    p.add_argument("--cohort", type=Path, help="phantom cohort (default: generate 20 small cases, seed 0)")
    p.add_argument("--out", type=Path, help="work folder (default: a temporary folder)")
    p.add_argument("--loading", default="0", help="loading paths to compare: worker counts and/or 'gpu', e.g. 0,2,gpu")
    p.add_argument("--loader-steps", type=int, default=12, help="batches per loader measurement")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in the speed table (CUDA)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="timing window per measurement")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    device = torch.device(args.device)
    config = load_yaml(args.config)
    work = args.out or Path(tempfile.mkdtemp(prefix="train2d-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; work folder {work}")
    cohort = args.cohort
    if cohort is None and parts & {"loader", "learn"}:
        from thoraxseg.data.phantom import generate_cohort

        cohort = work / "cohort"
        if not cohort.exists():
            t0 = time.perf_counter()
            generate_cohort(cohort, 20, size="small", seed=0)
            console.print(f"phantom cohort: 20 small cases in {time.perf_counter() - t0:.0f} s")
    ok = True
    if "speed" in parts:
        demo_width = int((config.get("customnet") or {}).get("width", config.get("width", 16)))
        speed(device, args.size or int(config.get("image_size", 128)), demo_width, args.amp, args.min_seconds)
    if "loader" in parts:
        assert cohort is not None
        loader_overhead(cohort, {k: v for k, v in config.items() if k not in ("model", "epochs")}, device,
                        args.loading.split(","), steps=args.loader_steps)
    if "learn" in parts:
        assert cohort is not None
        ok = learn(cohort, args.config, work / "runs", args.device)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
