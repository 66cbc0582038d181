"""Determinism helpers: every random step takes a seed."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) PyTorch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds legacy global users (e.g. nnU-Net augmentation)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng(seed: int | np.random.SeedSequence) -> np.random.Generator:
    """A NumPy PCG64 generator from an int seed or a :class:`~numpy.random.SeedSequence`."""
    return np.random.default_rng(seed)
