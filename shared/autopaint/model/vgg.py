"""VGG16's first three blocks as the perceptual/style feature extractor (paper §2.3).

Written by hand because torchvision is not available; the layer indices and parameter names are
torchvision's (``features.0.weight`` ... ``features.14.bias``) so an ImageNet VGG16 ``state_dict``
saved by torchvision loads directly (extra keys such as ``features.17.*`` / ``classifier.*`` are
ignored). Without a weight file, ``perceptual="random"`` builds a seeded random-weight VGG16
(Kaiming init, fixed seed — a fixed random feature map is still a useful texture statistic) and
``"off"`` drops the perceptual and style terms.

Channel mapping to the 3 RGB inputs VGG expects (documented choice):
* 1 channel (CT or PET): repeated 3 times;
* 2 channels (CT, PET): ``(CT, PET, mean(CT, PET))`` — the third input is padded with the mean;
then ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225) is applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from autopaint.errors import ModelError

log = logging.getLogger(__name__)

PERCEPTUAL_CHOICES = ("imagenet", "random", "off")
# torchvision vgg16.features indices 0..16: conv(3,64) relu conv relu POOL1 | conv(64,128) relu conv
# relu POOL2 | conv(128,256) relu conv relu conv relu POOL3
_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
POOL_INDICES = (4, 9, 16)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1], C in {1, 2, 3} -> ``(B, 3, H, W)`` (see module docstring)."""
    c = x.shape[1]
    if c == 1:
        return x.repeat(1, 3, 1, 1)
    if c == 2:
        return torch.cat([x, x.mean(dim=1, keepdim=True)], 1)
    if c == 3:
        return x
    raise ValueError(f"expected 1-3 channels, got {c}")


class VGG16Features(nn.Module):
    """``forward(x (B,C,H,W) in [0,1]) -> [pool1 (B,64,H/2,W/2), pool2 (B,128,H/4), pool3 (B,256,H/8)]``.

    Frozen (no gradients to its weights); gradients flow to the input.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(prev, v, 3, padding=1), nn.ReLU(inplace=True)]
                prev = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:  # always eval: fixed feature extractor
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        h = (to_rgb(x) - mean.to(x.dtype)) / std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in POOL_INDICES:
                out.append(h)
        return out


def build_vgg(perceptual: str, weights_path: str | Path | None = None, seed: int = 0) -> VGG16Features | None:
    """The feature extractor for a perceptual choice, or ``None`` for ``"off"``.

    ``weights_path`` (a torchvision VGG16 state_dict file) forces ``"imagenet"``.
    """
    if weights_path is not None:
        perceptual = "imagenet"
    if perceptual == "off":
        return None
    if perceptual not in PERCEPTUAL_CHOICES:
        raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {perceptual!r}")
    vgg = VGG16Features()
    if perceptual == "imagenet":
        if weights_path is None:
            raise ModelError("perceptual='imagenet' needs a VGG16 weights file", code="vgg_weights_missing")
        load_vgg_weights(vgg, weights_path)
    else:
        gen = torch.Generator().manual_seed(seed)
        for m in vgg.features:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * 9
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    if m.bias is not None:
                        m.bias.zero_()
    return vgg


def load_vgg_weights(vgg: VGG16Features, path: str | Path) -> None:
    """Load ``features.0..14`` from a torchvision VGG16 state_dict (or a dict holding one)."""
    try:
        sd = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"cannot read VGG16 weights {path}: {exc}", code="vgg_weights_unreadable") from exc
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    own = vgg.state_dict()
    picked = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(picked))
    if missing:
        raise ModelError(f"VGG16 weights {path} lack {missing[:4]}", code="vgg_weights_incomplete")
    vgg.load_state_dict(picked)
    log.info("loaded VGG16 ImageNet weights from %s", path)
