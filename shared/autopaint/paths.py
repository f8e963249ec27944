"""Where the repository keeps shipped models and where the team's real data lives.

Both can be overridden with environment variables, read only when these functions are called.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    """Directory holding ``<name>/model.pt`` + ``<name>/card.json`` (env ``AUTOPAINT_MODELS_DIR``)."""
    return Path(os.environ.get("AUTOPAINT_MODELS_DIR", REPO_ROOT / "models"))


def data_dir() -> Path:
    """The read-only real data sets (env ``AUTOPAINT_DATA_DIR``, default ``../shared/data``)."""
    return Path(os.environ.get("AUTOPAINT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
