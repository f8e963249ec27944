"""The storage protocol shared by the API (inputs) and the worker (results).

Keys are POSIX-style relative paths built by the service only, never from client filenames:
``jobs/<job_id>/inputs/<role>.nii.gz`` (or ``<role>.dicom.zip``) and ``jobs/<job_id>/results/<name>``.
"""

from __future__ import annotations

import errno
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from autopaint.contracts import RESULTS, ArtifactRecord
from autopaint.errors import AutopaintError

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class StorageError(AutopaintError):
    code = "storage_error"


class UploadTooLarge(StorageError):
    """Raised by ``put_stream`` when more than ``max_bytes`` arrive (nothing is kept)."""

    code = "upload_too_large"


class StorageFull(StorageError):
    """The storage has no space (or quota) left: ``ENOSPC`` / ``EDQUOT``. Retrying soon cannot help."""

    code = "storage_full"


class StorageUnavailable(StorageError):
    """The storage refuses writes (read-only, permissions, I/O error): ``EROFS`` / ``EACCES`` / ``EIO``..."""

    code = "storage_unavailable"


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
UNAVAILABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def storage_error_from(exc: BaseException) -> StorageError | None:
    """The storage error an ``OSError`` means (``StorageFull`` / ``StorageUnavailable``), or None for
    any other exception (a missing file, a bug...). Already a ``StorageFull``/``StorageUnavailable``:
    returned as is."""
    if isinstance(exc, StorageFull | StorageUnavailable):
        return exc
    if not isinstance(exc, OSError):
        return None
    reason = exc.strerror or type(exc).__name__
    if exc.errno in FULL_ERRNOS:
        return StorageFull(f"the storage is full: {reason}")
    if exc.errno in UNAVAILABLE_ERRNOS:
        return StorageUnavailable(f"the storage refuses writes: {reason}")
    return None


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root (``..``, absolute, odd characters)."""
    if not _KEY_RE.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}", code="invalid_key")
    return key


INPUT_SUFFIX = {"nifti": ".nii.gz", "dicom": ".dicom.zip"}
"""Stored input format -> the suffix of its key (``contracts.StoredInput.format``)."""


def input_key(job_id: str, role: str, fmt: str = "nifti") -> str:
    """``jobs/<id>/inputs/<role>.nii.gz`` (a re-written NIfTI) or ``<role>.dicom.zip`` (a DICOM series)."""
    return check_key(f"jobs/{job_id}/inputs/{role}{INPUT_SUFFIX[fmt]}")


def result_key(job_id: str, name: str) -> str:
    return check_key(f"jobs/{job_id}/results/{name}")


def job_prefix(job_id: str) -> str:
    return check_key(f"jobs/{job_id}")


@runtime_checkable
class Storage(Protocol):
    def put_stream(
        self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> tuple[str, int]:
        """Store the concatenated chunks atomically under ``key``; return (sha256 hex, bytes).
        Raises ``UploadTooLarge`` (nothing stored) once more than ``max_bytes`` arrived."""
        ...

    def put_file(self, key: str, path: Path) -> tuple[str, int]:
        """Copy a local file atomically; return (sha256 hex, bytes)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open for binary reading (the caller closes it). ``FileNotFoundError`` when absent."""
        ...

    def path(self, key: str) -> Path | None:
        """A local filesystem path for the key when the backend has one, else None."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object's bytes."""
        ...


def store_results(storage: Storage, job_id: str, out_dir: Path, names: Iterable[str]) -> list[ArtifactRecord]:
    """Put each result file of ``names`` found in ``out_dir`` under ``jobs/<id>/results/<name>``;
    returns their artifact records (content type from :data:`autopaint.contracts.RESULTS`).
    A failure part-way (e.g. ``StorageFull``) deletes the objects this call already put, so no result
    object is left without its artifact row, and re-raises.
    """
    records: list[ArtifactRecord] = []
    try:
        for name in names:
            path = Path(out_dir) / name
            if not path.is_file():
                continue
            key = result_key(job_id, name)
            sha, size = storage.put_file(key, path)
            records.append(ArtifactRecord(name=name, storage_key=key, sha256=sha, bytes=size,
                                          content_type=RESULTS.get(name, "application/octet-stream")))
    except BaseException:
        for rec in records:
            try:
                storage.delete_prefix(rec["storage_key"])
            except OSError:  # best effort: the original error is the one to report
                pass
        raise
    return records


def probe_storage(storage: Storage) -> bool:
    """A small write + delete in the storage (``/readyz``): False when it cannot be written."""
    key = check_key(f"_probe/{uuid.uuid4().hex}")
    try:
        storage.put_stream(key, [b"ok"])
        storage.delete_prefix(key)
        return True
    except (OSError, StorageError):
        return False


def fetch_local(storage: Storage, key: str, dest: Path) -> Path:
    """A local path holding the object ``key``: the storage's own file when it has one on this disk,
    else a copy streamed to ``dest``."""
    local = storage.path(key)
    if local is not None and local.is_file():
        return local
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as fh:
        for chunk in storage.iter_chunks(key):
            fh.write(chunk)
    return dest
