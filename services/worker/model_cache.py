"""One inpainting model per (name, device) per worker process, loaded on first use.

Nothing is loaded at import time: a worker child loads its model when the first job needs it and
keeps it for every later job (models take seconds to load and hundreds of MB on the GPU).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cache: dict[tuple[str, str], Any] = {}


def resolve_model(name_or_path: str, models_dir: Path | None) -> str:
    """A model name becomes ``<models_dir>/<name>`` when that folder exists, else stays as given
    (``autopaint.model.registry`` resolves names against ``AUTOPAINT_MODELS_DIR``)."""
    if models_dir is not None and "/" not in name_or_path and (models_dir / name_or_path).is_dir():
        return str(models_dir / name_or_path)
    return name_or_path


def get_inpainter(name_or_path: str, device: str, models_dir: Path | None = None) -> Any:
    """The process-wide :class:`autopaint.model.inpainter.Inpainter` for (model, device)."""
    key = (resolve_model(name_or_path, models_dir), device)
    with _lock:
        model = _cache.get(key)
        if model is None:
            from autopaint.model.inpainter import Inpainter  # torch is imported here, lazily

            log.info("loading model %s on %s", key[0], device)
            model = Inpainter.load(key[0], device=device)
            _cache[key] = model
        return model


def cached_models() -> list[tuple[str, str]]:
    """(model, device) pairs loaded in this process (for tests and diagnostics)."""
    with _lock:
        return list(_cache)


def clear() -> None:
    with _lock:
        _cache.clear()
