"""Durable, atomic file writes and checksums — the one implementation every layer uses.

A write goes to a temporary file in the destination's folder, is flushed and fsynced, renamed
over the destination with ``os.replace`` and the folder is fsynced, so readers see either the old
file or the complete new one, never a half-written file (DESIGN.md §5, promise 4). Standard
library only: usable from the pure library, the services and the client alike.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


def _file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give: 0o666 less the process umask (read from
    /proc on Linux, so no thread ever sees a changed umask; elsewhere umask is set and restored once
    at import). ``mkstemp`` files are 0o600, which would hide results from the user's group."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that pick a format by
    name); when the block succeeds it is fsynced and renamed over ``path``; on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: object) -> Iterator[IO]:
    """``open`` for writing, atomically: the file appears at ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:  # type: ignore[call-overload]
        yield fh
        fh.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_chunks(path: str | Path, chunks: Iterable[bytes], max_bytes: int | None = None,
                        too_large: type[Exception] = ValueError) -> tuple[str, int]:
    """Stream ``chunks`` to ``path`` atomically; returns (sha256 hex, bytes). Raises ``too_large``
    as soon as more than ``max_bytes`` arrived (nothing is left on disk)."""
    digest, total = hashlib.sha256(), 0
    with atomic_open(path, "wb") as fh:
        for chunk in chunks:
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise too_large(f"more than {max_bytes} bytes")
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest(), total


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
