"""The 2D training loop: AdamW, Dice+CE, per-epoch 3D validation, atomic checkpoints, exact resume, DDP.

Run folder (``cfg.out``)
------------------------
``config.yaml``
    The fully resolved :class:`~thoraxseg.training.config.TrainConfig`.
``log.csv``
    One row per finished epoch: :data:`LOG_COLUMNS`.
``curves.png``
    Training/validation loss and per-organ validation Dice per epoch.
``last.pt``
    Written atomically after every epoch: model, optimizer, scheduler, epoch, best
    score, the log rows, the RNG states (torch, CUDA, NumPy, Python — per process)
    and the data sampler's ``(seed, epoch)``.
``best.pt``
    The model of the epoch with the best mean validation Dice.

Resumption: running the same command again on a folder with ``last.pt`` restores
everything above and continues with the next epoch. Data order and augmentation
depend only on ``(seed, epoch, slice)``, so on CPU with a fixed seed a run killed at
any point and resumed ends with bit-identical weights to an uninterrupted run.

Validation Dice is computed in 3D: every validation volume is predicted slice by slice,
resized back and stitched onto its source grid (as :func:`thoraxseg.inference.predict2d.predict_2d`
does, without post-processing), and compared with its ``GT`` per organ; the per-patient
Dice values are averaged (patients where an organ is absent from both are skipped).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from thoraxseg.arms.curves import plot_curves
from thoraxseg.data.layout import Case, labelled_cases
from thoraxseg.data.overlap import dice_per_label
from thoraxseg.errors import ConfigError
from thoraxseg.labels import ORGAN_NAMES, ORGANS
from thoraxseg.losses.dice_ce import DiceCELoss, balanced_ce_weights
from thoraxseg.networks import SIZE_MULTIPLE, build_model, count_parameters
from thoraxseg.training import distributed as D
from thoraxseg.training.config import TrainConfig, config_differences, dump_yaml
from thoraxseg.training.data2d import (
    AugmentCollate,
    BatchAugmenter,
    CaseSlices,
    DeviceBatches,
    EpochSampler,
    SliceDataset,
    derive_spacing_mm,
    grid_text,
    load_cases,
    split_cases,
)
from thoraxseg.training.forward import autocast_context, predict_slices
from thoraxseg.utils.atomic import atomic_path, removed_on_failure, write_text_atomic
from thoraxseg.utils.progress import console, make_progress
from thoraxseg.utils.seeding import seed_everything

#: Columns of ``log.csv``.
LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "val_loss", *(f"val_dice_{o}" for o in ORGAN_NAMES), "val_dice_mean",
    "lr", "seconds", "steps", "samples",
)
CHECKPOINT_FORMAT = "thoraxseg-2d-v1"


def dice_per_organ(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """3D Dice per organ name (NaN where the organ is absent from both): :func:`thoraxseg.data.overlap.dice_per_label`.

    >>> g = np.zeros((4, 4, 4), np.uint8); g[:2] = 2
    >>> p = np.zeros_like(g); p[:1] = 2
    >>> round(dice_per_organ(p, g)["heart"], 4), str(dice_per_organ(p, g)["aorta"])
    (0.6667, 'nan')
    """
    per_label = dice_per_label(pred, gt, [int(o) for o in ORGANS])
    return {name: per_label[int(o)] for o, name in zip(ORGANS, ORGAN_NAMES, strict=True)}


def lr_factor(schedule: str, epoch: int, epochs: int, power: float = 0.9, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based).

    >>> [round(lr_factor("poly", e, 4), 3) for e in range(4)]
    [1.0, 0.772, 0.536, 0.287]
    >>> [round(lr_factor("cosine", e, 3), 3) for e in range(3)]
    [1.0, 0.5, 0.0]
    """
    if schedule == "none" or epochs <= 1:
        return 1.0
    if schedule == "poly":
        return (1.0 - epoch / epochs) ** power
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * epoch / (epochs - 1)))
    raise ConfigError(f"unknown schedule {schedule!r}")


class _Schedule:
    """Picklable LambdaLR multiplier."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.schedule, self.epochs = cfg.optim.schedule, cfg.epochs
        self.power = cfg.optim.poly_power
        self.min_ratio = cfg.optim.min_lr / cfg.optim.lr

    def __call__(self, epoch: int) -> float:
        return lr_factor(self.schedule, epoch, self.epochs, self.power, self.min_ratio)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _format(v: float | int | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}"


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``log.csv`` atomically (empty cell for NaN/missing)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in LOG_COLUMNS])
    write_text_atomic(path, buf.getvalue())


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def use_gpu_cache(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the training slices live in GPU memory (``cache_on_gpu``; None = when training on CUDA)."""
    if device.type != "cuda":
        return False
    return True if cfg.cache_on_gpu is None else bool(cfg.cache_on_gpu)


