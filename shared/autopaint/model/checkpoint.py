"""Checkpoint format: ``models/<name>/model.pt`` + ``models/<name>/card.json``.

``model.pt`` = ``{format_version, model_config, preprocessing, training_summary, state_dict}``
holding only plain dicts/lists/str/int/float/bool/None and tensors, so it loads with
``torch.load(path, weights_only=True)``. ``card.json`` describes it for humans and the registry
(architecture, modality, preset, image size, data and split, epochs, validation metrics,
``default_threshold`` — null until segmentation calibrates it — and the sha256 of model.pt).
Files are written atomically (tmp + fsync + rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autopaint.errors import ModelError
from autopaint.fsutil import atomic_open, atomic_write_bytes, sha256_file
from autopaint.model.networks import ModelConfig, build_network
from autopaint.model_cards import CARD_FILE, WEIGHTS_FILE

FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path,
    model_config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    preprocessing: dict[str, Any],
    training_summary: dict[str, Any],
) -> str:
    """Write model.pt atomically; returns its sha256. Tensors are moved to CPU, contiguous."""
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "preprocessing": dict(preprocessing),
        "training_summary": dict(training_summary),
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()},
    }
    p = Path(path)
    with atomic_open(p, "wb") as f:
        torch.save(ckpt, f)
    return sha256_file(p)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` + format checks; raises :class:`ModelError`."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint not found: {p}", code="model_not_found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise ModelError(f"cannot load checkpoint {p}: {exc}", code="model_unreadable") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{p} is not an autopaint checkpoint (format {FORMAT_VERSION})", code="model_format")
    for key in ("model_config", "preprocessing", "training_summary", "state_dict"):
        if key not in ckpt:
            raise ModelError(f"checkpoint {p} lacks {key!r}", code="model_format")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, ModelConfig]:
    """Build the network of a loaded checkpoint and load its weights (strict)."""
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    net = build_network(cfg)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint weights do not match {cfg.arch}: {exc}", code="model_format") from exc
    net.eval()
    return net, cfg


def write_card(model_dir: str | Path, card: dict[str, Any]) -> Path:
    """Write ``card.json`` (adds ``sha256`` of model.pt and keeps ``default_threshold``)."""
    d = Path(model_dir)
    card = dict(card)
    card["sha256"] = sha256_file(d / WEIGHTS_FILE)
    card.setdefault("default_threshold", None)
    data = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(d / CARD_FILE, data)
    return d / CARD_FILE
