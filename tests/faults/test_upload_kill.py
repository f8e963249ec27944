"""(j) ``autopaint serve`` SIGKILLed in the middle of a large upload, then started again on the same
state folder (SQLite, one worker).

A client streams a 100 MiB NIfTI (a valid CT header declaring 512x512x200 int16, then the voxels) in
1 MiB pieces; once the API has spooled tens of MB of it into ``<state>/uploads/<id>/``, the serve
process (API + supervisor) is SIGKILLed by its PID. Then:

- its worker process group kills itself (the parent watcher): no worker of the state folder is left
  running (checked in /proc: no live process with that state folder's environment);
- the partial upload is still on disk (what the janitor is for);
- a new serve on the same folder takes the lock over, its upload janitor removes the partial file,
  it records and runs exactly its own worker, is ready and runs a job to the end.

Printed: the bytes spooled at the kill, the seconds to the old workers' exit, to ready and to the
job finished, the API's peak RSS during the upload.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Serve
from tests.faults.probes import (
    PIECE,
    inputs,
    pid_alive,
    spooled_bytes,
    start_slow_upload,
    state_processes,
    wait_for,
    wait_terminal,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "state", workers=1, slow_s=2.0)
    try:
        yield s
    finally:
        s.stop()


def test_j_serve_sigkill_mid_upload_then_restart(serve: Serve, tmp_path: Path) -> None:
    serve.start()
    old_workers = serve.worker_pids()
    assert old_workers and all(pid_alive(p) for p in old_workers)
    t, outcome = start_slow_upload(serve)
    wait_for(lambda: spooled_bytes(serve.state) > 30 * PIECE, 120, "30 MiB of the upload spooled", every=0.05)
    spooled = spooled_bytes(serve.state)
    rss = serve.peak_rss_mb()
    serve.kill(signal.SIGKILL)
    t_kill = time.monotonic()
    assert serve.proc is not None
    serve.proc.wait(timeout=30)
    t.join(timeout=60)
    assert outcome and outcome[0] != 202, outcome  # the client saw the connection go
    wait_for(lambda: not state_processes(serve.state), 30, "no process of the state folder left")
    workers_gone_s = time.monotonic() - t_kill
    partial = spooled_bytes(serve.state)
    assert partial > 0  # the killed API could not clean up: the next serve's janitor must

    t_restart = time.monotonic()
    serve.start()  # the same state folder: takes the dead serve's lock over
    ready_s = time.monotonic() - t_restart
    assert spooled_bytes(serve.state) == 0 and not list((serve.state / "uploads").iterdir())
    new_workers = serve.worker_pids()
    assert new_workers and not set(new_workers) & set(old_workers) and all(pid_alive(p) for p in new_workers)
    assert serve.proc is not None
    procs = state_processes(serve.state)
    strays = {pid for pid, pgid in procs.items() if pid != serve.proc.pid and pgid not in new_workers}
    assert not strays, (strays, procs)  # only the new serve and its own worker group
    assert serve.readyz()[1].get("workers") == 1
    case = tmp_path / "case"
    inputs(case)
    job = wait_terminal(serve, serve.submit(case), timeout=120)
    done_s = time.monotonic() - t_restart
    print(f"\n(j) serve SIGKILL mid-upload ({spooled / 2**20:.0f} MiB of 100 MiB spooled, client saw {outcome[0]}; "
          f"API peak RSS {rss:.0f} MiB): old worker group gone {workers_gone_s:.1f} s after the kill, "
          f"{partial / 2**20:.0f} MiB partial upload left; restart ready in {ready_s:.1f} s with the partial upload "
          f"removed and 1 worker ({len(procs)} processes of the folder), a new job {job.state.value} "
          f"{done_s:.1f} s after the restart")
    assert job.state == "succeeded", (job.error_code, serve.logs())
