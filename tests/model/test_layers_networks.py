from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autopaint.model.layers import GatedConv2d, PartialConv2d, downsample_mask
from autopaint.model.networks import ModelConfig, build_network, composite, preset_config


def _mask(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.ones(b, 1, n, n)
    m[:, :, n // 4 : n // 2, n // 4 : n // 2 + 3] = 0
    m[:, :, -5:, :7] = 0
    m = m * (torch.rand(b, 1, n, n, generator=g) > 0.05).float()
    return m


@pytest.mark.parametrize("arch", ["gconv_lap", "gconv", "pconv"])
@pytest.mark.parametrize("channels", [1, 2])
def test_shape_range_and_gradient(make_cfg, arch: str, channels: int) -> None:
    torch.manual_seed(0)
    cfg = make_cfg(arch, channels)
    net = build_network(cfg)
    x = torch.rand(2, channels, 32, 32)
    m = _mask(2, 32)
    out = net(x * m, m)
    assert out.shape == (2, channels, 32, 32)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    ((1 - m) * (out - x)).abs().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    # every layer receives signal: the first encoder conv and the output head
    first = next(net.encoder[0].parameters())
    assert float(first.grad.abs().sum()) > 0
    assert float(next(net.head.parameters()).grad.abs().sum()) > 0


def test_gated_conv_is_act_features_times_sigmoid_gate() -> None:
    torch.manual_seed(0)
    layer = GatedConv2d(3, 4, 3, 1, batch_norm=False, activation="relu")
    x = torch.randn(1, 3, 8, 8)
    full = layer.conv(x)
    expect = torch.relu(full[:, :4]) * torch.sigmoid(full[:, 4:])
    assert torch.allclose(layer(x), expect)


@pytest.mark.parametrize("arch", ["gconv_lap", "gconv"])
def test_batchnorm_folding_keeps_the_output(make_cfg, arch: str) -> None:
    """The Inpainter folds eval-mode BN into the gated convs: same output, no BN module left."""
    torch.manual_seed(1)
    net = build_network(make_cfg(arch, 2))
    net.train()
    for _ in range(3):  # non-trivial running statistics and affine parameters
        m = _mask(4, 32, seed=2)
        net(torch.rand(4, 2, 32, 32) * m, m)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.2, 0.2)
    net.eval()
    x = torch.rand(3, 2, 32, 32)
    m = _mask(3, 32, seed=3)
    with torch.no_grad():
        before = net(x * m, m)
        n_bn = sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in net.modules())
        for mod in net.modules():
            if isinstance(mod, GatedConv2d):
                mod.fold_batchnorm()
        after = net(x * m, m)
    assert n_bn > 0
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in net.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_pconv_ignores_hole_pixels_and_updates_mask() -> None:
    torch.manual_seed(0)
    pc = PartialConv2d(2, 3, 3, 1, batch_norm=False, activation="none")
    x = torch.rand(1, 2, 10, 10)
    m = torch.ones(1, 1, 10, 10)
    m[:, :, 2:7, 2:7] = 0  # a 5x5 hole; its 3x3 centre windows see no valid pixel
    out1, m1 = pc(x, m)
    x2 = x.clone()
    x2[:, :, 2:7, 2:7] = torch.rand(1, 2, 5, 5) * 100  # perturb hole pixels only
    out2, _ = pc(x2, m)
    assert torch.equal(out1, out2)  # outputs anywhere are independent of hole values
    # windows fully inside the hole (centres 3..5): output 0 and new mask 0; elsewhere valid
    assert torch.all(out1[:, :, 3:6, 3:6] == 0)
    assert torch.all(m1[:, :, 3:6, 3:6] == 0) and float(m1.sum()) == 100 - 9
    # a window with no hole equals the ordinary conv (+ bias); a partly holed window is rescaled
    ref = F.conv2d(x, pc.conv.weight, pc.bias, padding=1)
    assert torch.allclose(out1[:, :, 8, 8], ref[:, :, 8, 8], atol=1e-6)
    xm = x * m
    partial = F.conv2d(xm, pc.conv.weight, None, padding=1)[:, :, 2, 2] * (9 / 5) + pc.bias
    assert torch.allclose(out1[:, :, 2, 2], partial, atol=1e-5)  # window (1..3,1..3) has 5 valid


def test_mask_pyramid_follows_partial_conv_rule() -> None:
    m = torch.ones(1, 1, 16, 16)
    m[:, :, 4:12, 4:12] = 0
    d = downsample_mask(m, 3, 2)
    rule = (F.conv2d(m, torch.ones(1, 1, 3, 3), stride=2, padding=1) > 0).float()
    assert torch.equal(d, rule)


def test_config_roundtrip_and_presets() -> None:
    cfg = preset_config("demo", "pconv", 1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    paper = preset_config("paper", "gconv_lap", 2)
    assert paper.size == 512 and paper.depth == 8 and paper.widths[0] == 64 and paper.widths[-1] == 512
    assert paper.kernel_sizes[:3] == (7, 5, 5)
    with pytest.raises(ValueError):
        ModelConfig(size=100, depth=3)


def test_composite_keeps_valid_pixels() -> None:
    x, p = torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8)
    m = _mask(1, 8)
    c = composite(p, x, m)
    assert torch.equal(c[m.expand_as(c) > 0], x[m.expand_as(x) > 0])
    assert torch.equal(c[m.expand_as(c) == 0], p[m.expand_as(p) == 0])
