"""ENet and CustomNet: output shapes and parameter counts derived from the architecture by hand."""

from __future__ import annotations

import pytest
import torch

from thoraxseg.networks import CustomNet, ENet, build_model, count_parameters


def _bn(c: int) -> int:
    return 2 * c  # weight + bias


def _prelu(c: int) -> int:
    return c  # one slope per channel


def _cbp(n_weights: int, c: int) -> int:
    """conv (no bias) + batch norm + PReLU."""
    return n_weights + _bn(c) + _prelu(c)


def enet_param_count(num_classes: int, in_ch: int = 1, w: int = 16) -> int:
    """ENet's parameter count from the paper's layer table (Paszke et al. 2016, Table 1)."""
    def regular(c: int, asym: int = 0) -> int:
        i = c // 4
        main = _cbp(asym * i * i, i) * 2 if asym else _cbp(9 * i * i, i)
        return _cbp(c * i, i) + main + _cbp(i * c, c) + _prelu(c)

    def down(cin: int, cout: int) -> int:
        i = cin // 4
        return _cbp(4 * cin * i, i) + _cbp(9 * i * i, i) + _cbp(i * cout, cout) + _prelu(cout)

    def up(cin: int, cout: int) -> int:
        i = cin // 4
        shortcut = cin * cout + _bn(cout)
        return shortcut + _cbp(cin * i, i) + _cbp(4 * i * i, i) + _cbp(i * cout, cout) + _prelu(cout)

    w2, w3 = 4 * w, 8 * w
    initial = 9 * in_ch * (w - in_ch) + _bn(w) + _prelu(w)
    stage23 = 6 * regular(w3) + 2 * regular(w3, asym=5)  # regular + dilated (same count) + 2 asymmetric
    total = initial + down(w, w2) + 4 * regular(w2) + down(w2, w3) + 2 * stage23
    total += up(w3, w2) + 2 * regular(w2) + up(w2, w) + regular(w)
    total += w * num_classes * 9  # 3×3 transposed full convolution, no bias
    return total


def unet_param_count(num_classes: int, in_ch: int = 1, w: int = 64) -> int:
    """U-Net: DoubleConv = two (3×3 conv without bias + BN); up = 2×2 transposed conv with bias."""
    def dc(a: int, b: int) -> int:
        return 9 * a * b + _bn(b) + 9 * b * b + _bn(b)

    ws = [w, 2 * w, 4 * w, 8 * w, 16 * w]
    total = dc(in_ch, ws[0]) + sum(dc(ws[i], ws[i + 1]) for i in range(4))
    for i in range(4):  # decoder level i: from ws[i+1] to ws[i]
        total += 4 * ws[i + 1] * (ws[i + 1] // 2) + ws[i + 1] // 2  # transposed conv + bias
        total += dc(ws[i + 1] // 2 + ws[i], ws[i])
    return total + ws[0] * num_classes + num_classes


@pytest.mark.parametrize(("classes", "width"), [(5, 16), (5, 8), (12, 16), (3, 4)])
def test_enet_parameter_count(classes: int, width: int) -> None:
    assert count_parameters(ENet(classes, width=width)) == enet_param_count(classes, w=width)


def test_enet_default_size_matches_paper() -> None:
    # Paper: 0.37 M parameters (12 classes, RGB input); ours: 5 classes, 1 channel.
    n = count_parameters(build_model("enet"))
    assert n == enet_param_count(5) == 356_279
    assert count_parameters(ENet(12, in_channels=3)) == pytest.approx(0.37e6, rel=0.05)


@pytest.mark.parametrize(("classes", "width"), [(5, 64), (5, 8), (2, 4)])
def test_customnet_parameter_count(classes: int, width: int) -> None:
    assert count_parameters(CustomNet(classes, width=width)) == unet_param_count(classes, w=width)


def test_customnet_default_widths_are_the_seeds() -> None:
    net = build_model("customnet")
    assert [m[0].out_channels for m in [net.inc, *net.downs]] == [64, 128, 256, 512, 1024]
    assert count_parameters(net) == unet_param_count(5) == 31_036_741


@pytest.mark.parametrize("name", ["enet", "customnet"])
@pytest.mark.parametrize(("h", "w"), [(32, 32), (64, 48), (96, 160)])
def test_output_shape(name: str, h: int, w: int) -> None:
    net = build_model(name, width=4).eval()
    with torch.no_grad():
        y = net(torch.randn(3, 1, h, w))
    assert y.shape == (3, 5, h, w)
    assert torch.isfinite(y).all()


def test_size_must_be_divisible() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        ENet(width=4)(torch.zeros(1, 1, 36, 32))
    with pytest.raises(ValueError, match="divisible by 16"):
        CustomNet(width=4)(torch.zeros(1, 1, 40, 32))


def test_enet_has_paper_components() -> None:
    net = ENet(width=8)
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"PReLU", "Dropout2d", "MaxUnpool2d", "ConvTranspose2d"} <= kinds
    dilations = sorted({m.dilation[0] for m in net.modules() if isinstance(m, torch.nn.Conv2d)})
    assert dilations == [1, 2, 4, 8, 16]
    kernels = {tuple(m.kernel_size) for m in net.modules() if isinstance(m, torch.nn.Conv2d)}
    assert {(5, 1), (1, 5)} <= kernels
    assert net.down1.pool.return_indices and net.down2.pool.return_indices


def test_gradients_reach_every_parameter() -> None:
    for name in ("enet", "customnet"):
        net = build_model(name, width=4, dropout=0.0)
        net(torch.randn(2, 1, 32, 32)).sum().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, f"{name}: no gradient for {missing}"


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown 2D model"):
        build_model("segnet")
