"""CustomNet: the seed's U-Net derivative for 2D axial CT slices.

Four encoder levels of :class:`DoubleConv` blocks (3×3 conv → batch norm → ReLU,
twice) with ``w, 2w, 4w, 8w`` filters (seed: w = 64, i.e. 64→128→256→512), a
``16w`` bottleneck after the fourth 2×2 max-pool, and a decoder of 2×2 stride-2
transposed convolutions whose output is concatenated with the encoder feature
map of the same level (skip connection) and fused by a DoubleConv. A final 1×1
convolution gives ``num_classes`` logits. Input ``(N, C_in, H, W)`` with H and W
divisible by 16; output ``(N, num_classes, H, W)``.

Examples
--------
>>> import torch
>>> net = CustomNet(num_classes=5, width=8)
>>> net(torch.zeros(1, 1, 32, 32)).shape
torch.Size([1, 5, 32, 32])
"""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """(3×3 conv, no bias → batch norm → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2×2 stride-2 transposed conv (halves channels), concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class CustomNet(nn.Module):
    """U-Net with DoubleConv blocks, filters ``w·(1, 2, 4, 8)`` and a ``16w`` bottleneck.

    Parameters
    ----------
    num_classes
        Output channels (5 for SegTHOR).
    in_channels
        Input channels (1: one windowed CT slice).
    width
        Filters of the first level (seed: 64). Smaller values (8–16) make CPU training practical.
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width, 16 * width]
        self.inc = DoubleConv(in_channels, w[0])
        self.downs = nn.ModuleList(DoubleConv(w[i], w[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(Up(w[i + 1], w[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"CustomNet needs H and W divisible by 16, got {tuple(x.shape[-2:])}")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)
