"""Validation metrics on the paper's 0–255 scale (MSE, PSNR, SSIM of the composite vs ground truth).

The paper's tables report MSE/PSNR/SSIM with 8-bit intensities; here images in [0, 1] are scaled
by 255 and compared per image with scikit-image (``peak_signal_noise_ratio`` / ``structural_similarity``,
``data_range=255``, channels on axis 0), then averaged (mean and std over images).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn

from autopaint.model.networks import composite


def autocast_for(device: torch.device) -> torch.autocast | nullcontext:
    """bf16 autocast on CUDA (no grad scaler needed), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_composite(
    net: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device, batch: int = 16
) -> np.ndarray:
    """Composite ``(n, C, N, N)`` float32 for images ``(n, C, N, N)`` [0,1] and masks ``(n, 1, N, N)``."""
    was_training = net.training
    net.eval()
    out = np.empty_like(images, dtype=np.float32)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for s in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch])).to(device, memory_format=fmt)
        m = torch.from_numpy(np.ascontiguousarray(masks[s : s + batch])).to(device, memory_format=fmt)
        with autocast_for(device):
            pred = net(x * m, m)
        out[s : s + batch] = composite(pred.float(), x, m).cpu().numpy()
    net.train(was_training)
    return out


def image_metrics(pred01: np.ndarray, gt01: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image MSE, PSNR (dB), SSIM on the 0–255 scale; inputs ``(n, C, N, N)`` in [0, 1]."""
    a = np.clip(pred01, 0, 1).astype(np.float64) * 255.0
    b = np.clip(gt01, 0, 1).astype(np.float64) * 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    psnr = 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))
    ssim = np.array(
        [structural_similarity(x, y, data_range=255.0, channel_axis=0) for x, y in zip(a, b, strict=True)]
    )
    return {"mse": mse, "psnr": psnr, "ssim": ssim}


def validate(
    net: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device, batch: int = 16
) -> dict[str, float]:
    """Mean and std of MSE/PSNR/SSIM (0–255) of the inpainted composites over the given masks."""
    comp = predict_composite(net, images, masks, device, batch)
    m = image_metrics(comp, images)
    out: dict[str, float] = {"n": float(len(images))}
    for k, v in m.items():
        out[k] = float(v.mean())
        out[f"{k}_std"] = float(v.std())
    return out
