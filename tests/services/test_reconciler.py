"""Recovery pieces without servers (SQLite; the repository also on PostgreSQL, marked services):
the reconciler's repository functions and one pass, /readyz with a worker count, the embedded
service's supervisor, state-folder lock, stale-worker cleanup and kept API key. The same pieces
with real processes killed mid-job: tests/faults (``-m faults``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from autopaint.contracts import JobState
from autopaint.db import Job, leases, make_engine, make_session_factory, new_id, utcnow
from autopaint.db import jobs as repo
from autopaint.db.migrate import upgrade
from autopaint.progress import Stage
from autopaint.settings import Settings
from services import embedded, embedded_workers
from services.api.reconciler import Reconciler
from tests.services.apikit import Api, FakePublisher


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(url)
    else:  # a database of its own: the reconciler scans every row, other tests' jobs would show up
        url = request.getfixturevalue("make_pg_database")()
        upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _job(f: sessionmaker[Session], queue: str = "q", max_attempts: int = 2, age_s: float = 0.0) -> str:
    with f() as s:
        job = Job(id=new_id(), owner_key_id="k1", params={}, inputs={}, max_attempts=max_attempts,
                  queue=queue, created_at=utcnow() - timedelta(seconds=age_s))
        s.add(job)
        s.commit()
        return job.id


def _expire(f: sessionmaker[Session], job_id: str) -> None:
    with f() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()


def test_expired_lease_is_requeued_then_failed(factory: sessionmaker[Session]) -> None:
    jid = _job(factory, queue="gpu-x")
    live = _job(factory)
    with factory() as s:
        assert leases.lease_job(s, jid, "host:1", 60) is not None
        assert leases.lease_job(s, live, "host:2", 60) is not None
    _expire(factory, jid)
    with factory() as s:
        out = leases.reclaim_expired(s)
        assert out.requeued == [(jid, "gpu-x")] and not out.failed  # the live lease is untouched
        job = s.get(Job, jid, populate_existing=True)
        assert job is not None and job.state == JobState.QUEUED and job.stage == Stage.queued
        assert job.error_code == leases.WORKER_LOST_CODE and "host:1" in (job.error_message or "")
        assert job.lease_owner is None and job.attempts == 1
        assert leases.heartbeat(s, jid, "host:1", 60) is False  # the dead worker cannot renew it
        assert leases.lease_job(s, jid, "host:3", 60) is not None  # attempt 2
    _expire(factory, jid)
    with factory() as s:
        out = leases.reclaim_expired(s)
        assert out.failed == [jid] and not out.requeued
        job = s.get(Job, jid, populate_existing=True)
        assert job is not None and job.state == JobState.FAILED and job.error_code == leases.MAX_ATTEMPTS_CODE
        assert job.finished_at is not None and job.lease_owner is None
        assert leases.reclaim_expired(s).requeued == []


def test_lease_of_a_holder_gone_from_this_host_ends_at_once(factory: sessionmaker[Session]) -> None:
    gone, here, remote = _job(factory), _job(factory), _job(factory)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    owner = leases.lease_owner_id(proc.pid)
    assert owner.endswith(f":{proc.pid}") and leases.owner_is_gone(owner)
    assert not leases.owner_is_gone(leases.lease_owner_id())  # this process runs
    assert not leases.owner_is_gone("elsewhere@4026531836:1") and not leases.owner_is_gone("host:1")
    with factory() as s:
        leases.lease_job(s, gone, owner, 60)
        leases.lease_job(s, here, leases.lease_owner_id(), 60)
        leases.lease_job(s, remote, "elsewhere@4026531836:1", 60)
        assert leases.expire_gone_leases(s) == [gone]
        assert leases.expire_gone_leases(s, here) == []
        job = leases.lease_job(s, gone, "w2", 60)  # taken over now, not one lease later
        assert job is not None and job.attempts == 2 and job.lease_owner == "w2"
        repo.set_progress(s, gone, Stage.searching, 5, 10, "slices", worker_id=owner)  # a late writer
        job = s.get(Job, gone, populate_existing=True)
        assert job is not None and job.stage == Stage.loading and job.progress_done == 0


def test_expired_lease_with_pending_cancel_is_cancelled(factory: sessionmaker[Session]) -> None:
    jid = _job(factory)
    with factory() as s:
        leases.lease_job(s, jid, "w", 60)
        assert repo.request_cancel(s, jid) == JobState.RUNNING
    _expire(factory, jid)
    with factory() as s:
        assert leases.reclaim_expired(s).cancelled == [jid]
        assert s.get(Job, jid, populate_existing=True).state == JobState.CANCELLED  # type: ignore[union-attr]


def test_stale_queued_jobs_are_claimed_once_per_period(factory: sessionmaker[Session]) -> None:
    old, fresh = _job(factory, age_s=120), _job(factory)
    other_queue = _job(factory, queue="other", age_s=120)
    with factory() as s:
        assert leases.queued_queues(s, 60) == {"q": 1, "other": 1}
        assert leases.claim_stale_queued(s, 60, {"q"}) == [(old, "q")]
        assert leases.claim_stale_queued(s, 60, {"q"}) == []  # stamped: not again within the period
        assert leases.claim_stale_queued(s, 0.0, {"q"}, limit=1) in ([(old, "q")], [(fresh, "q")])
        assert (other_queue, "other") in leases.claim_stale_queued(s, 60)


def test_requeued_job_counts_as_queued_from_now(factory: sessionmaker[Session]) -> None:
    jid = _job(factory, age_s=600)
    with factory() as s:
        leases.lease_job(s, jid, "w", 60)
        assert repo.requeue_or_fail(s, jid, "worker_error", "boom") == JobState.QUEUED
        assert leases.claim_stale_queued(s, 60) == []  # its retry message is on its way


class _Publisher(FakePublisher):
    def __init__(self, lengths: dict[str, int | None]) -> None:
        super().__init__()
        self.lengths = lengths

    def queue_length(self, queue: str) -> int | None:
        return self.lengths.get(queue, 0)


def test_reconciler_pass(sqlite_settings: Settings) -> None:
    s = sqlite_settings.model_copy(update={"lease_s": 10, "reconcile_batch": 3})
    engine = make_engine(s.database_url)
    f = make_session_factory(engine)
    dead = _job(f, queue="a")
    with f() as session:
        leases.lease_job(session, dead, "w", 10)
    _expire(f, dead)
    lost = _job(f, queue="a", age_s=30)  # > 2 x lease: its message is gone (queue a is empty)
    backlog = _job(f, queue="b", age_s=30)  # queue b still holds messages: it waits its turn
    unknown = _job(f, queue="c", age_s=30)  # the broker cannot say: next pass
    extra = [_job(f, queue="a", age_s=30) for _ in range(3)]
    pub = _Publisher({"a": 0, "b": 2, "c": None})
    rec = Reconciler(s, f, pub)
    done = rec.run_once()
    assert done.requeued == 1 and done.republished == 2  # the batch bounds a pass (3 jobs)
    assert pub.published[:2] == [(dead, "a"), (lost, "a")]
    assert not {backlog, unknown} & {j for j, _ in pub.published}
    assert rec.run_once().republished == 2  # the rest of queue a, each job once
    assert {j for j, _ in pub.published} == {dead, lost, *extra}
    assert rec.run_once().republished == 0  # nothing more until a period has passed
    engine.dispose()


def test_reconciler_runs_in_the_api_lifespan(sqlite_settings: Settings) -> None:
    from fastapi.testclient import TestClient

    s = sqlite_settings.model_copy(update={"reconcile_s": 0.2})
    api = Api(s)
    with TestClient(api.app):
        rec = api.app.state.reconciler
        deadline = time.monotonic() + 10
        while rec.passes < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert rec._thread is None  # stopped at shutdown
    api.close()


def test_readyz_reports_workers(sqlite_settings: Settings) -> None:
    api = Api(sqlite_settings)
    try:
        assert api.client.get("/readyz").json() == {"ready": True, "database": True, "broker": True, "storage": True}
        api.ctx.worker_status = lambda: 0
        r = api.client.get("/readyz")
        assert r.status_code == 503 and r.json()["workers"] == 0 and r.json()["ready"] is False
        api.ctx.worker_status = lambda: 2
        assert api.client.get("/readyz").json() == {"ready": True, "database": True, "broker": True, "workers": 2, "storage": True}
    finally:
        api.close()


def test_settings_defaults_tie_recovery_to_the_lease() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.lease_s, s.reconcile_every_s, s.stale_queued_after_s) == (30, 15.0, 60.0)
    assert s.visibility_timeout_s > s.hard_time_limit_s > s.lease_s
    with pytest.raises(ValueError, match="lease_s"):
        Settings(lease_s=4000, _env_file=None)  # type: ignore[call-arg]


# --- the embedded service: supervisor, lock, stale workers, API key -----------------------------


def _sleeper(seconds: float = 60) -> embedded_workers.WorkerProcess:
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                            start_new_session=True)
    return embedded_workers.WorkerProcess(proc, ["q"])


def test_supervisor_restarts_a_dead_worker_then_gives_up(sqlite_settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_workers, "RESTART_BACKOFF_S", (0.1,))
    monkeypatch.setattr(embedded_workers, "MAX_RESTARTS", 2)
    svc = embedded.EmbeddedService(sqlite_settings, workers=1, supervise_every_s=0.05)
    spawned: list[embedded_workers.WorkerProcess] = []

    def spawn(i: int) -> embedded_workers.WorkerProcess:
        spawned.append(_sleeper())
        return spawned[-1]

    monkeypatch.setattr(svc, "_spawn", spawn)
    svc.start_workers()
    try:
        assert svc.workers_alive() == 1
        first = svc.worker_procs[0]
        recorded = json.loads((sqlite_settings.state_dir / embedded.PIDS_FILE).read_text())
        assert [e["pid"] for e in recorded] == [first.pid]
        for n in (1, 2):
            os.kill(svc.worker_procs[0].pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while svc.restarts < n or svc.workers_alive() != 1:
                assert time.monotonic() < deadline, "not restarted"
                time.sleep(0.02)
        assert svc.worker_procs[0].pid != first.pid and len(spawned) == 3
        os.kill(svc.worker_procs[0].pid, signal.SIGKILL)  # a third death within the window
        time.sleep(1.0)
        assert svc.workers_alive() == 0 and svc.restarts == 2 and len(spawned) == 3  # given up
    finally:
        svc.stop_workers()
    assert all(w.proc.poll() is not None for w in spawned)
    assert not (sqlite_settings.state_dir / embedded.PIDS_FILE).exists()


def test_state_folder_lock(tmp_path: Path) -> None:
    (tmp_path / embedded.LOCK_FILE).write_text("999999\n")  # a dead serve's lock file: taken over
    fd = embedded.lock_state_dir(tmp_path)
    try:
        with pytest.raises(embedded.StateDirBusy, match=rf"pid {os.getpid()}\) is using the state folder"):
            embedded.lock_state_dir(tmp_path)
    finally:
        os.close(fd)
    os.close(embedded.lock_state_dir(tmp_path))


def test_serve_refuses_a_locked_state_folder(tmp_path: Path) -> None:
    fd = embedded.lock_state_dir(tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPAINT_")}
        r = subprocess.run([sys.executable, "-m", "services.cli", "serve", "--state-dir", str(tmp_path),
                            "--port", "1"], capture_output=True, text=True, timeout=120, env=env)
    finally:
        os.close(fd)
    assert r.returncode == 2, r
    assert r.stderr.strip().splitlines() == [
        f"autopaint serve: another autopaint serve (pid {os.getpid()}) is using the state folder "
        f"{tmp_path}; stop it first or pass another --state-dir"]


def test_stale_workers_are_killed_at_start(tmp_path: Path) -> None:
    stale, other = _sleeper(), _sleeper()
    try:
        entries = [{"pid": stale.pid, "start": embedded._start_time(stale.pid)},
                   {"pid": other.pid, "start": "0"}]  # a PID reused by another process: spared
        (tmp_path / embedded.PIDS_FILE).write_text(json.dumps(entries))
        assert embedded.kill_stale_workers(tmp_path) == 1
        assert stale.proc.wait(timeout=10) == -signal.SIGKILL
        assert other.alive()
    finally:
        stale.stop(timeout=0)
        other.stop(timeout=0)


def test_worker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """``watch_parent``: a middle process starts a watching grandchild, then is SIGKILLed."""
    code = ("import os, subprocess, sys, time\n"
            "env = {**os.environ, 'AUTOPAINT_PARENT_PID': str(os.getpid())}\n"
            "p = subprocess.Popen([sys.executable, '-c', 'from services.embedded_workers import watch_parent; "
            "assert watch_parent(0.1); import time; time.sleep(60)'], env=env, start_new_session=True)\n"
            "print(p.pid, flush=True); time.sleep(60)\n")
    middle = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert middle.stdout is not None
        child = int(middle.stdout.readline())
        time.sleep(0.5)
        assert Path(f"/proc/{child}").exists()
        os.kill(middle.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.05)
    finally:
        middle.kill()
        middle.wait(timeout=10)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_embedded_api_key_is_kept_and_reused(sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.api.auth import revoke_api_key

    monkeypatch.delenv(embedded.API_KEY_ENV, raising=False)
    key = embedded.ensure_api_key(sqlite_settings)
    path = embedded.api_key_file(sqlite_settings)
    assert path.read_text().strip() == key and (path.stat().st_mode & 0o777) == 0o600
    assert embedded.ensure_api_key(sqlite_settings) == key  # the next start: the same key
    engine = make_engine(sqlite_settings.database_url)
    with make_session_factory(engine)() as s:
        assert revoke_api_key(s, key[:9]) == 1
    engine.dispose()
    fresh = embedded.ensure_api_key(sqlite_settings)  # revoked: a new one replaces it
    assert fresh != key and path.read_text().strip() == fresh
