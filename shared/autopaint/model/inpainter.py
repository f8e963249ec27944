"""``Inpainter``: a trained model loaded once, inpainting batches on any device (docs/INTERFACES.md).

``Inpainter.load(name_or_path, device="auto")`` then ``inpaint(images (B,C,N,N) float32 [0,1],
masks (B,1,N,N) 1 = valid) -> np.ndarray (B,C,N,N)`` — the COMPOSITE: valid pixels are the input's
exactly, hole pixels the network's prediction. ``images_inpainted`` counts images processed;
``flops_per_image`` is the forward cost counted once at load (:mod:`autopaint.model.flops`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autopaint.errors import InvalidInput, ModelError
from autopaint.fsutil import sha256_file
from autopaint.model.checkpoint import load_checkpoint, model_from_checkpoint
from autopaint.model.evaluate import autocast_for
from autopaint.model.flops import flops_per_image
from autopaint.model.layers import GatedConv2d
from autopaint.model.networks import ModelConfig
from autopaint.model_cards import read_card, resolve_weights

log = logging.getLogger(__name__)

#: Images per forward pass. On CPU, chunks of 8-32 keep the activations in cache: channels_last at
#: 16 ran 1.7x the images/s of the former contiguous batch of 64 on this 2-core machine
#: (bench/results/cpu_inference.md).
CPU_MAX_BATCH = 16
CUDA_MAX_BATCH = 64


def _device(name: str | torch.device) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("CUDA requested but not available", code="no_cuda")
    return torch.device(name)


class Inpainter:
    """A loaded inpainting model. Build with :meth:`load`."""

    def __init__(
        self,
        net: nn.Module,
        config: ModelConfig,
        checkpoint: dict[str, Any],
        card: dict[str, Any],
        sha256: str,
        device: torch.device,
        max_batch: int | None = None,
        path: Path | None = None,
    ) -> None:
        self.net = net.to(device).eval()
        for module in self.net.modules():  # eval-mode BN folded into the gated convs (same output)
            if isinstance(module, GatedConv2d):
                module.fold_batchnorm()
        self.config = config
        self.device = device
        self.max_batch = max_batch or (CUDA_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH)
        self.path = path
        self.size = config.size
        self.in_channels = config.in_channels
        self.arch = config.arch
        self.preprocessing: dict[str, Any] = dict(checkpoint["preprocessing"])
        self.training_summary: dict[str, Any] = dict(checkpoint["training_summary"])
        self.card = card
        self.sha256 = sha256
        self.modality: str = str(
            card.get("modality") or self.training_summary.get("modality")
            or self.preprocessing.get("modality") or ("petct" if self.in_channels == 2 else "ct")
        )
        thr = card.get("default_threshold")
        self.default_threshold: float | None = None if thr is None else float(thr)
        self.images_inpainted = 0
        self.flops_per_image = flops_per_image(config)
        # channels_last on every device: on this CPU (oneDNN) it runs the demo network 1.0-1.6x
        # faster per batch size (bench/results/cpu_inference.md), on CUDA it enables NHWC kernels
        self._fmt = torch.channels_last
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def load(cls, name_or_path: str | Path | None, device: str | torch.device = "auto",
             max_batch: int | None = None, models_dir: str | Path | None = None) -> Inpainter:
        """Load ``model.pt`` (a model name under ``models_dir``, default the shipped models; a model
        dir or file; None = the default model) onto ``device`` ("auto" = CUDA if any).

        ``max_batch`` None: the device's default chunk (:data:`CPU_MAX_BATCH` / :data:`CUDA_MAX_BATCH`);
        callers may pass any number of images to :meth:`inpaint`, it is chunked internally."""
        path = resolve_weights(name_or_path, models_dir)
        ckpt = load_checkpoint(path)
        net, cfg = model_from_checkpoint(ckpt)
        sha = sha256_file(path)
        card = read_card(path.parent)
        if card.get("sha256") not in (None, sha):
            log.warning("card.json sha256 differs from %s (card is stale)", path)
        dev = _device(device)
        log.info("loaded %s (%s, %s, %dpx) on %s", path, cfg.arch, card.get("modality"), cfg.size, dev)
        return cls(net, cfg, ckpt, card, sha, dev, max_batch, path)

    def _check(self, images: np.ndarray, masks: np.ndarray) -> None:
        n, c = self.size, self.in_channels
        if images.ndim != 4 or images.shape[1:] != (c, n, n):
            raise InvalidInput(f"images must be (B, {c}, {n}, {n}), got {images.shape}", code="bad_model_input")
        if masks.shape != (images.shape[0], 1, n, n):
            raise InvalidInput(f"masks must be (B, 1, {n}, {n}), got {masks.shape}", code="bad_model_input")

    @torch.no_grad()
    def inpaint(self, images: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> np.ndarray:
        """Composite ``(B, C, N, N)`` float32: input at valid pixels (mask 1), prediction in holes."""
        img = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        msk = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        img = img.astype(np.float32, copy=False)
        msk = (msk > 0.5).astype(np.float32)
        self._check(img, msk)
        out = img.copy()
        for s in range(0, len(img), self.max_batch):
            x = torch.from_numpy(np.ascontiguousarray(img[s : s + self.max_batch])).to(self.device, memory_format=self._fmt)
            m = torch.from_numpy(np.ascontiguousarray(msk[s : s + self.max_batch])).to(self.device, memory_format=self._fmt)
            with autocast_for(self.device):
                pred = self.net(x * m, m)
            pred_np = pred.float().cpu().numpy()
            hole = msk[s : s + self.max_batch] < 0.5
            chunk = out[s : s + self.max_batch]
            np.copyto(chunk, pred_np, where=np.broadcast_to(hole, chunk.shape))
        self.images_inpainted += len(img)
        return out
