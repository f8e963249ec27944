"""(c) The Redis broker killed (SIGKILL) and restarted mid-job: ``autopaint serve`` on a private
``redis-server`` (free port, AOF on, as in docker-compose) and a SQLite database, lease 10 s.

The running job keeps its DB lease through the outage (``worker_cancel_long_running_tasks_on_
connection_loss`` is off) and finishes; a submit during the outage answers 503 (its row FAILED
``broker_unavailable``, nothing queued); after the restart the worker reconnects and new jobs run;
at the end no job is left QUEUED or RUNNING.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from autopaint.client import ApiError
from tests.faults.harness import RedisServer, Serve
from tests.faults.probes import all_jobs, inputs, wait_for, wait_running, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


@pytest.fixture
def redis_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, RedisServer]]:
    tmp = tmp_path_factory.mktemp("redis-fault")
    redis = RedisServer(tmp / "redis")
    redis.start()
    s = Serve(tmp / "state", workers=1, slow_s=6.0,
              env={"AUTOPAINT_BROKER_URL": redis.url, "AUTOPAINT_LEASE_S": "10"})
    try:
        yield s.start(), redis
    finally:
        s.stop()
        redis.kill()


def test_c_redis_sigkill_and_restart_mid_job(redis_serve: tuple[Serve, RedisServer],
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    serve, redis = redis_serve
    folder = tmp_path_factory.mktemp("case")
    inputs(folder)
    job_id = serve.submit(folder)
    wait_running(serve, job_id)
    redis.kill()
    killed = time.monotonic()
    wait_for(lambda: serve.readyz()[0] == 503, 20, "readyz to see the broker down")
    with serve.client() as c, pytest.raises(ApiError) as err:
        c.submit(ct=folder / "ct.nii.gz", pet=folder / "pet.nii.gz", params={"suv_already": True})
    assert err.value.status == 503 and err.value.code == "broker_unavailable"
    time.sleep(max(0.0, 3.0 - (time.monotonic() - killed)))
    redis.start()
    restarted = time.monotonic()
    job = wait_terminal(serve, job_id, timeout=120)
    assert job.state == "succeeded", (job.error_code, job.error_message, serve.logs())
    serve.wait_ready(60)
    after = serve.submit(folder)  # the worker reconnected: new work runs
    job2 = wait_terminal(serve, after, timeout=120)
    recovered = time.monotonic() - restarted
    print(f"\n(c) Redis SIGKILL + restart: running job {job.state} (attempts {job.attempts}); "
          f"a job submitted after the restart finished {recovered:.1f} s after it")
    assert job2.state == "succeeded", (job2.error_code, job2.error_message, serve.logs())
    states = {j.id: (j.state.value, j.error_code) for j in all_jobs(serve.state)}
    assert not [j for j, (st, _) in states.items() if st in ("queued", "running")], states
    assert sorted(code for st, code in states.values() if st == "failed") == ["broker_unavailable"]
