"""The paper's multi-term inpainting objective (§2.3, supplement §2.1).

``L = 30 L_valid + 240 L_hole + 0.2 L_perceptual + 0.05 (L_style_out + L_style_comp) + 250 L_tv
+ 20 L_lap`` (GconvLap). The terms are hand-written because they are the paper's definitions:

* ``L_valid = ||M ⊙ (I_out − I_gt)||_1 / N``, ``L_hole = ||(1−M) ⊙ (I_out − I_gt)||_1 / N`` with
  N = number of elements of ``I_gt`` (B·C·H·W).
* ``L_perceptual = Σ_p ||Ψp(I_out) − Ψp(I_gt)||_1 / N_Ψp + ||Ψp(I_comp) − Ψp(I_gt)||_1 / N_Ψp``
  over VGG16 pool1..3 (:mod:`autopaint.model.vgg`).
* ``L_style_* = Σ_p 1/C_p² ||G(Ψp(I_*)) − G(Ψp(I_gt))||_1`` with ``G(Ψ) = Ψ Ψᵀ / K_p``,
  ``K_p = C_p·H_p·W_p`` (Liu et al.); ``1/C_p²`` over the C_p×C_p Gram entries = their mean
  (also averaged over the batch).
* ``L_tv`` on ``I_comp`` over the WHOLE image, as the paper's formula (neighbour pairs inside the
  image, sum of absolute differences divided by N = pixels of I_comp). Its gradient equals that of
  Liu et al.'s version restricted to the hole's 1-px dilation: pairs of two valid pixels are
  constants of the ground truth; only the logged value differs.
* ``L_lap = Σ_j 2^(2j) ||L^j(I_out) − L^j(I_gt)||_1 / N`` for a 3-level Laplacian pyramid
  (kornia; levels 0, 1 band-pass, level 2 the Gaussian residual). Level j has N/4^j elements, so
  with the paper's 2^(2j) weight and the N normalisation of the other terms every level counts as
  its mean absolute difference.

``LossWeights.for_arch``: "gconv_lap" = the paper's weights; "gconv" = the same without the
Laplacian term (the paper's Gconv baseline); "pconv" = Liu et al.'s original weights
(1, 6, 0.05, 120, 0.1; supplement §2.1, "Original Pconv coef.").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from kornia.geometry.transform import build_laplacian_pyramid
from torch import nn

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class LossWeights:
    valid: float = 30.0
    hole: float = 240.0
    perceptual: float = 0.2
    style: float = 0.05
    tv: float = 250.0
    lap: float = 20.0
    lap_levels: int = 3

    @classmethod
    def for_arch(cls, arch: str) -> LossWeights:
        if arch == "gconv_lap":
            return cls()
        if arch == "gconv":
            return cls(lap=0.0)
        if arch == "pconv":
            return cls(valid=1.0, hole=6.0, perceptual=0.05, style=120.0, tv=0.1, lap=0.0)
        raise ValueError(f"unknown arch {arch!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossWeights:
        return cls(**d)

    def without_perceptual(self) -> LossWeights:
        return replace(self, perceptual=0.0, style=0.0)


def l_valid(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``||M ⊙ (I_out − I_gt)||_1 / N``; pred/gt ``(B,C,H,W)``, mask ``(B,1,H,W)`` 1=valid."""
    return (mask * (pred - gt)).abs().sum() / gt.numel()


def l_hole(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``||(1−M) ⊙ (I_out − I_gt)||_1 / N``."""
    return ((1.0 - mask) * (pred - gt)).abs().sum() / gt.numel()


def total_variation(comp: torch.Tensor) -> torch.Tensor:
    """Paper's L_tv of ``I_comp (B,C,H,W)``: Σ|horizontal diffs| / N + Σ|vertical diffs| / N."""
    n = comp.numel()
    dh = (comp[..., :, 1:] - comp[..., :, :-1]).abs().sum()
    dv = (comp[..., 1:, :] - comp[..., :-1, :]).abs().sum()
    return (dh + dv) / n


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """``(B,C,H,W) -> (B,C,C)``: ``Ψ Ψᵀ / (C·H·W)``."""
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(feats: Sequence[torch.Tensor], feats_gt: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_p mean over (batch, C_p×C_p) of |G(Ψp) − G(Ψp_gt)| (= 1/C_p² ||·||_1 per image)."""
    total = feats[0].new_zeros(())
    for f, g in zip(feats, feats_gt, strict=True):
        total = total + (gram_matrix(f) - gram_matrix(g)).abs().mean()
    return total


def perceptual_loss(feats: Sequence[torch.Tensor], feats_gt: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_p ||Ψp − Ψp_gt||_1 / N_Ψp (one of the two sums of L_perceptual)."""
    total = feats[0].new_zeros(())
    for f, g in zip(feats, feats_gt, strict=True):
        total = total + (f - g).abs().mean()
    return total


def laplacian_loss(pred: torch.Tensor, gt: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """``Σ_j 2^(2j) ||L^j(pred) − L^j(gt)||_1 / N`` (N = elements of gt), j = 0..levels-1."""
    pa = build_laplacian_pyramid(pred, levels)
    pb = build_laplacian_pyramid(gt, levels)
    n = gt.numel()
    total = pred.new_zeros(())
    for j, (a, b) in enumerate(zip(pa, pb, strict=True)):
        total = total + (4.0**j) * (a - b).abs().sum() / n
    return total


class InpaintingLoss(nn.Module):
    """``forward(pred, gt, mask) -> (total, terms)``; ``terms`` holds each UNWEIGHTED term (float).

    ``pred`` = I_out ``(B,C,H,W)``, ``gt`` = I_gt, ``mask (B,1,H,W)`` 1 = valid. ``features`` is the
    VGG extractor (or any callable returning a list of ``(B,C_p,H_p,W_p)``); ``None`` drops the
    perceptual and style terms.
    """

    def __init__(self, weights: LossWeights, features: FeatureFn | None = None) -> None:
        super().__init__()
        self.weights = weights if features is not None else weights.without_perceptual()
        self.features = features

    def forward(
        self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        pred = pred.float()
        gt = gt.float()
        mask = mask.float()
        comp = mask * gt + (1.0 - mask) * pred
        terms: dict[str, torch.Tensor] = {
            "valid": l_valid(pred, gt, mask),
            "hole": l_hole(pred, gt, mask),
            "tv": total_variation(comp),
        }
        total = w.valid * terms["valid"] + w.hole * terms["hole"] + w.tv * terms["tv"]
        if w.lap > 0:
            terms["lap"] = laplacian_loss(pred, gt, w.lap_levels)
            total = total + w.lap * terms["lap"]
        if self.features is not None and (w.perceptual > 0 or w.style > 0):
            with torch.no_grad():
                f_gt = [f.float() for f in self.features(gt)]
            both = self.features(torch.cat([pred, comp], 0))
            f_out = [f.float()[: pred.shape[0]] for f in both]
            f_comp = [f.float()[pred.shape[0] :] for f in both]
            terms["perceptual"] = perceptual_loss(f_out, f_gt) + perceptual_loss(f_comp, f_gt)
            terms["style_out"] = style_loss(f_out, f_gt)
            terms["style_comp"] = style_loss(f_comp, f_gt)
            total = total + w.perceptual * terms["perceptual"]
            total = total + w.style * (terms["style_out"] + terms["style_comp"])
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["total"] = float(total.detach())
        return total, logged
