"""Local-filesystem storage (the embedded default; a shared volume in production)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from autopaint.fsutil import atomic_write_chunks
from autopaint.storage.base import UploadTooLarge, check_key, storage_error_from

log = logging.getLogger(__name__)


class LocalStorage:
    """Objects are files under ``root``; writes go to a temp file in the same folder, are fsynced
    and renamed into place, so a reader never sees a partial object. A write the disk refuses raises
    ``StorageFull`` (``ENOSPC``/``EDQUOT``) or ``StorageUnavailable`` (read-only, permissions, I/O),
    never a bare ``OSError``; the temp file is gone (``atomic_write_chunks``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _full(self, key: str) -> Path:
        full = (self.root / check_key(key)).resolve()
        if self.root not in full.parents:
            raise ValueError(f"key {key!r} escapes the storage root")
        return full

    def put_stream(
        self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> tuple[str, int]:
        full = self._full(key)
        try:
            return atomic_write_chunks(full, chunks, max_bytes=max_bytes, too_large=UploadTooLarge)
        except OSError as exc:
            mapped = storage_error_from(exc)
            if mapped is None:
                raise
            log.error("storage write of %s failed: %s", key, exc)
            raise mapped from exc

    def put_file(self, key: str, path: Path) -> tuple[str, int]:
        with open(path, "rb") as fh:
            return self.put_stream(key, iter(lambda: fh.read(1 << 20), b""))

    def open(self, key: str) -> BinaryIO:
        return open(self._full(key), "rb")

    def path(self, key: str) -> Path | None:
        return self._full(key)

    def exists(self, key: str) -> bool:
        return self._full(key).is_file()

    def size(self, key: str) -> int:
        return self._full(key).stat().st_size

    def delete_prefix(self, prefix: str) -> int:
        target = self._full(prefix)
        if target.is_file():
            target.unlink()
            return 1
        if not target.is_dir():
            return 0
        n = sum(1 for p in target.rglob("*") if p.is_file())
        shutil.rmtree(target)
        return n

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as fh:
            while chunk := fh.read(chunk_size):
                yield chunk
