"""Weighted soft-Dice + cross-entropy loss for multi-class segmentation.

.. math::

    L = a \\, L_\\text{Dice} + b \\, L_\\text{CE}, \\qquad
    L_\\text{Dice} = \\frac{\\sum_c w_c \\,(1 - D_c)}{\\sum_c w_c}, \\qquad
    D_c = \\frac{2 \\sum_i p_{ic} g_{ic} + \\varepsilon}{\\sum_i p_{ic} + \\sum_i g_{ic} + \\varepsilon}

with ``p`` the softmax probabilities, ``g`` the one-hot target, sums over every
pixel of the whole batch ("batch Dice", stable on slices where an organ is
absent), and ``L_CE`` the mean pixel-wise cross-entropy. Defaults (the seed's):
``a = 0.7``, ``b = 0.3``, ``w = (0.1, 0.3, 0.2, 0.2, 0.2)`` for (background,
esophagus, heart, trachea, aorta), ``ε = 1e-5``.

Examples
--------
>>> import torch
>>> loss = DiceCELoss()
>>> logits = torch.zeros(1, 5, 4, 4)
>>> target = torch.zeros(1, 4, 4, dtype=torch.long)
>>> round(float(loss(logits, target)), 4) > 0
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from thoraxseg.labels import LABEL_NAMES, NUM_CLASSES
from thoraxseg.losses import DEFAULT_CLASS_WEIGHTS


def class_weight_vector(weights: Mapping[str, float] | Sequence[float] | None) -> torch.Tensor:
    """Dice weights as a float tensor in label order, from a name → weight mapping or a sequence.

    Missing names take their default. Raises ``ValueError`` for unknown names,
    negative weights or an all-zero vector.

    >>> class_weight_vector({"esophagus": 0.5}).tolist()
    [0.10000000149011612, 0.5, 0.20000000298023224, 0.20000000298023224, 0.20000000298023224]
    """
    if weights is None:
        weights = DEFAULT_CLASS_WEIGHTS
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(DEFAULT_CLASS_WEIGHTS))
        if unknown:
            raise ValueError(f"unknown class names in Dice weights: {', '.join(unknown)}")
        merged = {**DEFAULT_CLASS_WEIGHTS, **{k: float(v) for k, v in weights.items()}}
        values = [merged[LABEL_NAMES[c]] for c in range(NUM_CLASSES)]
    else:
        values = [float(v) for v in weights]
    vec = torch.tensor(values, dtype=torch.float32)
    if (vec < 0).any() or float(vec.sum()) <= 0:
        raise ValueError(f"Dice class weights must be >= 0 and not all zero, got {values}")
    return vec


def balanced_ce_weights(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> list[float]:
    """Cross-entropy class weights ``∝ 1/√frequency`` of the labels, normalised to a background weight of 1.

    Classes absent from ``labels`` get the largest weight of the present ones.

    >>> balanced_ce_weights(torch.tensor([0] * 96 + [1] * 4), num_classes=2)
    [1.0, 4.898979663848877]
    """
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).double()
    present = counts > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = (counts[present] / counts.sum()).rsqrt()
    if (~present).any():
        w[~present] = w[present].max()
    return (w / w[0] if w[0] > 0 else w / w[present].min()).float().tolist()


def soft_dice_per_class(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice ``D_c`` per class over the whole batch.

    Parameters
    ----------
    probs
        ``(N, C, H, W)`` probabilities (softmax over C).
    target
        ``(N, H, W)`` integer labels in ``0..C-1``.
    eps
        Smoothing added to numerator and denominator (a class absent from both scores 1).

    Returns
    -------
    torch.Tensor
        ``(C,)`` Dice values in [0, 1].
    """
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (2 * inter + eps) / (denom + eps)


class DiceCELoss(nn.Module):
    """``dice_weight · weighted soft-Dice loss + ce_weight · cross-entropy`` (see module docstring).

    Parameters
    ----------
    class_weights
        Dice weight per class: mapping label name → weight, or a sequence in label order.
    dice_weight, ce_weight
        Mixing coefficients ``a`` and ``b``.
    eps
        Dice smoothing.
    ce_class_weights
        Optional per-class weights of the cross-entropy (label order); ``None`` (the seed's
        choice): unweighted. PyTorch normalises the weighted CE by the weights of the target
        pixels, so only their ratios matter.
    """

    def __init__(
        self,
        class_weights: Mapping[str, float] | Sequence[float] | None = None,
        dice_weight: float = 0.7,
        ce_weight: float = 0.3,
        eps: float = 1e-5,
        ce_class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weight_vector(class_weights))
        self.ce_class_weights: torch.Tensor | None
        self.register_buffer("ce_class_weights",
                             None if ce_class_weights is None else torch.tensor(ce_class_weights, dtype=torch.float32))
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.eps = float(eps)

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms ``(L_Dice, L_CE)`` before mixing."""
        logits = logits.float()
        weights = self.class_weights.to(logits.device)
        if weights.numel() != logits.shape[1]:
            raise ValueError(f"{weights.numel()} Dice class weights for {logits.shape[1]} output channels")
        dice = soft_dice_per_class(torch.softmax(logits, dim=1), target, self.eps)
        dice_loss = (weights * (1 - dice)).sum() / weights.sum()
        ce_w = None if self.ce_class_weights is None else self.ce_class_weights.to(logits.device)
        ce = F.cross_entropy(logits, target.long(), weight=ce_w)
        return dice_loss, ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice_loss, ce = self.components(logits, target)
        return self.dice_weight * dice_loss + self.ce_weight * ce
