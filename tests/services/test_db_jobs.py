"""The job-state repository on SQLite and (marked services) PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from autopaint.contracts import ArtifactRecord, JobState
from autopaint.db import Artifact, Job, leases, make_engine, make_session_factory, new_id, utcnow
from autopaint.db import jobs as repo
from autopaint.db.migrate import upgrade
from autopaint.progress import Stage


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _job(f: sessionmaker[Session], **kw: object) -> str:
    with f() as s:
        job = Job(id=new_id(), owner_key_id="k1", params={}, inputs={}, max_attempts=2, **kw)
        s.add(job)
        s.commit()
        return job.id


def test_lease_is_exclusive_and_counts_attempts(factory: sessionmaker[Session]) -> None:
    jid = _job(factory)
    with factory() as s1, factory() as s2:
        job = leases.lease_job(s1, jid, "w1", lease_s=60)
        assert job is not None and job.state == JobState.RUNNING and job.attempts == 1
        assert leases.lease_job(s2, jid, "w2", lease_s=60) is None  # live lease: a duplicate delivery
        assert leases.heartbeat(s1, jid, "w1", 60) is True
        assert leases.heartbeat(s2, jid, "w2", 60) is False


def test_concurrent_leases_only_one_wins(factory: sessionmaker[Session]) -> None:
    jid = _job(factory)
    results: list[object] = []

    def take(w: str) -> None:
        with factory() as s:
            results.append(leases.lease_job(s, jid, w, lease_s=60))

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_expired_lease_is_retaken_then_max_attempts_fails(factory: sessionmaker[Session]) -> None:
    jid = _job(factory)
    with factory() as s:
        assert leases.lease_job(s, jid, "w1", lease_s=60) is not None
        s.execute(update(Job).where(Job.id == jid).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
        job = leases.lease_job(s, jid, "w2", lease_s=60)  # the first worker died
        assert job is not None and job.attempts == 2 and job.lease_owner == "w2"
        s.execute(update(Job).where(Job.id == jid).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
        assert leases.lease_job(s, jid, "w3", lease_s=60) is None  # attempts used up
        job = s.get(Job, jid, populate_existing=True)
        assert job is not None and job.state == JobState.FAILED
        assert job.error_code == leases.MAX_ATTEMPTS_CODE


def test_requeue_or_fail(factory: sessionmaker[Session]) -> None:
    jid = _job(factory)
    with factory() as s:
        leases.lease_job(s, jid, "w1", 60)
        assert repo.requeue_or_fail(s, jid, "pipeline_error", "boom") == JobState.QUEUED
        leases.lease_job(s, jid, "w1", 60)
        assert repo.requeue_or_fail(s, jid, "pipeline_error", "boom") == JobState.FAILED
        job = s.get(Job, jid, populate_existing=True)
        assert job is not None and job.attempts == 2 and job.error_code == "pipeline_error"


def test_progress_timings_and_finish_are_idempotent(factory: sessionmaker[Session]) -> None:
    jid = _job(factory)
    with factory() as s:
        leases.lease_job(s, jid, "w1", 60)
        repo.set_progress(s, jid, Stage.preprocessing, 1, 2, "cases")
        repo.set_progress(s, jid, Stage.searching, 3, 10, "slices", circles_done=30, circles_total=100)
        arts = [ArtifactRecord(name="mask.nii.gz", storage_key=f"jobs/{jid}/results/mask.nii.gz",
                               sha256="a" * 64, bytes=10, content_type="application/gzip")]
        manifest = {"model": {"name": "m", "sha256": "b" * 64}}
        assert repo.finish_job(s, jid, manifest, arts, worker_id="w1") is True
        assert repo.finish_job(s, jid, manifest, arts) is False  # no longer RUNNING
        job = s.get(Job, jid, populate_existing=True)
        assert job is not None and job.state == JobState.SUCCEEDED and job.stage == Stage.done
        assert job.circles_done == 30 and job.model_sha256 == "b" * 64
        assert {"loading", "preprocessing", "searching"} <= set(job.timings)
        assert len(s.scalars(select(Artifact).where(Artifact.job_id == jid)).all()) == 1


def test_cancel_queued_and_running(factory: sessionmaker[Session]) -> None:
    queued, running = _job(factory), _job(factory)
    with factory() as s:
        assert repo.request_cancel(s, queued) == JobState.CANCELLED
        assert leases.lease_job(s, queued, "w1", 60) is None  # never starts
        leases.lease_job(s, running, "w1", 60)
        assert repo.cancel_requested(s, running) is False
        assert repo.request_cancel(s, running) == JobState.RUNNING
        assert repo.cancel_requested(s, running) is True
        repo.mark_cancelled(s, running)
        job = s.get(Job, running, populate_existing=True)
        assert job is not None and job.state == JobState.CANCELLED and job.finished_at is not None


def test_idempotency_key_unique_per_owner(factory: sessionmaker[Session]) -> None:
    _job(factory, idempotency_key="abc")
    with factory() as s:
        s.add(Job(id=new_id(), owner_key_id="k2", params={}, inputs={}, idempotency_key="abc"))
        s.commit()  # another owner may reuse the key
        s.add(Job(id=new_id(), owner_key_id="k1", params={}, inputs={}, idempotency_key="abc"))
        with pytest.raises(IntegrityError):
            s.commit()
