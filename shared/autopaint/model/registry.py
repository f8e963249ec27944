"""Shipped-model registry: ``<models_dir>/<name>/{model.pt, card.json}``.

``resolve(name_or_path)`` accepts a model name (looked up in :func:`autopaint.paths.models_dir`),
a model directory, or a ``model.pt`` path, and returns the ``model.pt`` path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autopaint.errors import ModelError
from autopaint.model.checkpoint import MODEL_FILE, read_card
from autopaint.paths import models_dir

DEFAULT_MODEL = "thorax-petct-gconvlap-128"


def resolve(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """Path of ``model.pt`` for a name, a model directory or a file; raises ``ModelError``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir() and (p / MODEL_FILE).is_file():
        return p / MODEL_FILE
    base = Path(root) if root is not None else models_dir()
    cand = base / str(name_or_path) / MODEL_FILE
    if "/" not in str(name_or_path) and cand.is_file():
        return cand
    known = ", ".join(m["name"] for m in list_models(base)) or "none"
    raise ModelError(f"model {str(name_or_path)!r} not found (known: {known})", code="model_not_found")


def list_models(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Cards of all models under ``root`` (default models_dir()), each with ``name`` and ``path``."""
    base = Path(root) if root is not None else models_dir()
    out: list[dict[str, Any]] = []
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir()):
        if (d / MODEL_FILE).is_file():
            card = read_card(d)
            card["name"] = d.name
            card["path"] = str(d / MODEL_FILE)
            out.append(card)
    return out
