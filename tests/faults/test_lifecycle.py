"""Process lifecycle of ``autopaint serve`` (embedded, two workers, lease 10 s): (d) the same job
delivered three times runs once, (e) SIGTERM lets the running job finish (warm shutdown), (f) a
second serve on the same state folder is refused, a SIGKILLed serve leaves no orphan worker, and the
next serve takes the stale lock over, reuses the API key and finishes the interrupted job, (g) a
frozen worker loses its lease to the other worker and its late result is not stored."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopaint.contracts import TASK_RUN_JOB
from autopaint.settings import Settings
from tests.faults.harness import ROOT, Serve
from tests.faults.probes import all_jobs, child_pid, pid_alive, wait_for, wait_running, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
LEASE = {"AUTOPAINT_LEASE_S": "10"}


@pytest.fixture
def case(tmp_path: Path) -> Path:
    return tmp_path / "case"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "state", workers=2, slow_s=4.0, env=LEASE)
    try:
        yield s
    finally:
        s.stop()


def _producer(serve: Serve) -> object:
    from services.worker.app import create_celery_app

    settings = Settings(state_dir=serve.state, _env_file=None)  # type: ignore[call-arg]
    return create_celery_app(settings)


def test_d_duplicate_delivery_runs_once(serve: Serve, case: Path) -> None:
    serve.start()
    job_id = serve.submit(case)  # one message from the API ...
    producer = _producer(serve)
    for _ in range(2):  # ... and the same job id twice more (a publisher retry, a broker re-delivery)
        producer.send_task(TASK_RUN_JOB, args=[job_id], queue="cpu")  # type: ignore[attr-defined]
    job = wait_terminal(serve, job_id)
    assert job.state == "succeeded", serve.logs()
    # both duplicates are consumed and dropped (the second worker waits out the first one's lease)
    wait_for(lambda: serve.logs(100_000).count("'skipped'") >= 2, 60, "both duplicates dropped", every=0.5)
    assert serve.runs(job_id) == ["start", "end"]
    job = serve.job(job_id)
    assert job.attempts == 1 and job.state == "succeeded"
    assert job.manifest is not None and sorted(job.manifest["results"]) == ["mask.nii.gz", "report.json"]


def test_e_sigterm_warm_shutdown_finishes_running_job(serve: Serve, case: Path) -> None:
    serve.start()
    job_id = serve.submit(case)
    child = child_pid(wait_running(serve, job_id))
    parents = serve.worker_pids()
    t0 = time.monotonic()
    serve.kill(signal.SIGTERM)
    assert serve.proc is not None
    code = serve.proc.wait(timeout=60)
    print(f"\n(e) SIGTERM: serve exited {code} after {time.monotonic() - t0:.1f} s")
    job = serve.job(job_id)
    assert job.state == "succeeded", (job.state, serve.logs())
    assert job.attempts == 1 and serve.runs(job_id) == ["start", "end"]
    assert not any(pid_alive(p) for p in [child, *parents])


def test_f_one_serve_per_state_folder_and_no_orphans(serve: Serve, case: Path) -> None:
    serve.start()
    key = serve.key
    job_id = serve.submit(case)
    child = child_pid(wait_running(serve, job_id))
    parents = serve.worker_pids()
    # a second serve on the same folder: exit 2, one clear line, nothing started
    second = subprocess.run(serve.cmd(), cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=serve.env_vars())
    assert second.returncode == 2, second
    assert "another autopaint serve (pid" in second.stderr and str(serve.state) in second.stderr
    assert serve.readyz()[0] == 200
    # SIGKILL serve: its workers (parents and the job's pool child) die with it
    serve.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in [child, *parents]), 15, "the orphaned workers to exit")
    print(f"\n(f) serve SIGKILL: its {len(parents)} workers gone {time.monotonic() - killed:.1f} s later")
    # the next serve takes the stale lock over, keeps the key and finishes the interrupted job
    serve.start()
    assert serve.key == key
    job = wait_terminal(serve, job_id, timeout=120)
    assert job.state == "succeeded" and job.attempts == 2, (job.error_code, serve.logs())
    assert serve.runs(job_id) == ["start", "start", "end"]
    from sqlalchemy import func, select

    from autopaint.db import ApiKey, make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{serve.state / 'autopaint.db'}")
    with make_session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(ApiKey)) == 1  # no new key per start
    engine.dispose()
    assert [j.state.value for j in all_jobs(serve.state)] == ["succeeded"]


def test_g_frozen_worker_loses_its_lease(serve: Serve, case: Path) -> None:
    """A pool child frozen (SIGSTOP: alive but silent, like a hung process or one cut off from the
    database) keeps no lease: it stops renewing, the reconciler re-queues the job when the lease
    (10 s) runs out, the other worker runs attempt 2; resumed, the frozen run finds its lease gone,
    stops and stores nothing. This is the path a worker on another host takes (its death cannot be
    seen from here, only its lease's expiry)."""
    serve.start()
    job_id = serve.submit(case)
    child = child_pid(wait_running(serve, job_id))
    os.kill(child, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        wait_for(lambda: serve.job(job_id).attempts == 2, 60, "attempt 2 on the other worker", every=0.2)
        recovery = time.monotonic() - frozen
        assert serve.job(job_id).error_code == "worker_lost"
    finally:
        os.kill(child, signal.SIGCONT)
    job = wait_terminal(serve, job_id)
    print(f"\n(g) frozen child: attempt 2 started {recovery:.1f} s after the freeze (lease 10 s, "
          f"reconciler every 5 s); runs {serve.runs(job_id)}")
    assert job.state == "succeeded" and job.attempts == 2, (job.error_code, serve.logs())
    assert job.manifest is not None and job.manifest["attempt"] == 2
    wait_for(lambda: any(r.startswith("cancelled") for r in serve.runs(job_id)), 30,
             "the resumed run to stop")
    assert serve.runs(job_id).count("end") == 1  # one result, written by attempt 2
    assert recovery < 30
