"""Convolution operators of the inpainting networks (paper §2.3).

Hand-written because they are what the paper defines and no well-kept library ships them:

* :class:`GatedConv2d` — Yu et al. 2019 (Gconv): ``out = act(BN(conv_f(x))) * sigmoid(conv_g(x))``,
  a learnable soft mask per channel and pixel.
* :class:`PartialConv2d` — Liu et al. 2018 (Pconv): ``W^T (X ⊙ M) · sum(1)/sum(M) + b`` where
  ``sum(M) > 0``, else 0; the rule-based mask update ``M' = 1`` where ``sum(M) > 0``.

All tensors are ``(B, C, H, W)``; masks are ``(B, 1, H, W)`` with **1 = valid, 0 = hole**.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_activation(name: str) -> nn.Module:
    """``"relu"``, ``"leaky"`` (LeakyReLU 0.2, the decoder's) or ``"none"``."""
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "leaky":
        return nn.LeakyReLU(0.2, inplace=False)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class GatedConv2d(nn.Module):
    """Gated convolution block: features ``conv_f``, gate ``sigmoid(conv_g)``, optional BN.

    ``forward(x) -> act(BN(conv_f(x))) * sigmoid(conv_g(x))``. The two filters are one conv with
    ``2 * out_ch`` outputs (one kernel launch), split into feature and gate halves. BN (when on)
    normalises the feature branch only, so the gate stays a soft mask in [0, 1].
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.conv = nn.Conv2d(in_ch, 2 * out_ch, kernel_size, stride, kernel_size // 2, bias=not batch_norm)
        self.bn: nn.Module = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, gate = torch.split(self.conv(x), self.out_ch, dim=1)
        return self.act(self.bn(feat)) * torch.sigmoid(gate)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Inference only: fold the (eval-mode) BN of the feature half into the conv's weights and
        bias, so ``forward`` gives the same output without the BN pass. Irreversible; training
        keeps the unfolded module (the Inpainter folds its own copy)."""
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        assert bn.running_mean is not None and bn.running_var is not None
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        conv = self.conv
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=scale.device)
        conv.weight[: self.out_ch] *= scale.view(-1, 1, 1, 1)
        new_bias = bias.clone()
        new_bias[: self.out_ch] = bias[: self.out_ch] * scale + shift
        conv.bias = nn.Parameter(new_bias)
        self.bn = nn.Identity()


class PartialConv2d(nn.Module):
    """Partial convolution with the rule-based mask update (Liu et al. 2018).

    ``forward(x (B,Cin,H,W), mask (B,1,H,W)) -> (out (B,Cout,H',W'), new_mask (B,1,H',W'))``.
    The single-channel mask is shared by all input channels (as the paper describes the operator),
    so ``sum(1)/sum(M)`` is ``k*k / (number of valid pixels in the window)``. ``out`` is 0 where the
    window holds no valid pixel; BN and activation (when on) are applied after the masked conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        batch_norm: bool = False,
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, self.padding, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias and not batch_norm else None
        self.bn: nn.Module = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.act = make_activation(activation)
        self.register_buffer("ones", torch.ones(1, 1, kernel_size, kernel_size), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            msum = F.conv2d(mask, self.get_buffer("ones").to(mask.dtype), stride=self.stride, padding=self.padding)
            new_mask = (msum > 0).to(x.dtype)
            ratio = (self.kernel_size * self.kernel_size) / msum.clamp(min=1.0) * new_mask
        out = self.conv(x * mask) * ratio.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        out = out * new_mask
        return self.act(self.bn(out)), new_mask


def downsample_mask(mask: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Mask pyramid step for gated nets: the partial-conv rule (valid where any input is valid).

    ``(B,1,H,W) -> (B,1,H/stride,W/stride)``; equals max-pooling with the conv's window and padding.
    """
    return F.max_pool2d(mask, kernel_size, stride, kernel_size // 2)
