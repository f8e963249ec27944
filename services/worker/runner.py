"""The job runner behind the ``autopaint.run_job`` task: ids in, rows and files out.

``execute_job`` leases the job row, fetches the inputs from storage, calls the pipeline (a thin
adapter over ``autopaint.segment.pipeline.run_pipeline``, see ``pipeline_adapter``) with progress
and cancel hooks wired to the database, stores the results (atomic, sha256) and finishes the row.
It returns an :class:`Outcome` telling the Celery task whether to publish the job again.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from autopaint.contracts import RESULT_NAMES, JobParams, JobState
from autopaint.db import Job, leases
from autopaint.db import jobs as repo
from autopaint.errors import Cancelled, InvalidInput, ModelError
from autopaint.progress import ProgressEvent, Stage, Unit
from autopaint.storage import StorageFull, StorageUnavailable, fetch_local, storage_error_from, store_results
from services.worker.context import WorkerContext
from services.worker.pipeline_adapter import JobSpec, resolve_runner

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Outcome:
    """What happened: ``status`` in {succeeded, failed, cancelled, skipped, requeued, wait_lease,
    lease_lost}; ``retry_in_s`` set when the task must publish the job again after that delay."""

    status: str
    retry_in_s: float | None = None


class ProgressWriter:
    """Progress callback: writes to the DB on every stage change and every ``every`` circles
    (other units at most every 0.25 s), plus the last step of each stage."""

    def __init__(self, ctx: WorkerContext, job_id: str, every: int, worker: str | None = None) -> None:
        self.ctx, self.job_id, self.every, self.worker = ctx, job_id, max(1, every), worker
        self._stage: Stage | None = None
        self._unit: str | None = None
        self._last_done = -1
        self._last_t = 0.0
        self.writes = 0

    def __call__(self, ev: ProgressEvent) -> None:
        stage = Stage(ev.stage)
        now = time.monotonic()
        new_stage = stage != self._stage or ev.unit != self._unit
        if ev.unit == Unit.circles:
            due = ev.done - self._last_done >= self.every
        else:
            due = now - self._last_t >= 0.25
        if not (new_stage or due or ev.done >= ev.total):
            return
        circles = (ev.done, ev.total) if ev.unit == Unit.circles else (None, None)
        with self.ctx.session() as s:
            repo.set_progress(s, self.job_id, stage, ev.done, ev.total, ev.unit,
                              circles_done=circles[0], circles_total=circles[1], worker_id=self.worker)
        self._stage, self._unit, self._last_done, self._last_t = stage, ev.unit, ev.done, now
        self.writes += 1


class Heartbeat:
    """Proves this process alive: renews the DB lease every ``lease_s / 3`` seconds from a daemon
    thread (``Settings.lease_s``, default 30 s, so two renewals may fail before the lease runs out).
    A worker that dies stops renewing, and about one lease later its job is taken over (a
    re-delivered message leases it again, or the API's reconciler re-queues it).

    ``lost`` turns True when another worker or the reconciler took the job, or when no renewal
    succeeded for a whole lease (this process cannot reach the database, so the job may already
    run elsewhere); the pipeline then stops at its next cancel check and nothing is stored.
    """

    def __init__(self, ctx: WorkerContext, job_id: str, worker: str, lease_s: float) -> None:
        self.ctx, self.job_id, self.worker, self.lease_s = ctx, job_id, worker, lease_s
        self.lost = False
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(max(0.2, self.lease_s / 3.0)):
            try:
                with self.ctx.session() as s:
                    if not leases.heartbeat(s, self.job_id, self.worker, self.lease_s):
                        log.warning("job %s: lease lost (taken over); stopping", self.job_id)
                        self.lost = True
                        return
                last_ok = time.monotonic()
                self.renewals += 1
            except Exception:  # a DB hiccup: keep trying until the lease runs out
                log.exception("heartbeat of job %s failed", self.job_id)
                if time.monotonic() - last_ok > self.lease_s:
                    log.error("job %s: no lease renewal for %.0f s; giving the job up", self.job_id,
                              time.monotonic() - last_ok)
                    self.lost = True
                    return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _fetch_inputs(ctx: WorkerContext, job: Job, tmp: Path) -> dict[str, Path]:
    """Local paths of the job's inputs: a NIfTI file (the storage path itself when it is on this
    disk), or for a DICOM input (``format: dicom``) the folder its stored zip unpacks to in ``tmp``."""
    from autopaint.imaging.dicom_zip import extract_series_zip

    s = ctx.settings
    paths: dict[str, Path] = {}
    for role, info in (job.inputs or {}).items():
        if info.get("format") == "dicom":
            archive = fetch_local(ctx.storage, info["key"], tmp / "inputs" / f"{role}.dicom.zip")
            paths[role] = extract_series_zip(archive, tmp / "inputs", s.max_dicom_bytes, s.max_dicom_files,
                                             name=f"{role}-dicom")
        else:
            paths[role] = fetch_local(ctx.storage, info["key"], tmp / "inputs" / f"{role}.nii.gz")
    return paths


def _not_leased(ctx: WorkerContext, job_id: str) -> Outcome:
    """Why the lease failed: terminal/cancelled (drop the message) or a live lease held by
    another process (publish again once it can have expired: the holder may have died)."""
    with ctx.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state.terminal:
            return Outcome("skipped")
        remaining = leases.lease_remaining_s(s, job_id)
    if remaining is not None:
        return Outcome("wait_lease", retry_in_s=max(0.5, remaining + 0.5))
    return Outcome("skipped")


def execute_job(ctx: WorkerContext, job_id: str, worker: str) -> Outcome:
    """Run one job end to end (see the module docstring); never raises for job errors."""
    settings = ctx.settings
    with ctx.session() as s:
        job = leases.lease_job(s, job_id, worker, settings.lease_s)
        if job is None and leases.expire_gone_leases(s, job_id):  # its holder died on this host
            job = leases.lease_job(s, job_id, worker, settings.lease_s)
        if job is None:
            return _not_leased(ctx, job_id)
        params = JobParams.model_validate(job.params or {})
        attempt = job.attempts
    log.info("job %s attempt %d on %s", job_id, attempt, worker)
    tmp = Path(tempfile.mkdtemp(prefix=f"autopaint-{job_id}-"))
    try:
        with Heartbeat(ctx, job_id, worker, settings.lease_s) as hb:
            return _run_leased(ctx, job, params, worker, tmp, hb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_leased(ctx: WorkerContext, job: Job, params: JobParams, worker: str, tmp: Path,
                hb: Heartbeat) -> Outcome:
    settings, job_id = ctx.settings, job.id

    def should_cancel() -> bool:
        if hb.lost:
            return True
        with ctx.session() as s:
            return repo.cancel_requested(s, job_id)

    progress = ProgressWriter(ctx, job_id, settings.progress_every_circles, worker)
    try:
        spec = JobSpec(job_id=job_id, input_paths=_fetch_inputs(ctx, job, tmp), params=params,
                       device=settings.device,
                       models_dir=settings.resolved_models_dir(),
                       input_sha256={r: i.get("sha256", "") for r, i in (job.inputs or {}).items()})
        out_dir = tmp / "results"
        out_dir.mkdir()
        manifest = resolve_runner()(spec, out_dir, progress, should_cancel)
        if should_cancel():
            raise Cancelled("cancel requested before the results were stored")
        progress(ProgressEvent(Stage.writing, 0, 1, Unit.files))
        artifacts = store_results(ctx.storage, job_id, out_dir, RESULT_NAMES)
        manifest = {**manifest, "inputs": spec.input_sha256, "attempt": job.attempts,
                    "results": {a["name"]: a["sha256"] for a in artifacts}}
        with ctx.session() as s:
            if not repo.finish_job(s, job_id, manifest, artifacts, worker_id=worker):
                log.warning("job %s: lease lost before finishing; results left to the holder", job_id)
                return Outcome("lease_lost")
        return Outcome("succeeded")
    except Cancelled:
        if hb.lost:
            return Outcome("lease_lost")
        with ctx.session() as s:
            repo.mark_cancelled(s, job_id)
        log.info("job %s cancelled", job_id)
        return Outcome("cancelled")
    except SoftTimeLimitExceeded:
        with ctx.session() as s:
            repo.fail_job(s, job_id, "time_limit",
                          f"the job ran longer than the soft time limit ({settings.soft_time_limit_s} s)")
        return Outcome("failed")
    except (InvalidInput, ModelError) as exc:  # the input's or the request's fault: no retry
        with ctx.session() as s:
            repo.fail_job(s, job_id, exc.code, str(exc))
        return Outcome("failed")
    except Exception as exc:
        mapped = storage_error_from(exc)
        if not isinstance(mapped, StorageFull | StorageUnavailable):
            return _retry_or_fail(ctx, job, exc)
        # a full or read-only disk: re-running the whole pipeline cannot help (store_results already
        # deleted what this attempt put, so no object is left without its artifact row)
        log.error("job %s attempt %d: storage fault: %s", job_id, job.attempts, exc)
        with ctx.session() as s:
            repo.fail_job(s, job_id, mapped.code, f"{mapped}; the job was not retried")
        return Outcome("failed")


def _retry_or_fail(ctx: WorkerContext, job: Job, exc: Exception) -> Outcome:
    """Anything else may be transient: retry up to max_attempts."""
    settings, job_id = ctx.settings, job.id
    log.exception("job %s attempt %d crashed", job_id, job.attempts)
    code = getattr(exc, "code", None) or "worker_error"
    with ctx.session() as s:
        state = repo.requeue_or_fail(s, job_id, str(code), f"{type(exc).__name__}: {exc}")
    if state == JobState.QUEUED:  # a countdown below one lease: see Settings.stale_queued_s
        return Outcome("requeued", retry_in_s=min(30.0, settings.lease_s / 2.0, 0.5 * 2 ** job.attempts))
    return Outcome(state.value)
