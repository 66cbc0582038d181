"""ENet (Paszke et al., 2016, arXiv:1606.02147) for 2D axial CT slices.

Layout (``width`` = w, default 16 as in the paper; input ``(N, 1, H, W)``, H and W
divisible by 8; output ``(N, num_classes, H, W)`` logits):

=========  ==========================================  ==================
stage      blocks                                      output
=========  ==========================================  ==================
initial    3×3 conv stride 2 ‖ 3×3 max-pool, concat    w, H/2
1          downsampling bottleneck + 4 regular          4w, H/4
2          downsampling + regular, dilated 2,           8w, H/8
           asymmetric 5, dilated 4, regular,
           dilated 8, asymmetric 5, dilated 16
3          stage 2 without downsampling                 8w, H/8
4          upsampling (max-unpool) + 2 regular          4w, H/4
5          upsampling (max-unpool) + 1 regular          w, H/2
full conv  3×3 transposed conv stride 2                 classes, H
=========  ==========================================  ==================

Every bottleneck is 1×1 projection (to a quarter of the channels) → main
convolution → 1×1 expansion, each followed by batch norm and PReLU, then
spatial dropout (:class:`torch.nn.Dropout2d`: p = 0.01 in stage 1, 0.1 after),
added to the shortcut and passed through a PReLU. Downsampling bottlenecks use a
2×2 stride-2 projection and a max-pool shortcut whose indices the matching
upsampling bottleneck's max-unpool reuses. With w = 16 and 5 classes the
network has 0.35 M parameters (the paper reports 0.37 M for its 12-class
Cityscapes model with 3 input channels).

Examples
--------
>>> import torch
>>> net = ENet(num_classes=5)
>>> net(torch.zeros(2, 1, 64, 64)).shape
torch.Size([2, 5, 64, 64])
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# Max-unpooling scatters to the indices of a 2×2 stride-2 max-pool, which are unique,
# so the result is deterministic even though torch flags the op under
# ``use_deterministic_algorithms`` (it cannot know the indices are unique).
_UNPOOL_WARNING = "max_unpooling2d_forward_out does not have a deterministic"


def _cbp(conv: nn.Module, channels: int) -> nn.Sequential:
    """conv → batch norm → PReLU (one slope per channel)."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.PReLU(channels))


