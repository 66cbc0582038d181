"""Dice + CE loss: weights applied as documented, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from thoraxseg.losses import DEFAULT_CLASS_WEIGHTS, DiceCELoss, class_weight_vector, soft_dice_per_class
from thoraxseg.losses.dice_ce import balanced_ce_weights

# 16 pixels (1 × 4 × 4).  Target counts: bg 8, esophagus 2, heart 4, trachea 1, aorta 1.
TARGET = [0] * 8 + [1, 1] + [2, 2, 2, 2] + [3] + [4]
# Prediction: pixel 7 bg→esophagus, pixel 9 esophagus→bg, pixel 13 heart→aorta.
PRED = [0] * 7 + [1] + [1, 0] + [2, 2, 2, 4] + [3] + [4]
# Hand-computed Dice: bg 2·7/(8+8) = 0.875, esophagus 2·1/(2+2) = 0.5, heart 2·3/(4+3) = 6/7,
# trachea 1, aorta 2·1/(1+2) = 2/3.
HAND_DICE = [0.875, 0.5, 6 / 7, 1.0, 2 / 3]


def _hard_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of +100 on the predicted class: softmax is exactly one-hot in float32."""
    target = torch.tensor(TARGET).view(1, 4, 4)
    logits = 100.0 * F.one_hot(torch.tensor(PRED), 5).T.reshape(1, 5, 4, 4).float()
    return logits, target


def test_soft_dice_equals_hand_computed_hard_dice() -> None:
    logits, target = _hard_logits()
    dice = soft_dice_per_class(torch.softmax(logits, 1), target, eps=0.0)
    assert dice.tolist() == pytest.approx(HAND_DICE, abs=1e-6)


def test_default_loss_matches_hand_computation() -> None:
    logits, target = _hard_logits()
    loss = DiceCELoss(eps=0.0)
    # Dice term: Σ w_c (1 − D_c) / Σ w_c with w = (0.1, 0.3, 0.2, 0.2, 0.2), Σ w = 1:
    # 0.1·0.125 + 0.3·0.5 + 0.2·(1/7) + 0.2·0 + 0.2·(1/3) = 0.257738095...
    dice_term = 0.0125 + 0.15 + 0.2 / 7 + 0.0 + 0.2 / 3
    # CE term: 3 wrong pixels of 16, each −log softmax = 100 (+ log(1 + 4e−100) ≈ 0); 13 right ones ≈ 0.
    ce_term = 3 * 100.0 / 16
    d, ce = loss.components(logits, target)
    assert float(d) == pytest.approx(dice_term, abs=1e-6)
    assert float(ce) == pytest.approx(ce_term, rel=1e-6)
    assert float(loss(logits, target)) == pytest.approx(0.7 * dice_term + 0.3 * ce_term, rel=1e-6)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"background": 0, "esophagus": 1, "heart": 0, "trachea": 0, "aorta": 0}, 0.5),  # only 1 − D_eso
        ({"background": 1, "esophagus": 1, "heart": 0, "trachea": 0, "aorta": 0}, (0.125 + 0.5) / 2),
        ({"background": 0, "esophagus": 0, "heart": 2, "trachea": 0, "aorta": 2}, (1 / 7 + 1 / 3) / 2),
        ([0.0, 0.0, 0.0, 3.0, 0.0], 0.0),  # trachea is perfect
    ],
)
def test_configured_class_weights_are_applied(weights: dict[str, float] | list[float], expected: float) -> None:
    logits, target = _hard_logits()
    loss = DiceCELoss(class_weights=weights, dice_weight=1.0, ce_weight=0.0, eps=0.0)
    assert float(loss(logits, target)) == pytest.approx(expected, abs=1e-6)


def test_mixing_weights_are_applied() -> None:
    logits, target = _hard_logits()
    d, ce = DiceCELoss(eps=0.0).components(logits, target)
    only_ce = DiceCELoss(dice_weight=0.0, ce_weight=1.0, eps=0.0)(logits, target)
    mixed = DiceCELoss(dice_weight=0.25, ce_weight=2.0, eps=0.0)(logits, target)
    assert float(only_ce) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-6)
    assert float(mixed) == pytest.approx(0.25 * float(d) + 2.0 * float(ce), rel=1e-6)


def test_default_weights_are_the_seeds() -> None:
    assert DEFAULT_CLASS_WEIGHTS == {"background": 0.1, "esophagus": 0.3, "heart": 0.2, "trachea": 0.2, "aorta": 0.2}
    assert class_weight_vector(None).tolist() == pytest.approx([0.1, 0.3, 0.2, 0.2, 0.2])
    assert class_weight_vector({"heart": 0.5}).tolist() == pytest.approx([0.1, 0.3, 0.5, 0.2, 0.2])
    loss = DiceCELoss()
    assert (loss.dice_weight, loss.ce_weight) == (0.7, 0.3)


def test_bad_weights_rejected() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        class_weight_vector({"lung": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        class_weight_vector([0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="Dice class weights for"):
        DiceCELoss(class_weights=[1.0, 1.0, 1.0])(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_absent_class_scores_one_with_smoothing() -> None:
    probs = torch.zeros(1, 5, 2, 2)
    probs[:, 0] = 1.0
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    dice = soft_dice_per_class(probs, target, eps=1e-5)
    assert dice.tolist() == pytest.approx([1.0] * 5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3))
def test_loss_is_bounded_and_differentiable(seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (n, 8, 8), generator=g)
    loss = DiceCELoss()
    d, _ = loss.components(logits, target)
    assert 0.0 <= d.detach().item() <= 1.0
    value = loss(logits, target)
    value.backward()
    assert math.isfinite(value.detach().item()) and torch.isfinite(logits.grad).all()


def test_cross_entropy_class_weights() -> None:
    logits, target = _hard_logits()
    w = [1.0, 2.0, 3.0, 4.0, 5.0]
    loss = DiceCELoss(dice_weight=0.0, ce_weight=1.0, ce_class_weights=w)
    # the wrong pixels (true esophagus, heart and background) have CE 100, weights 2, 3 and 1:
    # weighted mean = (1·100 + 2·100 + 3·100) / Σ_i w[target_i] = 600 / (8·1 + 2·2 + 4·3 + 4 + 5)
    assert float(loss(logits, target)) == pytest.approx(600 / 33, rel=1e-5)
    assert float(loss(logits, target)) == pytest.approx(
        float(F.cross_entropy(logits, target, weight=torch.tensor(w))), rel=1e-6)


def test_balanced_weights_follow_inverse_sqrt_frequency() -> None:
    labels = torch.tensor([0] * 900 + [1] * 9 + [2] * 81 + [4] * 10)  # trachea (3) absent
    w = balanced_ce_weights(labels)
    assert w[0] == 1.0
    assert w[1] == pytest.approx(10.0, rel=1e-5)  # √(900 / 9)
    assert w[2] == pytest.approx(10 / 3, rel=1e-5)  # √(900 / 81)
    assert w[4] == pytest.approx(900**0.5 / 10**0.5, rel=1e-5)
    assert w[3] == max(w)  # absent class: the largest present weight
