"""Inpainting U-Nets (paper §2.3, Fig. 2): gated-conv U-Net (GconvLap / Gconv) and Pconv U-Net.

Input ``image (B, C, N, N)`` float in [0, 1] with holes set to 0, ``mask (B, 1, N, N)`` with
1 = valid, 0 = hole. Output ``(B, C, N, N)`` in [0, 1] (sigmoid) — the raw prediction ``I_out``;
the composite ``I_comp = M*I_gt + (1-M)*I_out`` is made by the caller (:func:`composite`).

Topology (defaults = the paper's): ``depth`` encoder blocks (conv stride 2, BN except the first,
ReLU), kernel sizes 7,5,5,3,... as Liu et al.'s Pconv U-Net; ``depth`` decoder blocks (nearest x2
upsample, concat skip features + skip mask, 3x3 conv, BN, LeakyReLU 0.2); the last decoder block
(full resolution) takes the holed input + mask as its skip; a final ordinary 3x3 conv + sigmoid
fed by the last decoder block concatenated with the holed input and the mask (Pconv net: a partial
conv, as Liu et al.'s PConv16). Gated nets carry a mask pyramid (partial-conv rule = max-pool with
each encoder conv's window) and concatenate it with the skip features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autopaint.model.layers import GatedConv2d, PartialConv2d, downsample_mask

ARCHS = ("gconv_lap", "gconv", "pconv")


@dataclass(frozen=True)
class ModelConfig:
    """Network hyper-parameters; ``to_dict``/``from_dict`` give plain JSON/torch-safe values.

    ``arch``: "gconv_lap" | "gconv" (same gated net; differ in the loss) | "pconv".
    ``size``: N (128/256/512, must be divisible by 2**depth). Encoder widths are
    ``min(base_width * 2**i, max_width)``; ``kernel_sizes`` per encoder level (the last value
    repeats); decoder convs are 3x3.
    """

    arch: str = "gconv_lap"
    in_channels: int = 2
    size: int = 512
    depth: int = 8
    base_width: int = 64
    max_width: int = 512
    batch_norm: bool = True
    kernel_sizes: tuple[int, ...] = field(default=(7, 5, 5, 3, 3, 3, 3, 3))

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.in_channels not in (1, 2, 3):
            raise ValueError(f"in_channels must be 1, 2 or 3, got {self.in_channels}")
        if self.depth < 1 or self.size % (2**self.depth) != 0:
            raise ValueError(f"size {self.size} must be divisible by 2**depth (depth {self.depth})")

    @property
    def widths(self) -> list[int]:
        return [min(self.base_width * 2**i, self.max_width) for i in range(self.depth)]

    def kernel(self, level: int) -> int:
        return self.kernel_sizes[min(level, len(self.kernel_sizes) - 1)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernel_sizes"] = list(self.kernel_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        if "kernel_sizes" in d:
            d["kernel_sizes"] = tuple(int(k) for k in d["kernel_sizes"])
        return cls(**d)


# "paper": the published topology (GPU-sized). "demo": chosen by measurement on a 2-core CPU,
# see bench/results/model_presets.md (bench/train_throughput.py).
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(size=512, depth=8, base_width=64, max_width=512),
    "demo": ModelConfig(size=128, depth=5, base_width=16, max_width=128),
}


def preset_config(preset: str, arch: str, in_channels: int, **overrides: Any) -> ModelConfig:
    """The named preset with ``arch``/``in_channels`` (and any other field) replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], arch=arch, in_channels=in_channels, **overrides)


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``I_comp = M * I_in + (1 - M) * I_out``; shapes ``(B,C,N,N)``, mask ``(B,1,N,N)`` 1=valid."""
    return mask * image + (1.0 - mask) * pred


class InpaintUNet(nn.Module):
    """Gated-conv U-Net ("gconv_lap" and "gconv"). ``forward(image, mask) -> I_out (B,C,N,N)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        c = cfg.in_channels
        self.encoder = nn.ModuleList()
        prev = c + 1
        for i in range(cfg.depth):
            self.encoder.append(
                GatedConv2d(prev, w[i], cfg.kernel(i), 2, batch_norm=cfg.batch_norm and i > 0, activation="relu")
            )
            prev = w[i]
        self.decoder = nn.ModuleList()
        for k in range(cfg.depth - 1, -1, -1):  # decoder block producing resolution N / 2**k
            skip = (w[k - 1] if k > 0 else c) + 1
            out = w[k - 1] if k > 0 else max(w[0] // 2, 8)
            self.decoder.append(GatedConv2d(prev + skip, out, 3, 1, batch_norm=cfg.batch_norm, activation="leaky"))
            prev = out
        self.head = nn.Conv2d(prev + c + 1, c, 3, 1, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = image * mask
        feats: list[torch.Tensor] = [torch.cat([x, mask], 1)]  # skip for the full-resolution block
        m = mask
        h = feats[0]
        for i, block in enumerate(self.encoder):
            h = block(h)
            m = downsample_mask(m, self.cfg.kernel(i), 2)
            feats.append(torch.cat([h, m], 1))
        for j, block in enumerate(self.decoder):
            skip = feats[-2 - j]
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skip], 1))
        return torch.sigmoid(self.head(torch.cat([h, x, mask], 1)))


class PconvUNet(nn.Module):
    """Partial-conv U-Net (Liu et al. 2018) baseline. ``forward(image, mask) -> I_out (B,C,N,N)``.

    Skip connections concatenate features and masks; a decoder partial conv sees the concatenated
    mask as ``max`` of the upsampled and skip masks (valid if either is valid), as in Liu et al.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        c = cfg.in_channels
        self.encoder = nn.ModuleList()
        prev = c
        for i in range(cfg.depth):
            self.encoder.append(
                PartialConv2d(prev, w[i], cfg.kernel(i), 2, batch_norm=cfg.batch_norm and i > 0, activation="relu")
            )
            prev = w[i]
        self.decoder = nn.ModuleList()
        for k in range(cfg.depth - 1, -1, -1):
            skip = w[k - 1] if k > 0 else c
            out = w[k - 1] if k > 0 else max(w[0] // 2, 8)
            self.decoder.append(PartialConv2d(prev + skip, out, 3, 1, batch_norm=cfg.batch_norm, activation="leaky"))
            prev = out
        self.head = PartialConv2d(prev + c, c, 3, 1, batch_norm=False, activation="none")

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = image * mask
        feats: list[tuple[torch.Tensor, torch.Tensor]] = [(x, mask)]
        h, m = x, mask
        for block in self.encoder:
            h, m = block(h, m)
            feats.append((h, m))
        for j, block in enumerate(self.decoder):
            sh, sm = feats[-2 - j]
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            m = F.interpolate(m, scale_factor=2.0, mode="nearest")
            h, m = block(torch.cat([h, sh], 1), torch.maximum(m, sm))
        out, _ = self.head(torch.cat([h, x], 1), torch.maximum(m, mask))
        return torch.sigmoid(out)


def build_network(cfg: ModelConfig) -> nn.Module:
    """The network for ``cfg.arch`` (gated U-Net for gconv/gconv_lap, partial-conv U-Net for pconv)."""
    return PconvUNet(cfg) if cfg.arch == "pconv" else InpaintUNet(cfg)


def encoder_batchnorms(net: nn.Module) -> list[nn.BatchNorm2d]:
    """The BN layers of the encoder path (frozen in training phase 2)."""
    enc = getattr(net, "encoder", None)
    if enc is None:
        return []
    return [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
