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
Leases are conditional UPDATEs, so two workers that receive the same message (a re-delivery)
cannot both run the job: only one UPDATE matches the row.

Lease owners are ``host@pidns:pid`` (``lease_owner_id``); a process of the same host and PID
namespace can tell that an owner is gone (``owner_is_gone``) and end its lease at once
(``expire_gone_leases``). The reconciler (``services.api.reconciler``) also uses
``reclaim_expired``, which turns a
RUNNING job whose lease ran out (its worker died or lost the database) back into QUEUED (or
FAILED when its attempts are used up), and ``claim_stale_queued`` picks QUEUED jobs that waited
too long, stamping ``stage_started_at`` (the time the job entered the queue) so that several
reconcilers re-publish each job at most once per period.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from autopaint.contracts import ArtifactRecord, JobState
from autopaint.db import callbacks as outbox
from autopaint.db.models import Artifact, Job, utcnow
from autopaint.progress import Stage

log = logging.getLogger(__name__)

MAX_ATTEMPTS_CODE = "max_attempts_exceeded"
WORKER_LOST_CODE = "worker_lost"
RECONCILER = "reconciler"  # lease owner while the reconciler ends a job


def _pid_namespace() -> str:
    """This process's PID namespace (Linux ``/proc/self/ns/pid`` inode), '' where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid").rsplit("[", 1)[-1].rstrip("]")
    except OSError:
        return ""


def lease_owner_id(pid: int | None = None) -> str:
    """The lease owner a process writes on the rows it runs: ``host@pidns:pid`` (``host:pid``
    where the PID namespace is unknown). The namespace makes the PID checkable: two containers may
    share a host name, never a PID namespace."""
    ns, pid = _pid_namespace(), pid or os.getpid()
    return f"{socket.gethostname()}@{ns}:{pid}" if ns else f"{socket.gethostname()}:{pid}"


def owner_is_gone(owner: str | None) -> bool:
    """True only when ``owner`` (a :func:`lease_owner_id`) names a process of this host and PID
    namespace that no longer runs, so it certainly does not run its job; False when it runs, or is
    elsewhere (then only its lease's expiry tells). A reused PID looks alive: the safe side."""
    if not owner or "@" not in owner:
        return False
    where, _, pid = owner.rpartition(":")
    host, _, ns = where.rpartition("@")
    if host != socket.gethostname() or not ns or ns != _pid_namespace() or not pid.isdigit():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def lease_job(session: Session, job_id: str, worker_id: str, lease_s: float) -> Job | None:
    """Take the job for ``worker_id`` for ``lease_s`` seconds: QUEUED -> RUNNING, or RUNNING with an
    expired lease (the previous worker died) -> RUNNING; ``attempts`` + 1.

    Returns the leased job, or None when another worker holds a live lease, the job is terminal
    or unknown, or a cancel was requested (a QUEUED job is then CANCELLED here). A job whose
    attempts are used up is FAILED with code ``max_attempts_exceeded`` and None is returned.
    """
    now = utcnow()
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            Job.attempts < Job.max_attempts,
            or_(
                Job.state == JobState.QUEUED,
                and_(
                    Job.state == JobState.RUNNING,
                    or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
                ),
            ),
        )
        .values(
            state=JobState.RUNNING,
            attempts=Job.attempts + 1,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=now,
            stage=Stage.loading,
            stage_started_at=now,
            progress_done=0,
            progress_total=0,
            progress_unit="",
        )
        .execution_options(synchronize_session=False)
    )
    won = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    session.commit()
    job = _get(session, job_id)
    if won:
        log.info("job %s leased by %s (attempt %d)", job_id, worker_id, job.attempts if job else -1)
        return job
    if job is None:
        log.warning("lease of unknown job %s", job_id)
        return None
    if job.cancel_requested and job.state in (JobState.QUEUED, JobState.RUNNING):
        _lease_expired = job.lease_expires_at is None or job.lease_expires_at < now
        if job.state == JobState.QUEUED or _lease_expired:
            mark_cancelled(session, job_id)
        return None
    expired = job.lease_expires_at is None or job.lease_expires_at < now
    if job.attempts >= job.max_attempts and (
        job.state == JobState.QUEUED or (job.state == JobState.RUNNING and expired)
    ):
        fail_job(
            session,
            job_id,
            MAX_ATTEMPTS_CODE,
            f"the job was attempted {job.attempts} times (maximum {job.max_attempts}); "
            f"last error: {job.error_message or 'the worker died'}",
        )
    return None


def lease_remaining_s(session: Session, job_id: str) -> float | None:
    """Seconds left on a RUNNING job's lease (None when not running or no lease)."""
    job = _get(session, job_id)
    if job is None or job.state != JobState.RUNNING or job.lease_expires_at is None:
        return None
    return (job.lease_expires_at - utcnow()).total_seconds()


