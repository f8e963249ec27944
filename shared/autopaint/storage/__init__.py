"""autopaint.storage: the Storage protocol and its local-filesystem backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopaint.storage.base import (
    Storage,
    StorageError,
    StorageFull,
    StorageUnavailable,
    UploadTooLarge,
    check_key,
    fetch_local,
    input_key,
    job_prefix,
    probe_storage,
    result_key,
    storage_error_from,
    store_results,
)
from autopaint.storage.local import LocalStorage

if TYPE_CHECKING:
    from autopaint.settings import Settings


def make_storage(settings: Settings) -> Storage:
    """The storage backend named by ``settings.storage_backend`` (``local``: ``storage_dir``)."""
    assert settings.storage_dir is not None  # derived by Settings
    return LocalStorage(settings.storage_dir)


__all__ = [
    "LocalStorage",
    "Storage",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "UploadTooLarge",
    "check_key",
    "fetch_local",
    "input_key",
    "job_prefix",
    "make_storage",
    "probe_storage",
    "result_key",
    "storage_error_from",
    "store_results",
]