def make_batches(dataset: SliceDataset, sampler: EpochSampler, cfg: TrainConfig, epoch: int,
                 device: torch.device) -> DataLoader | DeviceBatches:
    """The batches of one epoch: gathered on the GPU when the slices are cached there, else a DataLoader."""
    if dataset.images.device.type == "cuda":
        sampler.set_epoch(epoch)
        return DeviceBatches(dataset, sampler, cfg.batch_size, make_collate(cfg))
    return make_loader(dataset, sampler, cfg, epoch, pin_memory=device.type == "cuda")


def make_collate(cfg: TrainConfig) -> AugmentCollate:
    """The batch collation (augmentation parameters) of a run, the same on the DataLoader and GPU-cache paths.

    The smallest simulated field of view is ``fov_min_mm`` as a fraction of the crop; square-resized
    runs (no ``spacing_mm``) get no field-of-view augmentation.
    """
    fov_min = None if cfg.spacing_mm is None else cfg.augment.fov_min_mm / (cfg.image_size * cfg.spacing_mm)
    return AugmentCollate(cfg.augment, cfg.seed, fov_min=fov_min)


def make_loader(dataset: SliceDataset, sampler: EpochSampler, cfg: TrainConfig, epoch: int,
                pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one epoch (its worker seeds derive from ``(seed, epoch)``)."""
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence((cfg.seed, epoch)).generate_state(1)[0]))
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=make_collate(cfg), generator=gen,
                      worker_init_fn=_seed_worker, pin_memory=pin_memory, drop_last=False)


def validate(model: torch.nn.Module, val: Sequence[CaseSlices], loss_fn: DiceCELoss, cfg: TrainConfig,
             device: torch.device) -> tuple[float, dict[str, float]]:
    """Validation loss (network grid) and per-organ mean 3D Dice over the validation patients."""
    losses, weights = [], []
    per_organ: dict[str, list[float]] = {name: [] for name in ORGAN_NAMES}
    for case in val:
        labels, loss = predict_slices(model, case.images, case.geometry, cfg.windows, cfg.val_batch_size, device,
                                      cfg.amp, targets=case.labels, loss_fn=loss_fn)
        losses.append(loss)
        weights.append(case.images.shape[0])
        assert case.label_volume is not None
        for name, d in dice_per_organ(labels, case.label_volume).items():
            if math.isfinite(d):
                per_organ[name].append(d)
    val_loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    dice = {name: float(np.mean(v)) if v else float("nan") for name, v in per_organ.items()}
    return val_loss, dice


def _mean_dice(dice: dict[str, float]) -> float:
    vals = [v for v in dice.values() if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _check_resume(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """Load ``last.pt`` when present and check that the stored config matches ``cfg``."""
    last = out / "last.pt"
    if not last.is_file():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"{last}: unreadable checkpoint ({type(exc).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{last}: not a thoraxseg 2D checkpoint; use another --out")
    diffs = config_differences(state["config"], cfg.to_dict())
    if diffs:
        raise ConfigError(f"{out}: holds a run with other settings ({'; '.join(diffs[:4])}); "
                          "use the same settings to resume, or another --out")
    return state


def train_2d(cfg: TrainConfig) -> Path:
    """Train (or resume) a 2D arm as configured; returns the run folder.

    Under ``torchrun`` (``WORLD_SIZE > 1``) this runs data-parallel (see
    :mod:`thoraxseg.training.distributed`).
    """
    if not cfg.data or not cfg.out:
        raise ConfigError("both data and out must be set")
    info = D.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # a run that fails before its first checkpoint (bad input, bad setting) leaves no run folder behind
    guard = (removed_on_failure(cfg.out, keep=lambda run: (run / "last.pt").exists()) if info.is_main
             else contextlib.nullcontext())
    try:
        with guard:
            return _train(cfg, info)
    finally:
        D.cleanup()


def _train(cfg: TrainConfig, info: D.DistInfo) -> Path:
    """Train (or resume) one run: prepare the folder, build everything, then epochs of train + validate + save."""
    out = Path(cfg.out)
    cfg, train_cases, val_cases = _split(cfg)
    state = _check_resume(out, cfg) if info.is_main else None
    resumed_epoch = int(D.broadcast_object(state["epoch"] if state else 0, info))  # type: ignore[arg-type]
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
        write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    if resumed_epoch >= cfg.epochs:
        if info.is_main:
            console.print(f"{out}: already trained for {resumed_epoch} epochs (>= {cfg.epochs}); nothing to do")
        return out
    run = _build(cfg, info, out, train_cases, val_cases)
    if resumed_epoch:
        _restore(run, state, resumed_epoch)
    elif info.is_main:
        console.print(f"{cfg.model}: {count_parameters(run.net) / 1e6:.3f} M parameters, "
                      f"{len(train_cases)} training / {len(val_cases)} validation patients, "
                      f"{len(run.dataset)} training slices ({grid_text(cfg.image_size, cfg.spacing_mm)}), "
                      f"{info.world_size} process(es) on {run.device}", soft_wrap=True)
    for epoch in range(resumed_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        train_loss, steps, samples = _train_epoch(run, epoch)
        rngs = _gather_rng(info)
        if info.is_main:
            _end_epoch(run, epoch, {"train_loss": train_loss, "lr": lr, "t0": t0, "steps": steps,
                                    "samples": samples}, rngs)
        D.barrier(info)
    if info.is_main:
        console.print(f"done: best mean validation Dice {run.best:.3f} at epoch {run.best_epoch}; run folder {out}")
    return out


@dataclasses.dataclass
class _Run:
    """What one training run holds between epochs (built by :func:`_build`)."""

    cfg: TrainConfig
    info: D.DistInfo
    out: Path
    device: torch.device
    dataset: SliceDataset
    sampler: EpochSampler
    augment: BatchAugmenter
    val_data: list[CaseSlices]
    net: torch.nn.Module
    model: torch.nn.Module  #: ``net``, or ``net`` wrapped in DistributedDataParallel
    loss_fn: DiceCELoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = 0


def _split(cfg: TrainConfig) -> tuple[TrainConfig, list[Case], list[Case]]:
    """Training and validation patients; the derived slice spacing (mm) filled into ``cfg`` when unset."""
    cases = labelled_cases(cfg.data)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed, cfg.val_cases)
    if cfg.preprocessing == "spacing" and cfg.spacing_mm is None:
        # derived from the headers (identical on every process); written to config.yaml by the caller
        cfg = dataclasses.replace(cfg, spacing_mm=derive_spacing_mm(train_cases, cfg.image_size))
    return cfg, train_cases, val_cases


def _build(cfg: TrainConfig, info: D.DistInfo, out: Path, train_cases: list[Case], val_cases: list[Case]) -> _Run:
    """Data, model, loss, optimiser and schedule, seeded in a fixed order (the same on every process)."""
    device = info.device
    # data (every process holds the training slices; only rank 0 holds validation volumes)
    seed_everything(cfg.seed)
    multiple = SIZE_MULTIPLE[cfg.model]
    train_data = load_cases(train_cases, cfg.image_size, description="loading training cases",
                            show=info.is_main, spacing_mm=cfg.spacing_mm, multiple=multiple)
    val_data = (load_cases(val_cases, cfg.image_size, keep_volume=True, description="loading validation cases",
                           spacing_mm=cfg.spacing_mm, multiple=multiple) if info.is_main else [])
    dataset = SliceDataset(train_data, crop=cfg.image_size if cfg.spacing_mm is not None else None, seed=cfg.seed)
    if use_gpu_cache(cfg, device):
        dataset.to(device)
    sampler = EpochSampler(dataset, cfg.seed, info.world_size, info.rank, cfg.samples_per_epoch)
    augment = BatchAugmenter(cfg.augment, cfg.seed, cfg.image_size, cfg.windows, device)

    # model, loss, optimiser, schedule (same initial weights everywhere: seeded before construction)
    seed_everything(cfg.seed)
    net = build_model(cfg.model, in_channels=len(cfg.windows), width=cfg.width, dropout=cfg.dropout).to(device)
    model: torch.nn.Module = net
    if info.distributed:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    ce_weights = balanced_ce_weights(dataset.labels.cpu()) if cfg.loss.ce_balanced else None
    loss_fn = DiceCELoss(cfg.loss.class_weights, cfg.loss.dice_weight, cfg.loss.ce_weight, cfg.loss.eps,
                         ce_weights).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(cfg))
    torch.manual_seed(cfg.seed + 7919 * info.rank)  # distinct dropout streams per process
    return _Run(cfg, info, out, device, dataset, sampler, augment, val_data, net, model, loss_fn, optimizer,
                scheduler)


def _restore(run: _Run, state: dict[str, Any] | None, resumed_epoch: int) -> None:
    """Weights, optimiser, schedule, history and random streams from ``RUN/last.pt`` (every process)."""
    if not run.info.is_main:
        state = torch.load(run.out / "last.pt", map_location="cpu", weights_only=False)
    assert state is not None
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    # epochs may have been extended: the longer schedule, and its lr for the next epoch (the saved lr is
    # the shorter schedule's value after its last step, 0 for poly); the same value when nothing changed
    run.scheduler.lr_lambdas = [_Schedule(run.cfg)]
    for group, base, factor in zip(run.optimizer.param_groups, run.scheduler.base_lrs, run.scheduler.lr_lambdas,
                                   strict=True):
        group["lr"] = base * factor(run.scheduler.last_epoch)
    run.scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]
    run.history = list(state["history"])
    run.best, run.best_epoch = float(state["best_dice"]), int(state["best_epoch"])
    rngs = state["rng"]
    _set_rng_state(rngs[run.info.rank % len(rngs)])
    if run.info.is_main:
        console.print(f"resuming {run.out} after epoch {resumed_epoch}")


def _train_epoch(run: _Run, epoch: int) -> tuple[float, int, int]:
    """One epoch of optimiser steps; returns (mean training loss over all processes, steps, samples)."""
    cfg, device = run.cfg, run.device
    run.model.train()
    loader = make_batches(run.dataset, run.sampler, cfg, epoch, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen, steps = 0, 0
    with make_progress() as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader), visible=run.info.is_main)
        for images, labels, params in loader:
            images, labels = run.augment(images.to(device, non_blocking=True), labels.to(device, non_blocking=True),
                                         params)
            run.optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, cfg.amp):
                logits = run.model(images)
            loss = run.loss_fn(logits.float(), labels)
            loss.backward()
            run.optimizer.step()
            loss_sum += loss.detach().double() * images.shape[0]
            n_seen += int(images.shape[0])
            steps += 1
            progress.advance(task)
    run.scheduler.step()
    total_loss, total_n = D.all_reduce_sum([float(loss_sum), float(n_seen)], run.info)
    return total_loss / max(total_n, 1), steps, int(total_n)


def _end_epoch(run: _Run, epoch: int, done: dict[str, Any], rngs: list[dict[str, Any]]) -> None:
    """Rank 0 after an epoch: validate, keep the best, write ``last.pt``, ``log.csv``, ``curves.png``, one line."""
    cfg, out, net = run.cfg, run.out, run.net
    val_loss, dice = validate(net, run.val_data, run.loss_fn, cfg, run.device)
    mean = _mean_dice(dice)
    row = {"epoch": epoch + 1, "train_loss": done["train_loss"], "val_loss": val_loss,
           **{f"val_dice_{k}": v for k, v in dice.items()}, "val_dice_mean": mean, "lr": done["lr"],
           "seconds": time.perf_counter() - done["t0"], "steps": done["steps"], "samples": done["samples"]}
    run.history.append(row)
    if math.isfinite(mean) and mean > run.best:
        run.best, run.best_epoch = mean, epoch + 1
        _save(out / "best.pt", {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1,
                                "model": net.state_dict(), "val_dice": dice, "val_dice_mean": mean})
    _save(out / "last.pt", {
        "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1,
        "model": net.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "best_dice": run.best, "best_epoch": run.best_epoch,
        "history": run.history, "rng": rngs, "sampler": {"seed": cfg.seed, "epoch": epoch + 1},
        "world_size": run.info.world_size,
    })
    write_log(out / "log.csv", run.history)
    plot_curves(run.history, out / "curves.png",
                f"{cfg.model}, width {cfg.width}, {grid_text(cfg.image_size, cfg.spacing_mm)} — {out.name}")
    organs = " ".join(f"{k[:4]} {v:.3f}" for k, v in dice.items() if math.isfinite(v))
    console.print(f"epoch {epoch + 1:>3}/{cfg.epochs}  train {done['train_loss']:.4f}  val {val_loss:.4f}  "
                  f"dice {organs}  mean {mean:.3f}  lr {done['lr']:.2e}  {row['seconds']:.1f} s", soft_wrap=True)


def _gather_rng(info: D.DistInfo) -> list[dict[str, Any]]:
    """Every process's RNG state (rank order), collected on all processes."""
    mine = _rng_state()
    if not info.distributed:
        return [mine]
    import torch.distributed as dist

    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, mine)
    return states


#: Files of a run folder that are written atomically (a kill can leave their temporary siblings).
RUN_FILES: tuple[str, ...] = ("config.yaml", "log.csv", "curves.png", "last.pt", "best.pt")


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary siblings (``.last.pt.XXXX.tmp.pt``) left by a process killed mid-write."""
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
