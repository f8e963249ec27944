"""Job leases: who runs a job and for how long, and what the reconciler does when that ends.

A worker takes a job with :func:`lease_job` (a conditional UPDATE, so two workers that receive the
same message, a re-delivery, cannot both run it: only one UPDATE matches the row) and renews it
with :func:`heartbeat`. Every function takes an open ``Session``, commits its own transactions and
returns plain values; a lease that ends a job goes through the transitions of
:mod:`autopaint.db.jobs` (which queue the job's callbacks in the same transaction).

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
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from autopaint.contracts import JobState
from autopaint.db.jobs import fail_job, load_job, mark_cancelled, terminate
from autopaint.db.models import Job, utcnow
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
    job = load_job(session, job_id)
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
    job = load_job(session, job_id)
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
    """``terminate`` when ``condition`` holds: the row is first taken by a conditional UPDATE
    (lease owner ``reconciler``), so no worker can lease it in between."""
    res = session.execute(update(Job).where(Job.id == job_id, condition)
                          .values(lease_owner=RECONCILER, lease_expires_at=utcnow() + timedelta(minutes=10))
                          .execution_options(synchronize_session=False))
    session.commit()
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    return terminate(session, job_id, state, **fields)


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
