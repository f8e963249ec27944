"""Local storage: atomic writes with sha256, the size cap, key checks, prefix deletes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from autopaint.storage import LocalStorage, StorageError, UploadTooLarge, input_key, job_prefix, result_key


def test_put_stream_hash_and_roundtrip(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path / "s")
    data = [b"abc" * 1000, b"xyz" * 7]
    sha, n = st.put_stream(input_key("j1", "ct"), data)
    assert sha == hashlib.sha256(b"".join(data)).hexdigest() and n == 3021
    assert b"".join(st.iter_chunks("jobs/j1/inputs/ct.nii.gz", 100)) == b"".join(data)
    assert st.exists("jobs/j1/inputs/ct.nii.gz") and st.size("jobs/j1/inputs/ct.nii.gz") == n
    src = tmp_path / "r.csv"
    src.write_bytes(b"a,b\n")
    assert st.put_file(result_key("j1", "lesions.csv"), src)[1] == 4
    assert st.delete_prefix(job_prefix("j1")) == 2
    assert not st.exists("jobs/j1/inputs/ct.nii.gz")


def test_cap_leaves_nothing(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path / "s")
    with pytest.raises(UploadTooLarge):
        st.put_stream("jobs/j2/inputs/ct.nii.gz", (b"x" * 100 for _ in range(10)), max_bytes=550)
    assert not any(p.is_file() for p in (tmp_path / "s").rglob("*"))


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "jobs/../../x", "jobs/a b", "jobs//x", ""])
def test_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put_stream(key, [b"x"])
