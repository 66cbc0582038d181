"""Batched forward passes of a 2D network over the slices of one volume (validation and prediction share them).

Below :mod:`thoraxseg.inference` (whose :func:`~thoraxseg.inference.predict2d.predict_2d` writes whole
volumes with it), so the trainer's validation uses the very code path prediction uses without
importing the inference stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from thoraxseg.training.data2d import Geometry, apply_windows, from_network_grid


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when ``amp``; a no-op otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_slices(
    model: nn.Module,
    slices: torch.Tensor,
    geometry: Geometry,
    windows: Sequence[Sequence[float]] = ((-1000.0, 1000.0),),
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
    targets: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, float]:
    """Label volume ``(X, Y, Z)`` uint8 from preprocessed slices ``(Z, S, S)``.

    Parameters
    ----------
    model
        A 2D network (put in eval mode here).
    slices
        Network-grid slices in ``HU / 1000`` (:func:`~thoraxseg.training.data2d.volume_to_slices`).
    geometry
        How the source ``(X, Y)`` slice maps onto the network grid.
    windows
        CT windows (HU), one input channel each.
    targets, loss_fn
        Optional network-grid labels ``(Z, S, S)`` and loss: the slice-weighted mean
        loss is returned as the second value (NaN without them).
    on_batch
        Called with the number of slices after each batch (progress).
    """
    dev = torch.device(device)
    model.eval()
    n = int(slices.shape[0])
    out = np.zeros((*geometry.shape, n), dtype=np.uint8)
    loss_sum = 0.0
    for start in range(0, n, batch_size):
        x = apply_windows(slices[start : start + batch_size].to(dev, non_blocking=True), windows)
        with autocast_context(dev, amp):
            logits = model(x)
        logits = logits.float()
        if targets is not None and loss_fn is not None:
            y = targets[start : start + batch_size].to(dev).long()
            loss_sum += float(loss_fn(logits, y)) * x.shape[0]
        probs = from_network_grid(torch.softmax(logits, dim=1), geometry)
        labels = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()  # (B, X, Y)
        out[:, :, start : start + x.shape[0]] = np.moveaxis(labels, 0, 2)
        if on_batch is not None:
            on_batch(int(x.shape[0]))
    return out, (loss_sum / n if (targets is not None and loss_fn is not None and n) else float("nan"))
