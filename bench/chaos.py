"""Chaos: each fault of the fault suite ``--trials`` times against real ``autopaint serve`` processes.

Per trial ``--jobs`` jobs are submitted at once to a serve with one worker (the TEST-ONLY fake
pipeline: ``--slow`` seconds of ``searching`` per job, so the numbers are about recovery, not
segmentation); when the first is running, the fault is injected; then every job is waited for.
Default settings (lease 30 s, heartbeat every 10 s, reconciler every 15 s), embedded SQLite + kombu
sqla broker, except ``redis_kill`` (a private redis-server with AOF, SQLite database).

faults: ``child_kill`` (SIGKILL the job's pool child), ``worker_kill`` (SIGKILL the worker's whole
process group), ``freeze`` (SIGSTOP the job's pool child: alive but silent, as a hung worker or
one on another host seen from here; only its lease's expiry tells, SIGCONT once the job was taken
back), ``serve_kill`` (SIGKILL serve, start it again), ``sigterm`` (SIGTERM serve: warm
shutdown, start it again), ``redis_kill`` (SIGKILL Redis, restart it 3 s later), ``duplicate``
(the first job's id published twice more).

Columns: submitted; finished (succeeded); lost (not succeeded at the end); duplicated (jobs whose
result was produced more than once); recover s (fault -> the interrupted job taken back: queued
again, running a later attempt, or finished; mean and max over trials); all done s (fault -> every
job of the trial finished: the interrupted job goes back to the end of the queue); peak RSS of the
serve process (API + supervisor + reconciler).

    .venv/bin/python -m bench.chaos [--trials 2] [--jobs 3] [--slow 4] [--faults child_kill,...]

Writes bench/results/chaos.md and .json. Run it on a quiet machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autopaint.contracts import TASK_RUN_JOB
from tests.faults.harness import (
    RedisServer,
    Serve,
    child_pid,
    inputs,
    pid_alive,
    wait_for,
    wait_running,
)

RESULTS = Path(__file__).resolve().parent / "results"
FAULTS = ("child_kill", "worker_kill", "freeze", "serve_kill", "sigterm", "redis_kill", "duplicate")


def _recovered(serve: Serve, job_id: str, attempt: int) -> Callable[[], bool]:
    """The interrupted job was taken back from the dead holder: queued again, running a later
    attempt, or finished."""
    def _check() -> bool:
        try:
            job = serve.job(job_id)
        except Exception:  # the database is being migrated by a restarting serve
            return False
        return job.state.terminal or job.state == "queued" or job.attempts > attempt
    return _check


def _inject(fault: str, serve: Serve, redis: RedisServer | None, job_id: str) -> tuple[float, Callable[[], bool]]:
    """Inject ``fault`` while ``job_id`` runs; returns the moment of the fault and the 'recovered'
    predicate."""
    job = wait_running(serve, job_id, timeout=120)
    attempt = job.attempts
    t_fault = time.monotonic()
    if fault == "child_kill":
        os.kill(child_pid(job), signal.SIGKILL)
    elif fault == "worker_kill":
        for pid in serve.worker_pids():
            os.killpg(pid, signal.SIGKILL)
    elif fault == "freeze":
        child = child_pid(job)
        os.kill(child, signal.SIGSTOP)
        taken_back = _recovered(serve, job_id, attempt)

        def _thaw_when_taken_back() -> bool:
            if taken_back():
                os.kill(child, signal.SIGCONT)  # it finds its lease gone and stops
                return True
            return False

        return t_fault, _thaw_when_taken_back
    elif fault in ("serve_kill", "sigterm"):
        parents = serve.worker_pids()
        serve.kill(signal.SIGKILL if fault == "serve_kill" else signal.SIGTERM)
        assert serve.proc is not None
        serve.proc.wait(timeout=120)
        wait_for(lambda: not any(pid_alive(p) for p in parents), 60, "the old workers to exit")
        serve.start()
    elif fault == "redis_kill":
        assert redis is not None
        redis.kill()
        time.sleep(3.0)
        redis.start()
    elif fault == "duplicate":
        from autopaint.settings import Settings
        from services.worker.app import create_celery_app

        producer = create_celery_app(Settings(state_dir=serve.state, _env_file=None))  # type: ignore[call-arg]
        for _ in range(2):
            producer.send_task(TASK_RUN_JOB, args=[job_id], queue="cpu")
    return t_fault, _recovered(serve, job_id, attempt)


def run_fault(fault: str, trials: int, jobs: int, slow: float, tmp: Path) -> dict[str, Any]:
    redis = RedisServer(tmp / fault / "redis") if fault == "redis_kill" else None
    env = {"AUTOPAINT_BROKER_URL": redis.url} if redis is not None else {}
    if redis is not None:
        redis.start()
    serve = Serve(tmp / fault / "state", workers=1, slow_s=slow, env=env)
    case = tmp / "case"
    inputs(case)
    row: dict[str, Any] = {"fault": fault, "submitted": 0, "finished": 0, "lost": 0, "duplicated": 0,
                           "recover_s": [], "all_done_s": [], "peak_rss_mb": 0.0}
    try:
        serve.start()
        for trial in range(trials):
            ids = [serve.submit(case) for _ in range(jobs)]
            row["submitted"] += len(ids)
            t0 = time.monotonic()
            t_fault, recovered = _inject(fault, serve, redis, ids[0])
            row["peak_rss_mb"] = max(row["peak_rss_mb"], serve.peak_rss_mb())
            wait_for(recovered, 300, f"{fault}: recovery")
            row["recover_s"].append(time.monotonic() - t_fault)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not all(serve.job(j).state.terminal for j in ids):
                row["peak_rss_mb"] = max(row["peak_rss_mb"], serve.peak_rss_mb())
                time.sleep(0.25)
            row["all_done_s"].append(time.monotonic() - t_fault)
            done = [serve.job(j) for j in ids]
            row["finished"] += sum(j.state == "succeeded" for j in done)
            row["lost"] += sum(j.state != "succeeded" for j in done)
            row["duplicated"] += sum(serve.runs(j).count("end") > 1 for j in ids)
            row["peak_rss_mb"] = max(row["peak_rss_mb"], serve.peak_rss_mb())
            print(f"  {fault} trial {trial + 1}: {[j.state.value for j in done]} attempts "
                  f"{[j.attempts for j in done]}, recovered {row['recover_s'][-1]:.1f} s "
                  f"(fault at +{t_fault - t0:.1f} s)", flush=True)
    finally:
        serve.stop()
        if redis is not None:
            redis.kill()
    return row


def _fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} / {max(values):.1f}" if values else "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | jobs submitted | finished | lost | duplicated | recover s (mean / max) | "
             "all done s (mean / max) | peak API RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['submitted']} | {r['finished']} | {r['lost']} | {r['duplicated']} "
                     f"| {_fmt(r['recover_s'])} | {_fmt(r['all_done_s'])} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--slow", type=float, default=4.0, help="seconds per fake job (searching)")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"({os.cpu_count()} cores)", flush=True)
    rows = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autopaint-chaos-") as tmp:
        for fault in args.faults.split(","):
            rows.append(run_fault(fault.strip(), args.trials, args.jobs, args.slow, Path(tmp)))
    load_after = os.getloadavg()
    md = table(rows)
    print(md)
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
          f"{time.monotonic() - t0:.0f} s in all")
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    header = (f"# Chaos: faults injected into a running service\n\n"
              f"`python -m bench.chaos --trials {args.trials} --jobs {args.jobs} --slow {args.slow}` "
              f"(default lease 30 s, heartbeat 10 s, reconciler every 15 s; one worker; fake pipeline "
              f"{args.slow} s per job). {os.cpu_count()} cores; load average before "
              f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, after "
              f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} (1 / 5 / 15 min).\n\n"
              "recover s: from the fault to the interrupted job taken back (queued again, a new "
              "attempt running, or finished); all done s: from the fault to every job of the trial "
              "finished (the interrupted job goes back to the end of the queue, behind the others).\n\n")
    (RESULTS / "chaos.md").write_text(header + md + "\n")
    (RESULTS / "chaos.json").write_text(json.dumps({"args": vars(args), "load_before": load_before,
                                                    "load_after": load_after, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
