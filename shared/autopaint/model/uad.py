"""Reconstruction-based anomaly detection baselines: a dense autoencoder (dAE) and a VAE.

These are the paper's strongest UAD baselines (Tables 6-7, after Baur et al. 2021, "Autoencoders for
unsupervised anomaly segmentation in brain MR images", whose reference code is the paper's [54]).
They follow that study's "dense" design: a convolutional encoder (stride-2 convolutions) down to an
8x8 feature map, a fully connected bottleneck (the latent vector), and a mirrored transposed-
convolution decoder. The VAE replaces the bottleneck by (mu, log sigma^2) heads, samples with the
reparameterisation trick and adds the KL divergence to the reconstruction loss. Both are trained on
healthy slices only; at test time the residual |x - x_hat| is the anomaly map.

No library ships these exact networks for 2D PET/CT slices (torchvision is unavailable here and MONAI
is not a dependency), hence the hand-written modules; they are small and standard.

Images follow the model convention: float32 in [0, 1], shape ``(B, C, N, N)``, ``C`` = 1 (ct or pet)
or 2 (petct: channel 0 = CT, channel 1 = PET), ``N`` a power of two >= 16.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autopaint.errors import ModelError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
UAD_KINDS = ("dae", "vae")


@dataclass(frozen=True)
class UADConfig:
    """Architecture of a dense AE / VAE.

    ``kind``: "dae" or "vae"; ``in_channels``: 1 or 2; ``size``: N (image side, pixels, power of 2);
    ``base_channels``: channels of the first encoder stage, doubled per stage up to ``max_channels``;
    ``latent_dim``: bottleneck length; ``kl_weight``: VAE only, weight of the KL term (per-pixel
    mean reconstruction loss + kl_weight * mean KL per latent unit).
    """

    kind: str = "dae"
    in_channels: int = 2
    size: int = 128
    base_channels: int = 16
    max_channels: int = 128
    latent_dim: int = 128
    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in UAD_KINDS:
            raise ModelError(f"unknown UAD kind {self.kind!r}; expected one of {UAD_KINDS}", code="bad_model_config")
        if self.size < 16 or self.size & (self.size - 1):
            raise ModelError(f"size must be a power of two >= 16, got {self.size}", code="bad_model_config")

    @property
    def depth(self) -> int:
        """Number of stride-2 stages: the bottleneck feature map is always 8x8."""
        return int(math.log2(self.size)) - 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UADConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _channels(cfg: UADConfig) -> list[int]:
    return [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(cfg.depth)]


class DenseAutoencoder(nn.Module):
    """Conv encoder -> dense latent (``latent_dim``) -> conv decoder; sigmoid output in [0, 1].

    ``forward(x (B,C,N,N)) -> dict(recon (B,C,N,N), mu (B,L), logvar (B,L) or None)``. For the VAE
    (``cfg.kind == "vae"``) the latent is sampled in training mode and equals ``mu`` in eval mode.
    """

    def __init__(self, cfg: UADConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = _channels(cfg)
        enc: list[nn.Module] = []
        prev = cfg.in_channels
        for ch in chans:
            enc += [nn.Conv2d(prev, ch, 5, stride=2, padding=2), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2)]
            prev = ch
        self.encoder = nn.Sequential(*enc)
        self.flat = prev * 8 * 8
        self.fc_mu = nn.Linear(self.flat, cfg.latent_dim)
        self.fc_logvar = nn.Linear(self.flat, cfg.latent_dim) if cfg.kind == "vae" else None
        self.fc_dec = nn.Linear(cfg.latent_dim, self.flat)
        dec: list[nn.Module] = []
        rev = list(reversed(chans))
        for i, ch in enumerate(rev):
            out = rev[i + 1] if i + 1 < len(rev) else cfg.base_channels
            dec += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
        dec += [nn.Conv2d(cfg.base_channels, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self._bottleneck_channels = rev[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(x).flatten(1)
        mu = self.fc_mu(h)
        logvar = self.fc_logvar(h).clamp(-10.0, 10.0) if self.fc_logvar is not None else None
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc_dec(z).view(-1, self._bottleneck_channels, 8, 8)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels or x.shape[-1] != self.cfg.size:
            raise ModelError(
                f"expected input (B, {self.cfg.in_channels}, {self.cfg.size}, {self.cfg.size}), got {tuple(x.shape)}",
                code="bad_input_shape",
            )
        mu, logvar = self.encode(x)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return {"recon": self.decode(z), "mu": mu, "logvar": logvar}


def build_uad(cfg: UADConfig) -> DenseAutoencoder:
    """A fresh (randomly initialised) dAE or VAE for ``cfg``."""
    return DenseAutoencoder(cfg)


def uad_loss(out: dict[str, torch.Tensor | None], x: torch.Tensor, kl_weight: float) -> dict[str, torch.Tensor]:
    """L1 reconstruction (mean per pixel, as Baur et al.) + ``kl_weight`` x KL (mean per latent unit, VAE).

    Returns ``{"total", "rec", "kl"}`` (scalars).
    """
    recon = out["recon"]
    assert recon is not None
    rec = F.l1_loss(recon, x)
    mu, logvar = out["mu"], out["logvar"]
    if logvar is not None and mu is not None:
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
    else:
        kl = torch.zeros((), device=x.device)
    return {"total": rec + kl_weight * kl, "rec": rec, "kl": kl}


@dataclass
class UADTrainSummary:
    """What a training run did: steps, epochs (fractional), seconds, first/last mean training loss."""

    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    val_l1: float | None = None
    history: list[float] = field(default_factory=list)


def train_uad(
    model: DenseAutoencoder,
    images: np.ndarray,
    *,
    max_seconds: float = 60.0,
    max_steps: int | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    val_images: np.ndarray | None = None,
    device: str = "cpu",
) -> UADTrainSummary:
    """Train ``model`` in place on healthy slices, stopping at ``max_seconds`` or ``max_steps``.

    ``images``: float32 ``(n, C, N, N)`` in [0, 1] (or uint8 0..255, converted). Adam, shuffled
    mini-batches, horizontal flips as the only augmentation. ``history`` holds the mean loss of
    each block of 10 steps. ``val_l1``: mean |x - x_hat| on ``val_images`` after training.
    """
    data = _as_float_tensor(images)
    if data.shape[0] < 2 or batch_size < 2:  # BatchNorm statistics need at least two samples
        raise ModelError(f"UAD training needs >= 2 images and batch_size >= 2 (got {data.shape[0]}, {batch_size})",
                         code="empty_training_set")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    summary = UADTrainSummary()
    start = time.monotonic()
    block: list[float] = []
    n = data.shape[0]
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if idx.numel() < 2 and n >= 2:  # BatchNorm needs >1 sample
                continue
            x = data[idx].to(device)
            if torch.rand((), generator=gen) < 0.5:
                x = torch.flip(x, dims=(-1,))
            loss = uad_loss(model(x), x, model.cfg.kl_weight)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            summary.steps += 1
            summary.epochs += idx.numel() / n
            block.append(float(loss.detach()))
            if len(block) == 10:
                summary.history.append(float(np.mean(block)))
                block = []
            done_time = time.monotonic() - start >= max_seconds
            done_steps = max_steps is not None and summary.steps >= max_steps
            if done_time or done_steps:
                if block:
                    summary.history.append(float(np.mean(block)))
                summary.seconds = time.monotonic() - start
                summary.first_loss = summary.history[0]
                summary.last_loss = summary.history[-1]
                if val_images is not None and len(val_images):
                    rec = reconstruct(model, val_images, device=device)
                    summary.val_l1 = float(np.mean(np.abs(rec - _as_float_tensor(val_images).numpy())))
                log.info("trained %s: %d steps (%.1f epochs) in %.1fs, loss %.4f -> %.4f", model.cfg.kind,
                         summary.steps, summary.epochs, summary.seconds, summary.first_loss, summary.last_loss)
                model.eval()
                return summary


def _as_float_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


@torch.no_grad()
def reconstruct(model: DenseAutoencoder, images: np.ndarray, *, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """Deterministic reconstruction (eval mode; the VAE decodes its mean): ``(n,C,N,N)`` -> same shape, [0, 1]."""
    model.to(device).eval()
    data = _as_float_tensor(images)
    outs = []
    for i in range(0, data.shape[0], batch_size):
        rec = model(data[i : i + batch_size].to(device))["recon"]
        assert rec is not None
        outs.append(rec.cpu().numpy())
    if not outs:
        return np.zeros_like(data.numpy())
    return np.concatenate(outs).astype(np.float32)


def residual_maps(
    model: DenseAutoencoder,
    images: np.ndarray,
    ooi: np.ndarray | None = None,
    *,
    channel_reduce: str = "mean",
    batch_size: int = 32,
    device: str = "cpu",
) -> np.ndarray:
    """Anomaly maps ``|x - x_hat|`` reduced over channels: ``(n,C,N,N)`` -> float32 ``(n, N, N)`` in [0, 1].

    ``channel_reduce``: "mean" (default, like the autoinpainting residual of a two-channel model) or
    "max". ``ooi``: optional bool ``(n, N, N)``; residuals outside the organ of interest are set to 0.
    """
    x = _as_float_tensor(images).numpy()
    diff = np.abs(x - reconstruct(model, x, batch_size=batch_size, device=device))
    if channel_reduce == "mean":
        res = diff.mean(axis=1)
    elif channel_reduce == "max":
        res = diff.max(axis=1)
    else:
        raise ValueError(f"channel_reduce must be 'mean' or 'max', got {channel_reduce!r}")
    if ooi is not None:
        res = np.where(np.asarray(ooi, dtype=bool), res, 0.0)
    return res.astype(np.float32)


def save_uad(model: DenseAutoencoder, path: Path, *, preprocessing: dict[str, Any] | None = None,
             training_summary: UADTrainSummary | None = None) -> Path:
    """Write ``{format_version, model_config, preprocessing, training_summary, state_dict}`` (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model_config": {"arch": model.cfg.kind, **model.cfg.to_dict()},
        "preprocessing": preprocessing or {},
        "training_summary": asdict(training_summary) if training_summary else {},
        "state_dict": model.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_uad(path: Path, device: str = "cpu") -> DenseAutoencoder:
    """Load a checkpoint written by :func:`save_uad` (``weights_only=True``), in eval mode."""
    try:
        ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"cannot load UAD checkpoint {Path(path).name}: {exc}", code="bad_checkpoint") from exc
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"unsupported UAD checkpoint version {ckpt.get('format_version')}", code="bad_checkpoint")
    model = build_uad(UADConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