def heartbeat(session: Session, job_id: str, worker_id: str, lease_s: float) -> bool:
    """Extend the lease of a RUNNING job held by ``worker_id``; False when the lease was lost."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.state == JobState.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    ok = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    session.commit()
    return ok


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
    job = _get(session, job_id)
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
    job = _get(session, job_id)
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


def _terminate(session: Session, job_id: str, state: JobState, **fields: object) -> bool:
    """Any non-terminal state -> ``state`` (closing the current stage, dropping the lease, setting
    ``fields``); False when the job is gone or already terminal."""
    job = _get(session, job_id)
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
    if _terminate(session, job_id, JobState.FAILED, error_code=code, error_message=message[:4000]):
        log.info("job %s failed: %s", job_id, code)


def requeue_or_fail(session: Session, job_id: str, code: str, message: str) -> JobState:
    """After a retryable error: back to QUEUED while attempts < max_attempts, else FAILED.
    Returns the new state (or the current one when the job was already terminal)."""
    job = _get(session, job_id)
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
    _terminate(session, job_id, JobState.CANCELLED, cancel_requested=True)


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
        job = _get(session, job_id)
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
    job = _get(session, job_id)
    return job.state if job is not None else JobState.CANCELLED


@dataclass
class Reclaimed:
    """What :func:`reclaim_expired` did: ``requeued`` (job id, queue) pairs to publish again, and
    the ids it ``failed`` (attempts used up) or ``cancelled`` (a cancel was pending)."""

    requeued: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def expire_gone_leases(session: Session, job_id: str | None = None) -> list[str]:
    """End now the leases of RUNNING jobs (``job_id`` only, when given) whose owner is a process of
    this host that is gone (:func:`owner_is_gone`): a killed worker's job can then be taken over at
    once instead of one lease later. Conditional on the owner, so a new lease is never touched.
    Returns the job ids."""
    stmt = select(Job.id, Job.lease_owner).where(Job.state == JobState.RUNNING, Job.lease_owner.is_not(None))
    if job_id is not None:
        stmt = stmt.where(Job.id == job_id)
    rows = session.execute(stmt).all()
    session.rollback()
    expired: list[str] = []
    for jid, owner in rows:
        if not owner_is_gone(owner):
            continue
        res = session.execute(
            update(Job).where(Job.id == jid, Job.state == JobState.RUNNING, Job.lease_owner == owner)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            log.warning("job %s: its lease holder %s is gone; lease ended", jid, owner)
            expired.append(jid)
    return expired


def reclaim_expired(session: Session, limit: int = 100) -> Reclaimed:
    """RUNNING jobs whose lease expired (the worker stopped renewing it: it died, or lost the
    database) -> QUEUED with code ``worker_lost`` while attempts < max_attempts, else FAILED
    (``max_attempts_exceeded``); a pending cancel -> CANCELLED. At most ``limit`` jobs.

    Each transition is a conditional UPDATE on the expired lease, so it races safely with a
    worker re-taking the lease (``lease_job``) or renewing it (``heartbeat``): one wins.
    """
    out = Reclaimed()
    now = utcnow()
    expired = and_(Job.state == JobState.RUNNING,
                   or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
    rows = session.execute(
        select(Job.id, Job.queue, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.lease_owner)
        .where(expired).order_by(Job.lease_expires_at).limit(limit)
    ).all()
    session.rollback()
    for job_id, queue, attempts, max_attempts, cancel, owner in rows:
        if cancel:
            if _terminate_if(session, job_id, expired, JobState.CANCELLED):
                out.cancelled.append(job_id)
            continue
        message = (f"attempt {attempts} of {max_attempts}: the worker ({owner or 'unknown'}) stopped "
                   f"renewing its lease (it died or lost the database)")
        if attempts >= max_attempts:
            if _terminate_if(session, job_id, expired, JobState.FAILED, error_code=MAX_ATTEMPTS_CODE,
                             error_message=f"the job was attempted {attempts} times (maximum "
                                           f"{max_attempts}); last error: {message}"):
                out.failed.append(job_id)
                log.warning("job %s failed: %s", job_id, message)
            continue
        res = session.execute(
            update(Job).where(Job.id == job_id, expired)
            .values(state=JobState.QUEUED, stage=Stage.queued, stage_started_at=now,
                    lease_owner=None, lease_expires_at=None, error_code=WORKER_LOST_CODE,
                    error_message=message)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            out.requeued.append((job_id, queue))
            log.warning("job %s re-queued: %s", job_id, message)
    return out


def _terminate_if(session: Session, job_id: str, condition: Any, state: JobState, **fields: object) -> bool:
    """``_terminate`` when ``condition`` holds: the row is first taken by a conditional UPDATE
    (lease owner ``reconciler``), so no worker can lease it in between."""
    res = session.execute(update(Job).where(Job.id == job_id, condition)
                          .values(lease_owner=RECONCILER, lease_expires_at=utcnow() + timedelta(minutes=10))
                          .execution_options(synchronize_session=False))
    session.commit()
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    return _terminate(session, job_id, state, **fields)


def claim_stale_queued(session: Session, older_than_s: float, queues: set[str] | None = None,
                       limit: int = 100) -> list[tuple[str, str]]:
    """QUEUED jobs (oldest first, at most ``limit``, in ``queues`` when given) that entered the
    queue more than ``older_than_s`` seconds ago; each returned job was stamped as re-queued now
    by a conditional UPDATE, so concurrent callers never return the same job in one period."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    since = func.coalesce(Job.stage_started_at, Job.created_at)
    stale = and_(Job.state == JobState.QUEUED, Job.cancel_requested.is_(False), since < cutoff)
    stmt = select(Job.id, Job.queue).where(stale).order_by(since).limit(limit)
    if queues is not None:
        stmt = stmt.where(Job.queue.in_(sorted(queues)))
    rows = session.execute(stmt).all()
    session.rollback()
    won: list[tuple[str, str]] = []
    for job_id, queue in rows:
        res = session.execute(update(Job).where(Job.id == job_id, stale).values(stage_started_at=now)
                              .execution_options(synchronize_session=False))
        session.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            won.append((job_id, queue))
    return won


def queued_queues(session: Session, older_than_s: float) -> dict[str, int]:
    """Queues holding QUEUED jobs that entered the queue more than ``older_than_s`` seconds ago,
    with their counts."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    since = func.coalesce(Job.stage_started_at, Job.created_at)
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.state == JobState.QUEUED, Job.cancel_requested.is_(False),
                                              since < cutoff).group_by(Job.queue)
    ).all()
    session.rollback()
    return {q: int(n) for q, n in rows}
