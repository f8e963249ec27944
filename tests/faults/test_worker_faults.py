"""Worker faults on ``autopaint serve`` (embedded: SQLite + kombu sqla broker) with the DEFAULT
lease (30 s, heartbeat every 10 s) and reconciler (every 15 s): (a) a pool child SIGKILLed mid-job,
(b) the whole worker (parent + child) SIGKILLed mid-job. The dead holder is a process of this host,
so its lease is ended at once (``expire_gone_leases``): recovery takes seconds, not a lease."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import Serve
from tests.faults.probes import child_pid, pid_alive, readyz_watch, wait_for, wait_running, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(tmp_path_factory.mktemp("worker-faults") / "state", workers=1, slow_s=6.0)
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def undisturbed(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The inputs and the result hashes of an undisturbed run of the same case."""
    folder = tmp_path_factory.mktemp("case")
    job = wait_terminal(serve, serve.submit(folder))
    assert job.state == "succeeded" and job.attempts == 1, serve.logs()
    assert job.manifest is not None
    return folder, dict(job.manifest["results"])


def _counter(serve: Serve, name: str) -> float:
    for line in httpx.get(f"{serve.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_sigkill_worker_child_mid_job(serve: Serve, undisturbed: tuple[Path, dict[str, str]]) -> None:
    folder, expected = undisturbed
    job_id = serve.submit(folder)
    pid = child_pid(wait_running(serve, job_id))
    assert pid not in serve.worker_pids()  # a pool child, not the worker's parent
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert serve.runs(job_id) == ["start"], "the job ended before the kill: machine too slow"
    wait_for(lambda: serve.job(job_id).attempts == 2, 90, "attempt 2 to start", every=0.2)
    recovery = time.monotonic() - killed
    job = wait_terminal(serve, job_id)
    print(f"\n(a) child SIGKILL: attempt 2 started {recovery:.1f} s after the kill (default lease 30 s)")
    assert job.state == "succeeded", (job.error_code, job.error_message, serve.logs())
    assert job.attempts == 2
    assert job.manifest is not None and job.manifest["results"] == expected  # same bytes as undisturbed
    assert serve.runs(job_id) == ["start", "start", "end"]
    assert recovery < 60


def test_b_sigkill_whole_worker_is_restarted(serve: Serve, undisturbed: tuple[Path, dict[str, str]]) -> None:
    folder, expected = undisturbed
    job_id = serve.submit(folder)
    child = child_pid(wait_running(serve, job_id))
    [parent] = serve.worker_pids()
    requeued_before = _counter(serve, 'autopaint_jobs_reconciled_total{action="requeued"}')
    with readyz_watch(serve) as seen:
        os.killpg(parent, signal.SIGKILL)  # the worker we started (through serve): parent + child
        killed = time.monotonic()
        wait_for(lambda: not pid_alive(parent) and not pid_alive(child), 10, "the worker to die")
        wait_for(lambda: serve.worker_pids() and serve.worker_pids()[0] != parent, 30, "a restarted worker")
        wait_for(lambda: seen and seen[-1][1] == 200 and seen[-1][0] > killed, 30, "ready again")
        wait_for(lambda: serve.job(job_id).attempts == 2, 90, "attempt 2 to start", every=0.2)
        recovered = time.monotonic() - killed
        job = wait_terminal(serve, job_id)
    statuses = [(status, workers) for t, status, workers in seen if t > killed]
    first_503 = next(i for i, (status, _) in enumerate(statuses) if status == 503)
    assert statuses[first_503][1] == 0
    assert any(status == 200 and workers == 1 for status, workers in statuses[first_503:])
    assert _counter(serve, "autopaint_worker_restarts_total") == 1
    assert _counter(serve, 'autopaint_jobs_reconciled_total{action="requeued"}') == requeued_before + 1
    print(f"\n(b) worker SIGKILL: restarted, readyz 503 -> 200, attempt 2 started {recovered:.1f} s "
          "after the kill (default lease 30 s)")
    assert job.state == "succeeded", (job.error_code, job.error_message, serve.logs())
    assert job.attempts == 2
    assert job.manifest is not None and job.manifest["results"] == expected
    assert serve.runs(job_id) == ["start", "start", "end"]
    assert recovered < 60
