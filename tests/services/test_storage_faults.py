"""Storage faults (issue #15, item 4): a full or read-only storage is answered with our JSON error,
never a plain-text 500; ``/readyz`` probes the storage; a worker that cannot store its results fails
the job at once (no re-runs) and leaves no result object without its artifact row.

How the faults are made: the tests run as root in a container without a small filesystem to fill
(no tmpfs mount; root ignores a read-only ``chmod``), so the storage is a real ``LocalStorage``
whose chunk stream raises ``OSError(ENOSPC)`` / ``OSError(EROFS)`` *inside* the real atomic write
(:class:`FaultyStorage`): the errno mapping, the temp-file removal and everything above it are the
production code.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from autopaint.contracts import JobState
from autopaint.db import Job, make_engine, make_session_factory, new_id
from autopaint.settings import Settings
from autopaint.storage import LocalStorage, StorageFull, input_key, store_results
from services.worker.context import WorkerContext
from services.worker.runner import execute_job
from tests.services.apikit import Api, write_pair


class FaultyStorage(LocalStorage):
    """``LocalStorage`` whose writes of keys containing ``fail_on`` (any key when empty) raise
    ``OSError(err)`` after the first chunk, from inside ``atomic_write_chunks``."""

    def __init__(self, root: Path, err: int, fail_on: str = "") -> None:
        super().__init__(root)
        self.err, self.fail_on = err, fail_on

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        if self.fail_on not in key:
            return super().put_stream(key, chunks, max_bytes)

        def failing() -> Iterator[bytes]:
            for chunk in chunks:
                yield chunk
                raise OSError(self.err, os.strerror(self.err))
            raise OSError(self.err, os.strerror(self.err))

        return super().put_stream(key, failing(), max_bytes)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def api(sqlite_settings: Settings) -> Iterator[Api]:
    a = Api(sqlite_settings)
    # 500s are answered by our handler; don't re-raise them into the test
    a.client = type(a.client)(a.app, raise_server_exceptions=False)
    yield a
    a.close()


@pytest.mark.parametrize(("err", "status", "code"), [(errno.ENOSPC, 507, "storage_full"),
                                                     (errno.EDQUOT, 507, "storage_full"),
                                                     (errno.EROFS, 503, "storage_unavailable"),
                                                     (errno.EACCES, 503, "storage_unavailable")])
def test_submit_on_faulty_storage_answers_json(api: Api, tmp_path: Path, err: int, status: int, code: str) -> None:
    ct, pet = write_pair(tmp_path)
    root = api.settings.storage_dir
    assert root is not None
    api.ctx.storage = FaultyStorage(root, err)
    r = api.submit({"ct": ct, "pet": pet})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == code and "Traceback" not in r.text
    assert r.headers["Retry-After"]
    with api.sessions() as s:
        assert s.query(Job).count() == 0
    assert _files(root) == []  # no temp file, no partial input
    assert list((api.settings.state_dir / "uploads").iterdir()) == []


def test_bare_oserror_and_unexpected_errors_answer_json(api: Api) -> None:
    @api.app.get("/boom/{kind}")
    def boom(kind: str) -> None:
        if kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        if kind == "erofs":
            raise OSError(errno.EROFS, "Read-only file system")
        raise RuntimeError("secret internal detail")

    r = api.client.get("/boom/enospc")
    assert (r.status_code, r.json()["code"]) == (507, "storage_full")
    r = api.client.get("/boom/erofs")
    assert (r.status_code, r.json()["code"]) == (503, "storage_unavailable")
    r = api.client.get("/boom/other")
    assert r.status_code == 500
    assert {k: r.json()[k] for k in ("code", "detail", "status")} == {"code": "internal_error", "detail": "internal server error; the server logged the details", "status": 500}
    assert "secret" not in r.text


def test_database_connection_loss_answers_503_json(api: Api) -> None:
    """A query whose connection dropped (pg_terminate_backend, failover) is a retryable 503, not a 500."""
    @api.app.get("/db/{kind}")
    def db_fault(kind: str) -> None:
        if kind == "dropped":
            raise DBAPIError("SELECT 1", {}, Exception("server closed the connection unexpectedly"),
                             connection_invalidated=True)
        if kind == "operational":
            raise OperationalError("SELECT 1", {}, Exception("database is locked"))
        raise DBAPIError("SELECT 1", {}, Exception("secret constraint detail"))

    for kind in ("dropped", "operational"):
        r = api.client.get(f"/db/{kind}")
        assert (r.status_code, r.json()["code"], r.headers["retry-after"]) == (503, "database_unavailable", "1")
    r = api.client.get("/db/other")
    assert r.status_code == 500
    assert {k: r.json()[k] for k in ("code", "detail", "status")} == {"code": "internal_error", "detail": "internal server error; the server logged the details", "status": 500}
    assert "secret" not in r.text


def test_readyz_probes_storage(api: Api) -> None:
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["storage"] is True
    root = api.settings.storage_dir
    assert root is not None
    api.ctx.storage = FaultyStorage(root, errno.EROFS)
    r = api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["storage"] is False and r.json()["ready"] is False
    assert _files(root) == []  # the probe leaves nothing behind


def test_store_results_deletes_partial_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mask.nii.gz").write_bytes(b"m" * 1000)
    (out / "report.json").write_bytes(b"{}")
    storage = FaultyStorage(tmp_path / "storage", errno.ENOSPC, fail_on="report.json")
    with pytest.raises(StorageFull):
        store_results(storage, "job1", out, ["mask.nii.gz", "report.json"])
    assert _files(tmp_path / "storage") == []


def test_worker_fails_job_once_on_full_storage(sqlite_settings: Settings, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while storing results: FAILED storage_full after one attempt (no 3 re-runs), and
    the results put before the failure are deleted; the inputs are kept."""
    monkeypatch.setenv("AUTOPAINT_TEST_PIPELINE", "tests.services.fake_pipelines:slow")
    monkeypatch.setenv("AUTOPAINT_TEST_SLOW_S", "0")
    runlog = tmp_path / "runlog.txt"
    monkeypatch.setenv("AUTOPAINT_TEST_RUNLOG", str(runlog))
    root = sqlite_settings.storage_dir
    assert root is not None
    sessions = make_session_factory(make_engine(sqlite_settings.database_url))
    plain = LocalStorage(root)
    job_id = new_id()
    key = input_key(job_id, "ct")
    sha, size = plain.put_stream(key, [b"payload" * 100])
    with sessions() as s:
        s.add(Job(id=job_id, owner_key_id="o", state=JobState.QUEUED, params={},
                  inputs={"ct": {"key": key, "sha256": sha, "bytes": size}}, max_attempts=3, queue="gpu"))
        s.commit()
    ctx = WorkerContext(sqlite_settings)
    ctx._ensure()
    ctx._storage = FaultyStorage(root, errno.ENOSPC, fail_on="report.json")  # mask.nii.gz is put first
    try:
        outcome = execute_job(ctx, job_id, "w1")
    finally:
        ctx.dispose()
    assert outcome.status == "failed" and outcome.retry_in_s is None
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.state, job.error_code, job.attempts) == (JobState.FAILED, "storage_full", 1)
    assert [p.relative_to(root).as_posix() for p in _files(root)] == [key]
    assert runlog.read_text().count(" start ") == 1
