from __future__ import annotations

import pytest
import torch

from autopaint.model.losses import (
    InpaintingLoss,
    LossWeights,
    gram_matrix,
    l_hole,
    l_valid,
    laplacian_loss,
    style_loss,
    total_variation,
)
from autopaint.model.vgg import VGG16Features, build_vgg, load_vgg_weights, to_rgb


def test_valid_and_hole_l1_by_hand() -> None:
    gt = torch.zeros(1, 1, 2, 2)
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert float(l_valid(pred, gt, mask)) == pytest.approx((1 + 4) / 4)
    assert float(l_hole(pred, gt, mask)) == pytest.approx((2 + 3) / 4)


def test_tv_by_hand() -> None:
    comp = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    # horizontal |1-0|+|3-1|+0+0 = 3; vertical |2-0|+|2-1|+|2-3| = 4; N = 6
    assert float(total_variation(comp)) == pytest.approx(7 / 6)


def test_gram_and_style_with_fake_features() -> None:
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, C=2, 1, 2)
    g = gram_matrix(f)
    # F F^T = [[1+4, 3], [3, 9]] / (C*H*W = 4)
    assert torch.allclose(g, torch.tensor([[[5.0, 3.0], [3.0, 9.0]]]) / 4)
    z = torch.zeros_like(f)
    # 1/C^2 * sum|G - 0| = (5+3+3+9)/4 / 4
    assert float(style_loss([f], [z])) == pytest.approx(20 / 4 / 4)

    def fake(x: torch.Tensor) -> list[torch.Tensor]:  # identity "extractor" with 2 levels
        return [x, x[..., ::2, ::2]]

    gt = torch.zeros(1, 1, 4, 4)
    pred = torch.full((1, 1, 4, 4), 0.5)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., :2, :] = 0
    loss = InpaintingLoss(LossWeights(valid=0, hole=0, perceptual=1, style=1, tv=0, lap=0), fake)
    total, terms = loss(pred, gt, mask)
    # perceptual: out vs gt: 0.5 at both levels; comp (holes=0.5 on top half) vs gt: 0.25 + 0.25
    assert terms["perceptual"] == pytest.approx(0.5 + 0.5 + 0.25 + 0.25)
    # style_out: gram of constant 0.5 = 0.25 at each level; style_comp: level0 0.125, level1 0.125
    assert terms["style_out"] == pytest.approx(0.25 + 0.25)
    assert terms["style_comp"] == pytest.approx(0.125 + 0.125)
    assert float(total) == pytest.approx(1.5 + 0.5 + 0.25)


def test_laplacian_pyramid_loss() -> None:
    gt = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    # a constant shift has no band-pass content: only the Gaussian residual differs by c, and
    # 2^(2*2) * c * (N/16) / N = c
    assert float(laplacian_loss(gt + 0.3, gt, 3)) == pytest.approx(0.3, rel=1e-5)
    assert float(laplacian_loss(gt, gt, 3)) == 0.0
    # a one-pixel impulse: level 0 band holds most of it -> loss is between 1/N-scale bounds
    imp = gt.clone()
    imp[..., 8, 8] += 1.0
    val = float(laplacian_loss(imp, gt, 1))  # one level = the image itself: |1| / N
    assert val == pytest.approx(1 / 256, rel=1e-5)


def test_weights_per_arch_and_off_drops_terms() -> None:
    assert LossWeights.for_arch("gconv_lap").lap == 20 and LossWeights.for_arch("gconv").lap == 0
    assert LossWeights.for_arch("pconv").style == 120
    pred, gt = torch.rand(2, 2, 16, 16), torch.rand(2, 2, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    mask[..., 4:9, 4:9] = 0
    total, terms = InpaintingLoss(LossWeights(), None)(pred, gt, mask)
    assert set(terms) == {"valid", "hole", "tv", "lap", "total"}
    w = LossWeights()
    expect = w.valid * terms["valid"] + w.hole * terms["hole"] + w.tv * terms["tv"] + w.lap * terms["lap"]
    assert float(total) == pytest.approx(expect, rel=1e-5)


def test_random_vgg_is_seeded_and_state_dict_loads(tmp_path) -> None:
    a, b = build_vgg("random", seed=3), build_vgg("random", seed=3)
    assert a is not None and b is not None
    x = torch.rand(1, 2, 32, 32)
    fa = a(x)
    assert [f.shape[1:] for f in fa] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert all(torch.equal(p, q) for p, q in zip(fa, b(x), strict=True))
    assert build_vgg("off") is None
    # torchvision key names: a file with features.* (+ extra classifier keys) loads
    sd = {k: torch.full_like(v, 0.01) for k, v in VGG16Features().state_dict().items()}
    assert "features.0.weight" in sd and "features.14.bias" in sd
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(sd, tmp_path / "vgg16.pth")
    v = VGG16Features()
    load_vgg_weights(v, tmp_path / "vgg16.pth")
    assert torch.all(v.features[0].weight == 0.01)
    assert to_rgb(torch.ones(1, 2, 2, 2) * torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))[0, 2].mean() == 0.5
