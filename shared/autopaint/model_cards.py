"""The model registry: ``<models_dir>/<name>/{model.pt, card.json}`` — names, paths and cards.

The one home for "which model" (torch-free, so the API lists and checks models without torch):
the default model's name, the file names of a model folder, reading a card, listing the shipped
models and resolving a name (or a folder, or a ``model.pt`` path) to its weights. The trainer
writes cards through :func:`autopaint.model.checkpoint.write_card`; the worker and the CLI load
weights through :meth:`autopaint.model.inpainter.Inpainter.load`, which resolves here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from autopaint.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "thorax-petct-gconvlap-128"
"""The model a job or a CLI run uses when none is named."""
CARD_FILE = "card.json"
WEIGHTS_FILE = "model.pt"
#: summary key -> the card key it is read from (cards written by ``model/train.py``)
SUMMARY_KEYS = {"modality": "modality", "size": "image_size", "arch": "architecture", "preset": "preset",
                "in_channels": "in_channels", "default_threshold": "default_threshold",
                "description": "description", "sha256": "sha256"}


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    from autopaint.paths import models_dir

    return models_dir()


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The card of one model folder (``{}`` when it has none); a card that is not a JSON object
    raises ``ModelError(code="model_card_invalid")``."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"bad model card {path}: {exc}", code="model_card_invalid") from exc
    if not isinstance(card, dict):
        raise ModelError(f"bad model card {path}: not a JSON object", code="model_card_invalid")
    return card


def list_cards(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One summary per model folder under ``root`` (default :func:`autopaint.paths.models_dir`) that
    has a card, sorted by name: ``name``, ``path`` (its weights), ``has_weights``, ``weights_bytes``,
    the summary keys of :data:`SUMMARY_KEYS` when the card has them, and ``card`` (all of it).
    Unreadable cards are skipped with a warning."""
    base = _root(root)
    if not base.is_dir():
        return []
    out = []
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and (p / CARD_FILE).is_file()):
        try:
            card = read_card(sub)
        except ModelError as exc:
            log.warning("%s", exc)
            continue
        weights = sub / WEIGHTS_FILE
        entry: dict[str, Any] = {"name": sub.name, "path": str(weights)}
        entry.update({k: card[src] for k, src in SUMMARY_KEYS.items() if src in card})
        entry["has_weights"] = weights.is_file()
        entry["weights_bytes"] = weights.stat().st_size if weights.is_file() else None
        entry["card"] = card
        out.append(entry)
    return out


def model_names(root: str | Path | None = None) -> set[str]:
    """Names of the models under ``root`` that have weights."""
    return {c["name"] for c in list_cards(root) if c["has_weights"]}


def resolve_weights(name_or_path: str | Path | None, root: str | Path | None = None) -> Path:
    """Path of ``model.pt`` for a model name (looked up under ``root``), a model folder or a file;
    ``None`` means :data:`DEFAULT_MODEL`. Raises ``ModelError(code="model_not_found")``."""
    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir() and (p / WEIGHTS_FILE).is_file():
        return p / WEIGHTS_FILE
    base = _root(root)
    cand = base / str(name) / WEIGHTS_FILE
    if "/" not in str(name) and cand.is_file():
        return cand
    known = ", ".join(sorted(model_names(base))) or "none"
    raise ModelError(f"model {str(name)!r} not found (known: {known})", code="model_not_found")
