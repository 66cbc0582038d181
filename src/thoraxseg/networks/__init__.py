"""2D segmentation networks: :class:`ENet` and :class:`CustomNet` (U-Net derivative).

Both map ``(N, 1, H, W)`` windowed CT slices to ``(N, num_classes, H, W)`` logits.
The network classes are imported on first use, so that reading the constants here
(e.g. by the CLI) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thoraxseg.labels import NUM_CLASSES

if TYPE_CHECKING:
    from torch import nn

    from thoraxseg.networks.customnet import CustomNet
    from thoraxseg.networks.enet import ENet

#: 2D model names and their default ``width`` (the published / seed widths).
MODELS_2D: dict[str, int] = {"enet": 16, "customnet": 64}
#: Input side length must be a multiple of this (pooling depth).
SIZE_MULTIPLE: dict[str, int] = {"enet": 8, "customnet": 16}


def build_model(
    name: str, num_classes: int = NUM_CLASSES, in_channels: int = 1, width: int | None = None, dropout: float = 0.1
) -> nn.Module:
    """Construct a 2D network by name (``"enet"`` or ``"customnet"``).

    ``width=None`` takes the published width (ENet 16, CustomNet 64); ``dropout``
    applies to ENet's spatial dropout only.

    >>> sum(p.numel() for p in build_model("customnet", width=4).parameters()) > 0
    True
    """
    key = name.lower()
    if key not in MODELS_2D:
        raise ValueError(f"unknown 2D model {name!r}; expected one of {', '.join(MODELS_2D)}")
    w = MODELS_2D[key] if width is None else int(width)
    if key == "enet":
        from thoraxseg.networks.enet import ENet

        return ENet(num_classes, in_channels, width=w, dropout=dropout)
    from thoraxseg.networks.customnet import CustomNet

    return CustomNet(num_classes, in_channels, width=w)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def __getattr__(name: str) -> Any:
    if name == "ENet":
        from thoraxseg.networks.enet import ENet

        return ENet
    if name == "CustomNet":
        from thoraxseg.networks.customnet import CustomNet

        return CustomNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS_2D", "SIZE_MULTIPLE", "CustomNet", "ENet", "build_model", "count_parameters"]
