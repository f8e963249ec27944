"""Atomic writes: a file appears complete or not at all; nothing half-written is left behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from autopaint.fsutil import atomic_open, atomic_write_bytes, atomic_write_chunks, sha256_file


def test_atomic_write_bytes_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.json"
    atomic_write_bytes(p, b"old")
    atomic_write_bytes(p, b"new contents")
    assert p.read_bytes() == b"new contents"
    assert [x.name for x in p.parent.iterdir()] == ["a.json"]


def test_failure_inside_block_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "mask.nii.gz"
    atomic_write_bytes(p, b"complete")
    with pytest.raises(RuntimeError), atomic_open(p, "wb") as fh:
        fh.write(b"half")
        raise RuntimeError("writer died")
    assert p.read_bytes() == b"complete"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_chunks_checksum_and_cap(tmp_path: Path) -> None:
    chunks = [b"a" * 1000, b"b" * 24]
    sha, n = atomic_write_chunks(tmp_path / "x.bin", iter(chunks))
    assert n == 1024 and sha == hashlib.sha256(b"".join(chunks)).hexdigest() == sha256_file(tmp_path / "x.bin")

    class TooBig(Exception):
        pass

    with pytest.raises(TooBig):
        atomic_write_chunks(tmp_path / "y.bin", iter(chunks), max_bytes=1000, too_large=TooBig)
    assert not (tmp_path / "y.bin").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.bin"]


def test_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    """Results must be readable by the user's group/others as a plain open() would make them."""
    import os
    import stat

    from autopaint.fsutil import FILE_MODE, atomic_write_bytes

    old = os.umask(0o022)
    os.umask(old)
    assert FILE_MODE == 0o666 & ~old
    p = atomic_write_bytes(tmp_path / "r.json", b"{}")
    assert stat.S_IMODE(p.stat().st_mode) == FILE_MODE
