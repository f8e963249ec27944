"""A deterministic stand-in for ``model.inpainter.Inpainter``: holes are filled with a fixed
"healthy" value per channel, valid pixels are copied (the composite), and images are counted."""

from __future__ import annotations

from typing import Any

import numpy as np


class ConstantInpainter:
    """Fills every hole pixel of channel c with ``fill[c]``; counts images like the real one."""

    def __init__(self, fill: tuple[float, ...] = (0.2, 0.2), size: int = 128, modality: str = "petct",
                 default_threshold: float | None = 0.1, flops_per_image: int = 1000) -> None:
        self.fill = np.asarray(fill, dtype=np.float32)
        self.size = size
        self.modality = modality
        self.in_channels = len(fill)
        self.images_inpainted = 0
        self.flops_per_image = flops_per_image
        self.default_threshold = default_threshold
        self.card: dict[str, Any] = {"name": "stub"}
        self.sha256 = "0" * 64
        self.preprocessing: dict[str, Any] = {}
        self.calls = 0

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        masks = np.asarray(masks, dtype=np.float32)
        assert images.ndim == 4 and masks.shape == (images.shape[0], 1) + images.shape[2:]
        assert images.shape[1] == self.in_channels
        # holed pixels must arrive zeroed (the network's convention)
        assert not np.any(images * (1 - masks)), "holes not zeroed"
        self.images_inpainted += images.shape[0]
        self.calls += 1
        return images * masks + (1 - masks) * self.fill[None, :, None, None]
