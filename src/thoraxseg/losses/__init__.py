"""Training losses (:class:`DiceCELoss`); torch is imported on first use of the loss itself."""

from __future__ import annotations

from typing import Any

#: Default Dice class weights by label name (the seed's).
DEFAULT_CLASS_WEIGHTS: dict[str, float] = {
    "background": 0.1,
    "esophagus": 0.3,
    "heart": 0.2,
    "trachea": 0.2,
    "aorta": 0.2,
}

_LAZY = ("DiceCELoss", "class_weight_vector", "soft_dice_per_class")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from thoraxseg.losses import dice_ce

        return getattr(dice_ce, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_CLASS_WEIGHTS", "DiceCELoss", "class_weight_vector", "soft_dice_per_class"]
