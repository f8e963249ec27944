"""One inpainting model per (weights file, device) per worker process, loaded on first use.

Nothing is loaded at import time: a worker child loads its model when the first job needs it and
keeps it for every later job (models take seconds to load and hundreds of MB on the GPU). Names
are resolved by the registry (:func:`autopaint.model_cards.resolve_weights`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from autopaint.model_cards import resolve_weights

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cache: dict[tuple[Path, str], Any] = {}


def get_inpainter(name_or_path: str, device: str, models_dir: Path | None = None) -> Any:
    """The process-wide :class:`autopaint.model.inpainter.Inpainter` for (model, device)."""
    key = (resolve_weights(name_or_path, models_dir), device)
    with _lock:
        model = _cache.get(key)
        if model is None:
            from autopaint.model.inpainter import Inpainter  # torch is imported here, lazily

            log.info("loading model %s on %s", key[0], device)
            model = Inpainter.load(key[0], device=device)
            _cache[key] = model
        return model


def clear() -> None:
    with _lock:
        _cache.clear()