class InitialBlock(nn.Module):
    """3×3 stride-2 convolution (``out - in`` maps) concatenated with a 3×3 stride-2 max-pool of the input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError(f"initial block needs out_channels > in_channels, got {out_channels} <= {in_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class RegularBottleneck(nn.Module):
    """Residual bottleneck with a regular, dilated or asymmetric (k×1 then 1×k) main convolution."""

    def __init__(
        self, channels: int, dilation: int = 1, asymmetric: int = 0, dropout: float = 0.1, ratio: int = 4
    ) -> None:
        super().__init__()
        inner = max(channels // ratio, 1)
        self.project = _cbp(nn.Conv2d(channels, inner, 1, bias=False), inner)
        if asymmetric:
            pad = asymmetric // 2
            self.main = nn.Sequential(
                _cbp(nn.Conv2d(inner, inner, (asymmetric, 1), padding=(pad, 0), bias=False), inner),
                _cbp(nn.Conv2d(inner, inner, (1, asymmetric), padding=(0, pad), bias=False), inner),
            )
        else:
            self.main = _cbp(nn.Conv2d(inner, inner, 3, padding=dilation, dilation=dilation, bias=False), inner)
        self.expand = _cbp(nn.Conv2d(inner, channels, 1, bias=False), channels)
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.dropout(self.expand(self.main(self.project(x)))))


class DownsamplingBottleneck(nn.Module):
    """Halves the resolution: 2×2 stride-2 projection branch + max-pool shortcut (zero-padded channels).

    ``forward`` returns the output and the max-pool indices for the decoder's unpooling.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1, ratio: int = 4) -> None:
        super().__init__()
        inner = max(in_channels // ratio, 1)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.project = _cbp(nn.Conv2d(in_channels, inner, 2, stride=2, bias=False), inner)
        self.main = _cbp(nn.Conv2d(inner, inner, 3, padding=1, bias=False), inner)
        self.expand = _cbp(nn.Conv2d(inner, out_channels, 1, bias=False), out_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(out_channels)
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shortcut, indices = self.pool(x)
        if self.extra > 0:
            n, _, h, w = shortcut.shape
            shortcut = torch.cat([shortcut, shortcut.new_zeros(n, self.extra, h, w)], dim=1)
        ext = self.dropout(self.expand(self.main(self.project(x))))
        return self.act(shortcut + ext), indices


class UpsamplingBottleneck(nn.Module):
    """Doubles the resolution: max-unpool shortcut (encoder indices) + 2×2 transposed-convolution branch."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1, ratio: int = 4) -> None:
        super().__init__()
        inner = max(in_channels // ratio, 1)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.unpool = nn.MaxUnpool2d(2)
        self.project = _cbp(nn.Conv2d(in_channels, inner, 1, bias=False), inner)
        self.main = _cbp(nn.ConvTranspose2d(inner, inner, 2, stride=2, bias=False), inner)
        self.expand = _cbp(nn.Conv2d(inner, out_channels, 1, bias=False), out_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_UNPOOL_WARNING)
            shortcut = self.unpool(self.shortcut(x), indices, output_size=size)
        ext = self.dropout(self.expand(self.main(self.project(x))))
        return self.act(shortcut + ext)


class ENet(nn.Module):
    """ENet semantic segmentation network (logits out, no softmax).

    Parameters
    ----------
    num_classes
        Output channels (5 for SegTHOR: background + four organs).
    in_channels
        Input channels (1: one windowed CT slice).
    width
        Channels after the initial block (paper: 16); stages use ``4·width`` and ``8·width``.
    dropout
        Spatial dropout probability after stage 1 (paper: 0.1); stage 1 uses a tenth of it.
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 1, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        w1, w2, w3 = width, 4 * width, 8 * width
        p1, p2 = dropout / 10.0, dropout
        self.initial = InitialBlock(in_channels, w1)
        self.down1 = DownsamplingBottleneck(w1, w2, p1)
        self.stage1 = nn.Sequential(*[RegularBottleneck(w2, dropout=p1) for _ in range(4)])
        self.down2 = DownsamplingBottleneck(w2, w3, p2)
        self.stage2 = self._stage23(w3, p2)
        self.stage3 = self._stage23(w3, p2)
        self.up4 = UpsamplingBottleneck(w3, w2, p2)
        self.stage4 = nn.Sequential(RegularBottleneck(w2, dropout=p2), RegularBottleneck(w2, dropout=p2))
        self.up5 = UpsamplingBottleneck(w2, w1, p2)
        self.stage5 = RegularBottleneck(w1, dropout=p2)
        self.full_conv = nn.ConvTranspose2d(w1, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)

    @staticmethod
    def _stage23(channels: int, p: float) -> nn.Sequential:
        return nn.Sequential(
            RegularBottleneck(channels, dropout=p),
            RegularBottleneck(channels, dilation=2, dropout=p),
            RegularBottleneck(channels, asymmetric=5, dropout=p),
            RegularBottleneck(channels, dilation=4, dropout=p),
            RegularBottleneck(channels, dropout=p),
            RegularBottleneck(channels, dilation=8, dropout=p),
            RegularBottleneck(channels, asymmetric=5, dropout=p),
            RegularBottleneck(channels, dilation=16, dropout=p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"ENet needs H and W divisible by 8, got {tuple(x.shape[-2:])}")
        x1 = self.initial(x)
        size1 = x1.size()
        x2, idx1 = self.down1(x1)
        x2 = self.stage1(x2)
        size2 = x2.size()
        x3, idx2 = self.down2(x2)
        x3 = self.stage3(self.stage2(x3))
        y = self.stage4(self.up4(x3, idx2, size2))
        y = self.stage5(self.up5(y, idx1, size1))
        return self.full_conv(y)
