"""Building response bodies from rows: progress, queue position and ETA."""

from __future__ import annotations

import math
from statistics import median

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from autopaint.contracts import JobState
from autopaint.db import CallbackDelivery, Job, utcnow
from autopaint.db import callbacks as outbox
from services.api.schemas import CallbackOut, InputOut, JobOut, ProgressOut

RECENT_JOBS = 20  # succeeded jobs whose run time feeds the ETA


def recent_duration_s(session: Session) -> float | None:
    """Median run time (started -> finished, seconds) of the last ``RECENT_JOBS`` succeeded jobs."""
    rows = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(Job.state == JobState.SUCCEEDED, Job.started_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(RECENT_JOBS)
    ).all()
    vals = [(f - s).total_seconds() for s, f in rows if s is not None and f is not None]
    return median(vals) if vals else None


def queue_position(session: Session, job: Job) -> int:
    """1 + the number of queued jobs of the same queue created before this one."""
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.state == JobState.QUEUED, Job.queue == job.queue, Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


def estimate_eta(session: Session, job: Job, position: int | None) -> float | None:
    """Seconds until ``job`` finishes. Running: the recent median minus the time already spent
    (at least a share of it proportional to the remaining fraction of the stage). Queued: the
    jobs ahead run in waves of ``max(1, running jobs)`` (the observed worker count), then this one."""
    typical = recent_duration_s(session)
    if typical is None or job.state.terminal:
        return None
    now = utcnow()
    if job.state == JobState.RUNNING:
        elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
        return round(max(typical - elapsed, 0.0), 1)
    workers = max(1, int(session.scalar(
        select(func.count()).select_from(Job).where(Job.state == JobState.RUNNING, Job.queue == job.queue)
    ) or 0))
    waves = math.ceil(((position or 1) - 1) / workers)
    return round((waves + 1) * typical, 1)


def callback_out(row: CallbackDelivery) -> CallbackOut:
    return CallbackOut(id=row.id, event=row.event, url=row.url, status=row.status,
                       attempts=row.attempts, last_status_code=row.last_status_code, last_error=row.last_error,
                       last_attempt_at=row.last_attempt_at, next_attempt_at=row.next_attempt_at,
                       delivered_at=row.delivered_at, created_at=row.created_at)


def job_out(session: Session, job: Job, with_eta: bool = True,
            callbacks: list[CallbackDelivery] | None = None) -> JobOut:
    """The job's JSON body; ``callbacks``: its outbox rows when the caller fetched them for a whole
    page (else they are read here)."""
    position = queue_position(session, job) if job.state == JobState.QUEUED and with_eta else None
    if callbacks is None:
        callbacks = outbox.deliveries(session, [job.id]).get(job.id, []) if job.callback_url else []
    done, total = job.progress_done, job.progress_total
    if job.state == JobState.SUCCEEDED:  # a finished job is 100 %, whatever its last stage counted
        done = total = max(total, 1)
    return JobOut(
        id=job.id,
        state=job.state,
        cohort_id=job.cohort_id,
        case_name=job.case_name,
        progress=ProgressOut(
            stage=job.stage,
            done=done,
            total=total,
            unit=job.progress_unit,
            circles_done=job.circles_done,
            circles_total=job.circles_total,
            fraction=(done / total) if total else None,
        ),
        queue_position=position,
        eta_s=estimate_eta(session, job, position) if with_eta else None,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        params=job.params or {},
        inputs={r: InputOut(sha256=v["sha256"], bytes=v["bytes"]) for r, v in (job.inputs or {}).items()},
        model_name=job.model_name,
        model_sha256=job.model_sha256,
        error_code=job.error_code,
        error_message=job.error_message,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        timings={k: float(v) for k, v in (job.timings or {}).items()},
        manifest=job.manifest,
        results_url=f"/v1/jobs/{job.id}/results" if job.state == JobState.SUCCEEDED else None,
        callback_url=job.callback_url,
        callbacks=[callback_out(c) for c in callbacks],
    )
