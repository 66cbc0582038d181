"""nnU-Net's trainer with thoraxseg's run bookkeeping (constructed in code, never looked up by name).

:class:`ThoraxsegTrainer` is :class:`nnunetv2.training.nnUNetTrainer.nnUNetTrainer`
with the same network, loss, augmentation, optimiser and schedule. It adds only:

* run length set in code (``num_epochs``, ``num_iterations_per_epoch``,
  ``num_val_iterations_per_epoch``, ``save_every``) via :meth:`configure`,
  before nnU-Net builds its learning-rate schedule;
* seeding: Python, NumPy and torch are reseeded at the start of every epoch
  from ``(seed, fold, epoch)``, so with in-process augmentation
  (``nnUNet_n_proc_DA=0``) an epoch's batches do not depend on whether the
  run was interrupted and resumed before it;
* atomic checkpoints (written to a temporary file, then renamed), so a kill
  during ``torch.save`` cannot leave a truncated ``checkpoint_latest.pth``;
* a callback after every epoch (thoraxseg writes ``RUN/log.csv`` there) and a
  rich progress bar over training iterations;
* nnU-Net's ``progress.png`` (a 30×54-inch seaborn figure, ~1 s to draw) is
  redrawn at most every ``progress_png_every_s`` seconds and at the last epoch.

Constructing the class directly avoids nnU-Net's search for trainer classes by
name, which imports every trainer variant and fails where torchvision does not
import (as with the CUDA torchvision wheel beside CPU torch 2.13).
"""

from __future__ import annotations

import os
import random
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from thoraxseg.errors import ConfigError
from thoraxseg.utils.atomic import atomic_path

EpochCallback = Callable[["ThoraxsegTrainer"], None]


def epoch_seed(seed: int, fold: int | str, epoch: int) -> int:
    """Seed for one epoch of one fold: a stable 32-bit mix of the three.

    >>> epoch_seed(0, 0, 1) == epoch_seed(0, 0, 1) != epoch_seed(0, 1, 1)
    True
    """
    return zlib.crc32(f"{int(seed)}/{fold}/{int(epoch)}".encode()) & 0x7FFFFFFF


class ThoraxsegTrainer(nnUNetTrainer):
    """nnU-Net's default trainer, driven by thoraxseg (see module docstring).

    The constructor is nnU-Net's own (same signature, which nnU-Net stores in
    every checkpoint); call :meth:`configure` before training.
    """

    seed: int = 0
    epoch_callback: EpochCallback | None = None
    progress: Any = None
    progress_task: Any = None
    progress_png_every_s: float = 60.0
    _last_progress_png: float = 0.0

    def configure(
        self,
        *,
        num_epochs: int,
        iterations_per_epoch: int,
        val_iterations_per_epoch: int,
        save_every: int = 1,
        seed: int = 0,
        initial_lr: float | None = None,
        epoch_callback: EpochCallback | None = None,
        oversample_foreground: float | None = None,
    ) -> None:
        """Set run length, checkpoint frequency (epochs), seed, foreground oversampling and the epoch callback.

        Must be called before :meth:`initialize` (which :meth:`load_checkpoint` and
        :meth:`run_training` call), since nnU-Net sizes its poly learning-rate
        schedule from ``num_epochs`` there.
        """
        if self.was_initialized:
            raise RuntimeError("configure() must be called before the trainer is initialised")
        if num_epochs < 1 or iterations_per_epoch < 1 or val_iterations_per_epoch < 1 or save_every < 1:
            raise ValueError("epochs, iterations per epoch and save_every must be >= 1")
        self.num_epochs = int(num_epochs)
        self.num_iterations_per_epoch = int(iterations_per_epoch)
        self.num_val_iterations_per_epoch = int(val_iterations_per_epoch)
        self.save_every = int(save_every)
        self.seed = int(seed)
        if initial_lr is not None:
            self.initial_lr = float(initial_lr)
        if oversample_foreground is not None:  # fraction of each batch forced to contain an organ
            self.oversample_foreground_percent = float(oversample_foreground)
        self.epoch_callback = epoch_callback
        self.logger.local_logger.plot_progress_png = self._throttled_progress_png(
            self.logger.local_logger.plot_progress_png)

    def _throttled_progress_png(self, plot: Callable[[str], None]) -> Callable[[str], None]:
        def maybe_plot(output_folder: str) -> None:
            now = time.monotonic()
            last = self.current_epoch >= self.num_epochs - 1
            if last or now - self._last_progress_png >= self.progress_png_every_s:
                self._last_progress_png = now
                plot(output_folder)
        return maybe_plot

    def on_epoch_start(self) -> None:
        s = epoch_seed(self.seed, self.fold, self.current_epoch)
        random.seed(s)
        np.random.seed(s)  # noqa: NPY002 - nnU-Net's data loader and batchgenerators use the global RNG
        torch.manual_seed(s)
        super().on_epoch_start()

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self.progress is not None and self.progress_task is not None:
            self.progress.advance(self.progress_task)
        return out

    def on_epoch_end(self) -> None:
        super().on_epoch_end()  # increments current_epoch
        if self.epoch_callback is not None:
            self.epoch_callback(self)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary sibling and renamed into place."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)
            return
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))

    @property
    def fold_folder(self) -> Path:
        """``nnUNet_results/DatasetXXX/<Trainer>__<plans>__3d_fullres/fold_N``."""
        return Path(self.output_folder)

    def logged(self) -> dict[str, list[Any]]:
        """nnU-Net's per-epoch log (``LocalLogger.my_fantastic_logging``)."""
        return self.logger.local_logger.my_fantastic_logging


CHECKPOINTS: tuple[str, ...] = ("final", "latest", "best")
#: The names every arm accepts (``--checkpoint``): ``best``, and ``last`` = the newest of final/latest.
COMMON_CHECKPOINTS: tuple[str, ...] = ("best", "last")


def find_checkpoint(fold_folder: Path, prefer: str | None = None, newest: bool = False) -> Path | None:
    """The checkpoint to predict with or continue from: final, else latest, else best (nnU-Net's order).

    ``prefer`` (``"best"``, ``"last"`` — the 2D arms' names, ``last`` being the newer of final and
    latest — or nnU-Net's ``"final"``, ``"latest"``) is tried first. With ``newest``, the more
    recently written of final and latest wins (a finished run being extended to more epochs keeps
    its old ``checkpoint_final.pth`` while ``checkpoint_latest.pth`` moves on).
    """
    if prefer == "last":
        prefer, newest = None, True
    if newest and prefer is None:
        present = [p for n in ("final", "latest") if (p := Path(fold_folder) / f"checkpoint_{n}.pth").is_file()]
        if present:
            return max(present, key=lambda p: p.stat().st_mtime_ns)
    order = list(CHECKPOINTS)
    if prefer is not None:
        if prefer not in CHECKPOINTS:
            raise ConfigError(f"checkpoint must be one of {', '.join((*COMMON_CHECKPOINTS, 'final', 'latest'))}, "
                              f"got {prefer!r}")
        order.remove(prefer)
        order.insert(0, prefer)
    for name in (f"checkpoint_{n}.pth" for n in order):
        p = Path(fold_folder) / name
        if p.is_file() and os.path.getsize(p) > 0:
            return p
    return None
