"""Job-state repository: the transitions of a job row, each one committed atomically.

State machine (see DESIGN.md §5)::

    QUEUED --lease_job--> RUNNING --finish_job--> SUCCEEDED
      |                    |  \\--fail_job / requeue_or_fail (attempts == max)--> FAILED
      |                    |   \\--requeue_or_fail (attempts < max)--> QUEUED
      |                    \\--cancel requested, mark_cancelled--> CANCELLED
      \\--request_cancel (directly)--> CANCELLED

Every function takes an open ``Session``, commits its own transaction and returns plain values.
Each transition to a terminal state queues its callbacks in that same transaction
(``autopaint.db.callbacks.on_terminal``: the outbox the API's dispatcher delivers).
Taking, renewing and reclaiming leases (``lease_job``, ``heartbeat``, the reconciler's side) is
:mod:`autopaint.db.leases`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from autopaint.contracts import ArtifactRecord, JobState
from autopaint.db import callbacks as outbox
from autopaint.db.models import Artifact, Job, utcnow
from autopaint.progress import Stage

log = logging.getLogger(__name__)


def load_job(session: Session, job_id: str) -> Job | None:
    """The job's row read afresh from the database (None when it is gone)."""
    return session.get(Job, job_id, populate_existing=True)


def _close_stage(job: Job, now: datetime) -> None:
    """Add the time spent in the current stage to ``job.timings`` (seconds per stage)."""
    if job.stage_started_at is not None and job.stage not in (Stage.queued, Stage.done):
        timings = dict(job.timings or {})
        spent = (now - job.stage_started_at).total_seconds()
        timings[job.stage] = round(float(timings.get(job.stage, 0.0)) + spent, 3)
        job.timings = timings


def set_progress(
    session: Session,
    job_id: str,
    stage: Stage | str,
    done: int,
    total: int,
    unit: str,
    circles_done: int | None = None,
    circles_total: int | None = None,
    worker_id: str | None = None,
) -> None:
    """Record the current stage and its progress (``done`` of ``total`` ``unit``, e.g. slices);
    on a stage change the previous stage's duration is added to ``timings``. Given ``worker_id``,
    only while that worker holds the lease (a worker that lost it does not overwrite the next
    attempt's progress)."""
    job = load_job(session, job_id)
    if job is None or job.state != JobState.RUNNING or (worker_id is not None and job.lease_owner != worker_id):
        session.rollback()
        return
    stage = Stage(stage)
    now = utcnow()
    if stage != job.stage:
        _close_stage(job, now)
        job.stage = stage
        job.stage_started_at = now
    job.progress_done, job.progress_total, job.progress_unit = int(done), int(total), str(unit)
    if circles_done is not None:
        job.circles_done = int(circles_done)
    if circles_total is not None:
        job.circles_total = int(circles_total)
    session.commit()


def replace_artifacts(session: Session, job_id: str, artifacts: list[ArtifactRecord]) -> None:
    """Insert or update the job's artifact rows by name (not committed)."""
    rows = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
    for a in artifacts:
        row = rows.get(a["name"])
        if row is None:
            row = Artifact(job_id=job_id, name=a["name"])
            session.add(row)
        row.storage_key, row.sha256, row.bytes = a["storage_key"], a["sha256"], int(a["bytes"])
        row.content_type = a["content_type"]


def finish_job(
    session: Session,
    job_id: str,
    manifest: dict[str, Any],
    artifacts: list[ArtifactRecord],
    worker_id: str | None = None,
) -> bool:
    """RUNNING -> SUCCEEDED with ``manifest`` and the result files; ``artifacts`` replace any
    earlier rows of this job (idempotent). False (nothing changed) when the job is no longer RUNNING or,
    given ``worker_id``, leased by someone else."""
    job = load_job(session, job_id)
    if job is None or job.state != JobState.RUNNING or (
        worker_id is not None and job.lease_owner != worker_id
    ):
        session.rollback()
        return False
    now = utcnow()
    _close_stage(job, now)
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    replace_artifacts(session, job_id, artifacts)
    job.state = JobState.SUCCEEDED
    job.stage = Stage.done
    job.stage_started_at = now
    job.finished_at = now
    job.manifest = manifest
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else None
    job.model_name = manifest.get("model_name") or (model or {}).get("name") or job.model_name
    job.model_sha256 = manifest.get("model_sha256") or (model or {}).get("sha256") or job.model_sha256
    job.lease_owner, job.lease_expires_at = None, None
    job.error_code, job.error_message = None, None
    outbox.on_terminal(session, job)  # its callbacks commit with the state (autopaint.db.callbacks)
    session.commit()
    return True


def terminate(session: Session, job_id: str, state: JobState, **fields: object) -> bool:
    """Any non-terminal state -> ``state`` (closing the current stage, dropping the lease, setting
    ``fields``); False when the job is gone or already terminal."""
    job = load_job(session, job_id)
    if job is None or job.state.terminal:
        session.rollback()
        return False
    now = utcnow()
    _close_stage(job, now)
    job.state = state
    for name, value in fields.items():
        setattr(job, name, value)
    job.finished_at = now
    job.lease_owner, job.lease_expires_at = None, None
    outbox.on_terminal(session, job)
    session.commit()
    return True


def fail_job(session: Session, job_id: str, code: str, message: str) -> None:
    """Any non-terminal state -> FAILED with an error code and message."""
    if terminate(session, job_id, JobState.FAILED, error_code=code, error_message=message[:4000]):
        log.info("job %s failed: %s", job_id, code)


def requeue_or_fail(session: Session, job_id: str, code: str, message: str) -> JobState:
    """After a retryable error: back to QUEUED while attempts < max_attempts, else FAILED.
    Returns the new state (or the current one when the job was already terminal)."""
    job = load_job(session, job_id)
    if job is None:
        session.rollback()
        return JobState.FAILED
    if job.state.terminal:
        session.rollback()
        return job.state
    if job.attempts < job.max_attempts and not job.cancel_requested:
        now = utcnow()
        _close_stage(job, now)
        job.state = JobState.QUEUED
        job.stage = Stage.queued
        job.stage_started_at = now  # back in the queue since now (see claim_stale_queued)
        job.lease_owner, job.lease_expires_at = None, None
        job.error_code, job.error_message = code, message[:4000]
        session.commit()
        return JobState.QUEUED
    session.rollback()
    if job.cancel_requested:
        mark_cancelled(session, job_id)
        return JobState.CANCELLED
    fail_job(session, job_id, code, message)
    return JobState.FAILED


def cancel_requested(session: Session, job_id: str) -> bool:
    """True when the owner asked to cancel (checked by the worker between stages)."""
    value = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none()
    session.rollback()  # end the read transaction (fresh data on the next call)
    return bool(value)


def mark_cancelled(session: Session, job_id: str) -> None:
    """Any non-terminal state -> CANCELLED."""
    terminate(session, job_id, JobState.CANCELLED, cancel_requested=True)


def request_cancel(session: Session, job_id: str) -> JobState:
    """The owner's cancel: a QUEUED job becomes CANCELLED at once (conditional UPDATE, so a worker
    leasing it concurrently either wins first or finds it cancelled); a RUNNING job gets
    ``cancel_requested`` and stops at the next stage boundary. Returns the state after the call."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED)
        .values(state=JobState.CANCELLED, cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount == 1:  # type: ignore[attr-defined]
        job = load_job(session, job_id)
        if job is not None:
            outbox.on_terminal(session, job)
        session.commit()
        return JobState.CANCELLED
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    job = load_job(session, job_id)
    return job.state if job is not None else JobState.CANCELLED
