"""(h) PostgreSQL connections dropped mid-job, during 50 polls: ``autopaint serve`` (API + one worker)
on a private PostgreSQL database of the shared server and a private ``redis-server`` broker (the
production pair), lease 10 s. While the job runs, every backend of that database is terminated twice
(``pg_terminate_backend``: API pool, reconciler, worker heartbeat and progress writes all lose their
connection at once) while a client polls ``GET /v1/jobs/{id}`` 50 times.

Measured: how many polls got a 5xx (bounded: every pool re-connects on checkout, ``pool_pre_ping``
in ``autopaint.db.session``, so only a query in flight at the very moment of a drop can fail, and
then with our JSON 503 ``database_unavailable`` body and ``Retry-After``, never a 500), seconds from the last drop to a 200 poll and a 200 ``/readyz``; the job finishes succeeded with its attempts recorded; a job submitted after it
runs too; nothing is left queued or running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import PgDatabase, RedisServer, Serve
from tests.faults.probes import inputs, poll_job, readyz_watch, wait_for, wait_running, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

POLLS = 50
MAX_5XX = 3


@pytest.fixture
def pg_serve(tmp_path: Path) -> Iterator[tuple[Serve, PgDatabase]]:
    if not PgDatabase.available():
        pytest.skip("PostgreSQL (127.0.0.1:5432) not reachable")
    db = PgDatabase().create()
    redis = RedisServer(tmp_path / "redis")
    s = Serve(tmp_path / "state", workers=1, slow_s=8.0,
              env={"AUTOPAINT_DATABASE_URL": db.url, "AUTOPAINT_BROKER_URL": redis.url, "AUTOPAINT_LEASE_S": "10"})
    try:
        redis.start()
        yield s.start(), db
    finally:
        s.stop()
        redis.kill()
        db.drop()


def test_h_postgres_connections_dropped_mid_job(pg_serve: tuple[Serve, PgDatabase], tmp_path: Path) -> None:
    serve, db = pg_serve
    case = tmp_path / "case"
    inputs(case)
    job_id = serve.submit(case)
    wait_running(serve, job_id)
    with readyz_watch(serve, every=0.2) as rz:
        seen, poller = poll_job(serve, job_id, POLLS, every=0.1)
        time.sleep(0.5)
        dropped = [db.terminate_backends()]
        time.sleep(2.0)
        dropped.append(db.terminate_backends())
        last_drop = time.monotonic()
        poller.join(timeout=120)
        assert not poller.is_alive()
        wait_for(lambda: any(t > last_drop and status == 200 for t, status, _ in rz), 60, "readyz after the drops")
    ready_s = min(t for t, status, _ in rz if t > last_drop and status == 200) - last_drop
    not_ready = sum(status != 200 for _, status, _ in rz)
    ok_after = [t for t, status, _ in seen if status == 200 and t > last_drop]
    recovered = (min(ok_after) - last_drop) if ok_after else ready_s
    job = wait_terminal(serve, job_id, timeout=120)
    errors = [(status, code) for _, status, code in seen if status != 200]
    five = [e for e in errors if e[0] >= 500 or e[0] == 0]
    print(f"\n(h) PostgreSQL backends terminated twice ({dropped} connections) during {len(seen)} polls: "
          f"{len(five)} 5xx {five}; first 200 poll {recovered:.2f} s after the last drop, /readyz 200 after "
          f"{ready_s:.2f} s ({not_ready} of {len(rz)} readyz polls not 200); job {job.state.value}, attempts {job.attempts}, peak API RSS {serve.peak_rss_mb():.0f} MiB")
    assert len(seen) == POLLS and sum(dropped) >= 2
    assert all(status >= 400 for status, _ in errors)  # no connection error: the API process stayed up
    assert len(five) <= MAX_5XX, errors
    assert all(code == "database_unavailable" for _, code in five)  # retryable 503 JSON, never a 500
    assert job.state == "succeeded", (job.error_code, job.error_message, serve.logs())
    assert job.attempts >= 1 and job.manifest is not None and job.manifest.get("attempt") == job.attempts
    after = wait_terminal(serve, serve.submit(case), timeout=120)
    assert after.state == "succeeded", (after.error_code, serve.logs())
    assert not [j.id for j in serve.jobs() if not j.state.terminal]
