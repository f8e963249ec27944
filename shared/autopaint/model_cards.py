"""Torch-free reader of the shipped model cards (``<models_dir>/<name>/card.json``).

The API lists models with this module so that it never imports torch; the model registry can
reuse it for the same listing. A card is JSON written next to ``model.pt`` by the trainer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.pt"
SUMMARY_KEYS = ("modality", "size", "arch", "preset", "in_channels", "default_threshold", "description", "sha256")


def read_card(model_dir: Path) -> dict[str, Any] | None:
    """The card of one model folder (None when absent or not a JSON object)."""
    path = Path(model_dir) / CARD_NAME
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("unreadable model card %s: %s", path, exc)
        return None
    return card if isinstance(card, dict) else None


def list_cards(models_dir: Path) -> list[dict[str, Any]]:
    """One summary per model folder that has a card, sorted by name: ``name``, ``has_weights``,
    ``weights_bytes``, the common card keys (``SUMMARY_KEYS``) when present, and ``card`` (all)."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (sub / CARD_NAME).is_file():
            continue
        card = read_card(sub)
        if card is None:
            continue
        weights = sub / WEIGHTS_NAME
        entry: dict[str, Any] = {"name": str(card.get("name") or sub.name)}
        entry.update({k: card[k] for k in SUMMARY_KEYS if k in card})
        entry["has_weights"] = weights.is_file()
        entry["weights_bytes"] = weights.stat().st_size if weights.is_file() else None
        entry["card"] = card
        out.append(entry)
    return out
