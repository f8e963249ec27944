"""Per-image inference cost of a network, counted once with ``torch.utils.flop_counter``.

The network is rebuilt on the ``meta`` device (no memory, no compute) and one forward pass of a
``(1, C, N, N)`` image + ``(1, 1, N, N)`` mask is traced by ``FlopCounterMode``; FLOPs count a
multiply-add as 2 (so MACs = FLOPs / 2). Element-wise ops (sigmoid gates, BN) are not counted —
convolutions dominate.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from autopaint.model.networks import ModelConfig, build_network


def flops_per_image(cfg: ModelConfig) -> int:
    """Forward FLOPs for one ``(C, N, N)`` image of the network described by ``cfg``."""
    with torch.device("meta"):
        net = build_network(cfg).eval()
        image = torch.zeros(1, cfg.in_channels, cfg.size, cfg.size)
        mask = torch.ones(1, 1, cfg.size, cfg.size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(image, mask)
    return int(counter.get_total_flops())
