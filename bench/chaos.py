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

faults with their own set-up (#15): ``pg_drop`` (serve on a private PostgreSQL database of the
local server and a private redis-server; while the first job runs, every backend of that database
is terminated twice, 2 s apart, during 50 polls of the job; recover s: last drop -> the first 200
poll), ``storage_full_upload`` (storage on an 8 MiB tmpfs filled to the last byte: ``--jobs``
submits answered 507, then the space is freed and ``--jobs`` jobs submitted; recover s: space back ->
``/readyz`` ready and the first 202), ``storage_full_results`` (the tmpfs filled while the first job
runs: that job must end FAILED ``storage_full`` after one attempt with no result object and no
artifact row — counted in "failed clean", not "lost" —, the space is freed and the rest finish;
recover s: fault -> that job ended), ``upload_kill`` (a 100 MiB upload streamed slowly while the
first job runs; serve SIGKILLed once 30 MiB are spooled and started again; recover s: kill -> the new
serve ready with the partial upload removed and no orphan worker). The tmpfs faults need root with
mount rights and ``pg_drop`` the local PostgreSQL; otherwise their row says why it was skipped.

Columns: submitted (accepted, 202); refused (answered 4xx/5xx at submit during the fault: the 507s);
finished (succeeded); failed clean (FAILED with the fault's own code, as designed: storage_full);
lost (neither at the end: FAILED for another reason, or not finished); duplicated (jobs whose
result was produced more than once); recover s (fault -> the interrupted job taken back: queued
again, running a later attempt, or finished; for the new faults see above; mean and max over
trials); all done s (fault -> every job of the trial finished: the interrupted job goes back to the
end of the queue); peak RSS of the serve process (API + supervisor + reconciler); notes (per fault:
5xx among the polls, refusal codes, partial upload removed, orphan workers).

    .venv/bin/python -m bench.chaos [--trials 2] [--jobs 3] [--slow 4] [--faults child_kill,...] [--render]

Writes bench/results/chaos.md and .json (``--render``: the .md again from the .json). Run it on a quiet
machine; the load average is printed.
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
from tests.faults.harness import PgDatabase, RedisServer, Serve, Tmpfs
from tests.faults.probes import (
    PIECE,
    all_jobs,
    artifacts,
    child_pid,
    inputs,
    pid_alive,
    poll_job,
    post_pair,
    spooled_bytes,
    start_slow_upload,
    state_processes,
    wait_for,
    wait_running,
)

RESULTS = Path(__file__).resolve().parent / "results"
FAULTS = ("child_kill", "worker_kill", "freeze", "serve_kill", "sigterm", "redis_kill", "duplicate",
          "pg_drop", "storage_full_upload", "storage_full_results", "upload_kill")
OWN_SETUP = ("pg_drop", "storage_full_upload", "storage_full_results", "upload_kill")


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


def _new_row(fault: str) -> dict[str, Any]:
    return {"fault": fault, "submitted": 0, "refused": 0, "finished": 0, "failed_clean": 0, "lost": 0,
            "duplicated": 0, "recover_s": [], "all_done_s": [], "peak_rss_mb": 0.0, "notes": []}


def _wait_all(serve: Serve, ids: list[str], row: dict[str, Any], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(serve.job(j).state.terminal for j in ids):
        row["peak_rss_mb"] = max(row["peak_rss_mb"], serve.peak_rss_mb())
        time.sleep(0.25)


def _count(serve: Serve, ids: list[str], row: dict[str, Any], clean: tuple[str, ...] = (),
           storage: Path | None = None) -> list[Any]:
    """Add the trial's jobs to the row: succeeded, failed clean (ids in ``clean`` that ended FAILED
    storage_full after one attempt, with no result object in ``storage`` and no artifact row), lost,
    duplicated."""
    done = [serve.job(j) for j in ids]
    for j in done:
        no_results = storage is not None and not [p for p in (storage / "jobs" / j.id / "results").glob("*")
                                                  if p.is_file()]
        ok_fail = (j.id in clean and j.state == "failed" and j.error_code == "storage_full" and j.attempts == 1
                   and not artifacts(serve, j.id) and no_results)
        row["finished"] += j.state == "succeeded"
        row["failed_clean"] += ok_fail
        row["lost"] += j.state != "succeeded" and not ok_fail
    row["duplicated"] += sum(serve.runs(j).count("end") > 1 for j in ids)
    row["peak_rss_mb"] = max(row["peak_rss_mb"], serve.peak_rss_mb())
    return done


def _trial_pg_drop(serve: Serve, db: PgDatabase, case: Path, jobs: int, row: dict[str, Any]) -> None:
    ids = [serve.submit(case) for _ in range(jobs)]
    row["submitted"] += len(ids)
    wait_running(serve, ids[0], timeout=120)
    seen, poller = poll_job(serve, ids[0], 50, 0.1)
    time.sleep(0.5)
    dropped = db.terminate_backends()
    time.sleep(2.0)
    dropped += db.terminate_backends()
    t_fault = time.monotonic()
    poller.join(timeout=120)
    ok_after = [t for t, status, _ in seen if status == 200 and t > t_fault]
    if not ok_after:
        wait_for(lambda: serve.readyz()[0] == 200, 60, "readyz after the drops")
    row["recover_s"].append((min(ok_after) if ok_after else time.monotonic()) - t_fault)
    _wait_all(serve, ids, row)
    row["all_done_s"].append(time.monotonic() - t_fault)
    done = _count(serve, ids, row)
    five = [f"{status} {code}" for _, status, code in seen if status >= 500 or status == 0]
    what = f": {', '.join(sorted(set(five)))}" if five else ""
    row["notes"].append(f"{len(five)}/{len(seen)} polls 5xx{what} ({dropped} connections dropped)")
    print(f"  pg_drop: {dropped} connections dropped, {five} 5xx of {len(seen)} polls; "
          f"{[j.state.value for j in done]} attempts {[j.attempts for j in done]}", flush=True)


def _trial_storage_full_upload(serve: Serve, disk: Tmpfs, case: Path, jobs: int, row: dict[str, Any]) -> None:
    disk.fill()
    wait_for(lambda: serve.readyz()[0] == 503, 30, "readyz to see the full storage")
    codes = []
    for _ in range(jobs):
        r = post_pair(serve, case)
        codes.append(f"{r.status_code} {r.json().get('code')}")
        row["refused"] += r.status_code >= 400
        row["submitted"] += r.status_code == 202
    left = [str(p) for p in disk.files() if not (p.parts[0] == "jobs" and p.parts[1] in {j.id for j in all_jobs(serve.state)})]
    left += [p.name for p in (serve.state / "uploads").iterdir()]
    disk.free()
    t_fault = time.monotonic()
    wait_for(lambda: serve.readyz()[0] == 200, 60, "readyz after the space came back")
    ids = [serve.submit(case)]
    row["recover_s"].append(time.monotonic() - t_fault)
    ids += [serve.submit(case) for _ in range(jobs - 1)]
    row["submitted"] += len(ids)
    _wait_all(serve, ids, row)
    row["all_done_s"].append(time.monotonic() - t_fault)
    _count(serve, ids, row)
    row["notes"].append(f"{', '.join(sorted(set(codes)))}; {len(left)} partial objects")
    print(f"  storage_full_upload: {codes}; leftovers {left}", flush=True)


def _trial_storage_full_results(serve: Serve, disk: Tmpfs, case: Path, jobs: int, row: dict[str, Any]) -> None:
    ids = [serve.submit(case) for _ in range(jobs)]
    row["submitted"] += len(ids)
    wait_running(serve, ids[0], timeout=120)
    disk.fill()
    t_fault = time.monotonic()
    wait_for(lambda: serve.job(ids[0]).state.terminal, 120, "the first job to end", every=0.1)
    row["recover_s"].append(time.monotonic() - t_fault)
    disk.free()
    _wait_all(serve, ids, row)
    row["all_done_s"].append(time.monotonic() - t_fault)
    done = _count(serve, ids, row, clean=(ids[0],), storage=disk.path)
    first = done[0]
    row["notes"].append(f"{first.state.value} {first.error_code} after {first.attempts} attempt(s), "
                        f"{len(artifacts(serve, first.id))} artifact rows")
    print(f"  storage_full_results: {[(j.state.value, j.error_code, j.attempts) for j in done]}", flush=True)


def _trial_upload_kill(serve: Serve, case: Path, jobs: int, row: dict[str, Any]) -> None:
    ids = [serve.submit(case) for _ in range(jobs)]
    row["submitted"] += len(ids)
    wait_running(serve, ids[0], timeout=120)
    thread, _outcome = start_slow_upload(serve)
    wait_for(lambda: spooled_bytes(serve.state) > 30 * PIECE, 120, "30 MiB spooled", every=0.05)
    row["peak_rss_mb"] = max(row["peak_rss_mb"], serve.peak_rss_mb())
    serve.kill(signal.SIGKILL)
    t_fault = time.monotonic()
    assert serve.proc is not None
    serve.proc.wait(timeout=60)
    thread.join(timeout=60)
    wait_for(lambda: not state_processes(serve.state), 60, "the old serve's workers to exit")
    partial = spooled_bytes(serve.state)
    serve.start()
    assert spooled_bytes(serve.state) == 0
    assert serve.proc is not None
    strays = [p for p, g in state_processes(serve.state).items() if p != serve.proc.pid and g not in serve.worker_pids()]
    row["recover_s"].append(time.monotonic() - t_fault)
    _wait_all(serve, ids, row)
    row["all_done_s"].append(time.monotonic() - t_fault)
    done = _count(serve, ids, row)
    row["notes"].append(f"{partial / 2**20:.0f} MiB partial upload removed, {len(strays)} orphan processes")
    print(f"  upload_kill: {[j.state.value for j in done]} attempts {[j.attempts for j in done]}, "
          f"{partial / 2**20:.0f} MiB partial removed at restart, strays {strays}", flush=True)


def run_own_setup(fault: str, trials: int, jobs: int, slow: float, tmp: Path) -> dict[str, Any]:
    """The #15 faults that need their own set-up (see the module doc)."""
    row = _new_row(fault)
    base = tmp / fault
    base.mkdir(parents=True, exist_ok=True)
    case = tmp / "case"
    inputs(case)
    db = redis = disk = None
    env: dict[str, str] = {}
    if fault == "pg_drop":
        if not PgDatabase.available():
            row["notes"].append("skipped: PostgreSQL not reachable")
            return row
        db, redis = PgDatabase().create(), RedisServer(base / "redis")
        redis.start()
        env = {"AUTOPAINT_DATABASE_URL": db.url, "AUTOPAINT_BROKER_URL": redis.url}
    elif fault.startswith("storage_full"):
        reason = Tmpfs.unavailable(base)
        if reason:
            row["notes"].append(f"skipped: {reason}")
            return row
        disk = Tmpfs(base / "storage", 8 * 1024).mount()
        env = {"AUTOPAINT_STORAGE_DIR": str(disk.path)}
    serve = Serve(base / "state", workers=1, slow_s=slow, env=env)
    try:
        serve.start()
        for trial in range(trials):
            if fault == "pg_drop":
                assert db is not None
                _trial_pg_drop(serve, db, case, jobs, row)
            elif fault == "storage_full_upload":
                assert disk is not None
                _trial_storage_full_upload(serve, disk, case, jobs, row)
            elif fault == "storage_full_results":
                assert disk is not None
                _trial_storage_full_results(serve, disk, case, jobs, row)
            else:
                _trial_upload_kill(serve, case, jobs, row)
            print(f"  {fault} trial {trial + 1}: recovered {row['recover_s'][-1]:.1f} s", flush=True)
    finally:
        serve.stop()
        if redis is not None:
            redis.kill()
        if db is not None:
            db.drop()
        if disk is not None:
            disk.umount()
    return row


def run_fault(fault: str, trials: int, jobs: int, slow: float, tmp: Path) -> dict[str, Any]:
    if fault in OWN_SETUP:
        return run_own_setup(fault, trials, jobs, slow, tmp)
    redis = RedisServer(tmp / fault / "redis") if fault == "redis_kill" else None
    env = {"AUTOPAINT_BROKER_URL": redis.url} if redis is not None else {}
    if redis is not None:
        redis.start()
    serve = Serve(tmp / fault / "state", workers=1, slow_s=slow, env=env)
    case = tmp / "case"
    inputs(case)
    row = _new_row(fault)
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
    lines = ["| fault | jobs submitted | refused | finished | failed clean | lost | duplicated | "
             "recover s (mean / max) | all done s (mean / max) | peak API RSS MiB | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        notes = "; ".join(dict.fromkeys(r.get("notes", []))) or ""
        lines.append(f"| {r['fault']} | {r['submitted']} | {r.get('refused', 0)} | {r['finished']} "
                     f"| {r.get('failed_clean', 0)} | {r['lost']} | {r['duplicated']} | {_fmt(r['recover_s'])} "
                     f"| {_fmt(r['all_done_s'])} | {r['peak_rss_mb']:.0f} | {notes} |")
    return "\n".join(lines)


def render(args: dict[str, Any], load_before: Any, load_after: Any, rows: list[dict[str, Any]]) -> str:
    """bench/results/chaos.md from a run's arguments, load averages and rows."""
    return (f"# Chaos: faults injected into a running service\n\n"
            f"`python -m bench.chaos --trials {args['trials']} --jobs {args['jobs']} --slow {args['slow']}` "
            f"(default lease 30 s, heartbeat 10 s, reconciler every 15 s; one worker; fake pipeline "
            f"{args['slow']} s per job). {os.cpu_count()} cores; load average before "
            f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, after "
            f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} (1 / 5 / 15 min).\n\n"
            "recover s: from the fault to the interrupted job taken back (queued again, a new "
            "attempt running, or finished); for pg_drop from the last drop to the first 200 poll, for "
            "storage_full_upload from the space coming back to `/readyz` ready and the first 202, for "
            "storage_full_results from the fault to the job's clean failure, for upload_kill from the "
            "kill to the new serve ready with the partial upload removed. all done s: from the fault to "
            "every job of the trial finished (the interrupted job goes back to the end of the queue, "
            "behind the others). refused: submits answered 4xx/5xx during the fault; failed clean: jobs "
            "FAILED with the fault's own code as designed (storage_full after one attempt, no result "
            "object, no artifact row); lost: jobs neither succeeded nor failed clean.\n\n"
            + table(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--slow", type=float, default=4.0, help="seconds per fake job (searching)")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite chaos.md from chaos.json")
    args = ap.parse_args()
    if args.render:
        saved = json.loads((RESULTS / "chaos.json").read_text())
        (RESULTS / "chaos.md").write_text(render(saved["args"], saved["load_before"], saved["load_after"],
                                                 saved["rows"]))
        return
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"({os.cpu_count()} cores)", flush=True)
    rows = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autopaint-chaos-") as tmp:
        for fault in args.faults.split(","):
            rows.append(run_fault(fault.strip(), args.trials, args.jobs, args.slow, Path(tmp)))
    load_after = os.getloadavg()
    print(table(rows))
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
          f"{time.monotonic() - t0:.0f} s in all")
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    saved_args = {k: v for k, v in vars(args).items() if k != "render"}
    (RESULTS / "chaos.md").write_text(render(saved_args, load_before, load_after, rows))
    (RESULTS / "chaos.json").write_text(json.dumps({"args": saved_args, "load_before": load_before,
                                                    "load_after": load_after, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
