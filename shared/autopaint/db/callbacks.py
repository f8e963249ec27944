"""The callback outbox (``callback_deliveries``): what to POST, inserted in the same transaction as
the state change it announces, then claimed and recorded by the API's dispatcher
(``services.api.callbacks``).

- :func:`on_terminal` is called by ``autopaint.db.jobs`` inside every transaction that makes a job
  terminal (``finish_job``, ``terminate`` — fail, cancel, the reconciler giving up —, and
  ``request_cancel``), before its commit: a ``job.<state>`` row when the job has a callback URL,
  and a ``cohort.completed`` row when the job was its cohort's last unfinished one. A crash after
  the commit cannot lose the callback; a rollback cannot send one for a change that did not happen.
- Exactly once per (job, event) and per (cohort, event): unique constraints, inserted with
  ``ON CONFLICT DO NOTHING``. The cohort check locks the cohort row (PostgreSQL ``FOR NO KEY
  UPDATE``; SQLite serialises writers anyway), so two jobs finishing at once cannot both see the
  other one unfinished and leave the cohort without its event.
- :func:`claim_due` takes due rows with a conditional UPDATE (a claim token and a lease pushed into
  ``next_attempt_at``), so several API processes never send one row at once; :func:`record_attempt`
  writes the outcome only while the claim is still held, and schedules a retry after
  :func:`backoff_s` (exponential, spread by a jitter).
- :func:`purge_finished` deletes, a bounded batch at a time, the rows that are done (delivered, or
  given up) and older than the retention; rows still pending are never deleted, nor a
  ``cohort.completed`` row while its cohort exists (its unique row is what keeps a later close or
  a late job of that cohort from sending a second one).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from autopaint.contracts import JobState
from autopaint.db.models import ApiKey, Artifact, CallbackDelivery, Cohort, Job, new_id, new_secret, utcnow
from autopaint.webhooks import COHORT_COMPLETED, JOB_EVENTS

log = logging.getLogger(__name__)

HISTORY = 10  # attempts kept per row (the newest)
ERROR_MAX = 500  # characters of an attempt's error kept


def iso(value: datetime | None) -> str | None:
    """Naive UTC (the database convention) as RFC 3339 with ``Z``."""
    return None if value is None else value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


# --- inserting (inside the terminal transaction) ----------------------------------------------


def _insert_once(session: Session, values: dict[str, Any]) -> None:
    """Insert an outbox row unless its (job, event) / (cohort, event) exists (no error, no rollback)."""
    now = utcnow()
    row = {"id": new_id(), "attempts": 0, "history": [], "next_attempt_at": now, "created_at": now, **values}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(CallbackDelivery).values(**row).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(CallbackDelivery).values(**row).on_conflict_do_nothing())
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        key = "job_id" if values.get("job_id") else "cohort_id"
        if session.scalar(select(CallbackDelivery.id).where(
                getattr(CallbackDelivery, key) == values[key], CallbackDelivery.event == values["event"])) is None:
            session.add(CallbackDelivery(**row))


def job_payload(session: Session, job: Job) -> dict[str, Any]:
    """The body of a ``job.<state>`` callback (without the delivery id the dispatcher adds)."""
    links: dict[str, Any] = {"job": f"/v1/jobs/{job.id}"}
    if job.state == JobState.SUCCEEDED:
        names = session.scalars(select(Artifact.name).where(Artifact.job_id == job.id).order_by(Artifact.name))
        links["results"] = f"/v1/jobs/{job.id}/results"
        links["files"] = {n: f"/v1/jobs/{job.id}/results/{n}" for n in names}
    return {
        "event": JOB_EVENTS[job.state.value],
        "job": {"id": job.id, "state": job.state.value, "cohort_id": job.cohort_id, "case_name": job.case_name,
                "error_code": job.error_code, "error_message": job.error_message,
                "created_at": iso(job.created_at), "finished_at": iso(job.finished_at)},
        "links": links,
    }


def _cohort_payload(cohort: Cohort, counts: Counter[str]) -> dict[str, Any]:
    return {
        "event": COHORT_COMPLETED,
        "cohort": {"id": cohort.id, "name": cohort.name, "jobs": sum(counts.values()), "counts": dict(counts),
                   "created_at": iso(cohort.created_at), "completed_at": iso(utcnow())},
        "links": {"cohort": f"/v1/cohorts/{cohort.id}", "lesions_csv": f"/v1/cohorts/{cohort.id}/lesions.csv",
                  "metrics_csv": f"/v1/cohorts/{cohort.id}/metrics.csv"},
    }


def complete_cohort(session: Session, cohort_id: str) -> None:
    """A ``cohort.completed`` row when every job of the cohort is terminal (and there are at least
    ``expected_jobs`` of them); the cohort row is locked first (see the module docstring). Not
    committed: called by :func:`on_terminal` and when the owner closes the cohort."""
    cohort = session.scalars(select(Cohort).where(Cohort.id == cohort_id)
                             .with_for_update(key_share=True)).first()
    if cohort is None or not cohort.callback_url:
        return
    rows = session.execute(select(Job.state).where(Job.cohort_id == cohort_id)).scalars().all()
    counts = Counter(JobState(s).value for s in rows)
    if not rows or any(not JobState(s).terminal for s in rows) or len(rows) < (cohort.expected_jobs or 0):
        return
    _insert_once(session, {"owner_key_id": cohort.owner_key_id, "cohort_id": cohort.id, "event": COHORT_COMPLETED,
                           "url": cohort.callback_url, "payload": _cohort_payload(cohort, counts)})


def on_terminal(session: Session, job: Job) -> None:
    """Queue the callbacks ``job`` becoming terminal triggers; call before committing that change."""
    if job.callback_url:
        _insert_once(session, {"owner_key_id": job.owner_key_id, "job_id": job.id,
                               "event": JOB_EVENTS[job.state.value], "url": job.callback_url,
                               "payload": job_payload(session, job)})
    if job.cohort_id:
        complete_cohort(session, job.cohort_id)


# --- dispatching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A claimed row, detached from the session: what one attempt needs."""

    id: str
    token: str
    owner_key_id: str
    event: str
    url: str
    payload: dict[str, Any]
    attempts: int


def claim_due(session: Session, limit: int, lease_s: float) -> list[Due]:
    """Claim at most ``limit`` due rows (oldest due first) for ``lease_s`` seconds."""
    now = utcnow()
    due = CallbackDelivery.next_attempt_at <= now
    ids = session.scalars(select(CallbackDelivery.id).where(due)
                          .order_by(CallbackDelivery.next_attempt_at).limit(limit)).all()
    session.rollback()
    out: list[Due] = []
    for row_id in ids:
        token = new_id()
        res = session.execute(update(CallbackDelivery).where(CallbackDelivery.id == row_id, due)
                              .values(next_attempt_at=now + timedelta(seconds=lease_s), claimed_by=token)
                              .execution_options(synchronize_session=False))
        session.commit()
        if res.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another dispatcher took it
        row = session.get(CallbackDelivery, row_id, populate_existing=True)
        if row is not None:
            out.append(Due(row.id, token, row.owner_key_id, row.event, row.url, dict(row.payload), row.attempts))
    session.rollback()
    return out


def backoff_s(attempts: int, base_s: float, max_s: float, jitter: float = 0.0,
              rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: base, 2 base, 4 base...
    capped at ``max_s``, then spread uniformly over +-``jitter`` of that (0.2: between 0.8 and 1.2
    times), so that many callbacks that failed together (a receiver's outage) do not all come back
    in the same second. ``rng`` draws the spread (a seeded ``random.Random`` in tests)."""
    delay = float(min(max_s, base_s * 2 ** max(0, attempts - 1)))
    if jitter > 0:
        delay *= (rng or random).uniform(1.0 - jitter, 1.0 + jitter)
    return delay


@dataclass(frozen=True)
class Outcome:
    """One attempt: the HTTP status (None when nothing was answered), an error (None on 2xx)."""

    status_code: int | None
    error: str | None
    ms: int

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def record_attempt(session: Session, due: Due, outcome: Outcome, max_attempts: int,
                   base_s: float, max_s: float, jitter: float = 0.0, rng: random.Random | None = None) -> bool:
    """Write one attempt's outcome and schedule the next one after :func:`backoff_s` (or end the
    row: delivered, or given up after ``max_attempts``); False when the claim was lost (another
    process re-claimed it)."""
    row = session.get(CallbackDelivery, due.id, populate_existing=True)
    if row is None or row.claimed_by != due.token:
        session.rollback()
        return False
    now = utcnow()
    attempts = row.attempts + 1
    error = None if outcome.error is None else outcome.error[:ERROR_MAX]
    entry = {"at": iso(now), "status_code": outcome.status_code, "error": error, "ms": outcome.ms}
    done = outcome.delivered or attempts >= max_attempts
    res = session.execute(
        update(CallbackDelivery).where(CallbackDelivery.id == due.id, CallbackDelivery.claimed_by == due.token)
        .values(attempts=attempts, last_status_code=outcome.status_code, last_error=error, last_attempt_at=now,
                history=[*(row.history or [])[-(HISTORY - 1):], entry], claimed_by=None,
                delivered_at=now if outcome.delivered else None,
                next_attempt_at=None if done else now + timedelta(
                    seconds=backoff_s(attempts, base_s, max_s, jitter, rng)))
        .execution_options(synchronize_session=False))
    session.commit()
    if done and not outcome.delivered:
        log.warning("callback %s (%s) gave up after %d attempts: %s", due.id, due.event, attempts, error)
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def finished_at() -> Any:
    """When a done row ended: its delivery, else its last attempt (given up), else its creation."""
    return func.coalesce(CallbackDelivery.delivered_at, CallbackDelivery.last_attempt_at,
                         CallbackDelivery.created_at)


def purge_finished(session: Session, older_than: datetime, limit: int) -> int:
    """Delete at most ``limit`` rows that are done (delivered, or given up: ``next_attempt_at`` NULL)
    and ended before ``older_than`` (naive UTC); committed. Returns how many were deleted. A pending
    row (due, leased or waiting for its retry) is never deleted, whatever its age; nor is a cohort's
    row while the cohort exists (the exactly-once marker of its ``cohort.completed``: one per cohort).
    A job's rows can go: a job becomes terminal once."""
    old = and_(CallbackDelivery.next_attempt_at.is_(None), CallbackDelivery.cohort_id.is_(None),
               finished_at() < older_than)
    ids = session.scalars(select(CallbackDelivery.id).where(old).limit(limit)).all()
    if not ids:
        session.rollback()
        return 0
    res = session.execute(delete(CallbackDelivery).where(CallbackDelivery.id.in_(ids), old)
                          .execution_options(synchronize_session=False))
    session.commit()
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def deliveries(session: Session, job_ids: list[str] | None = None,
               cohort_id: str | None = None) -> dict[str, list[CallbackDelivery]]:
    """Outbox rows by job id (``job_ids``) or of one cohort (key: the cohort id), oldest first."""
    if cohort_id is not None:
        stmt = select(CallbackDelivery).where(CallbackDelivery.cohort_id == cohort_id)
    elif job_ids:
        stmt = select(CallbackDelivery).where(CallbackDelivery.job_id.in_(job_ids))
    else:
        return {}
    out: dict[str, list[CallbackDelivery]] = {}
    for row in session.scalars(stmt.order_by(CallbackDelivery.created_at, CallbackDelivery.id)):
        out.setdefault(row.job_id or row.cohort_id or "", []).append(row)
    return out


# --- the signing secrets of a key ---------------------------------------------------------------


def signing_secrets(session: Session, key_id: str, grace_s: float) -> list[str]:
    """The secrets that sign a callback of ``key_id``: the current one, and the previous one until
    ``grace_s`` seconds after a rotation. Empty when the key is unknown."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return []
    out = [key.callback_secret]
    rotated = key.callback_secret_rotated_at
    if key.callback_secret_previous and rotated is not None and (utcnow() - rotated).total_seconds() < grace_s:
        out.append(key.callback_secret_previous)
    return out


def rotate_secret(session: Session, key_id: str) -> ApiKey | None:
    """A new callback secret for ``key_id`` (the old one kept as ``previous``); committed."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return None
    key.callback_secret_previous, key.callback_secret = key.callback_secret, new_secret()
    key.callback_secret_rotated_at = utcnow()
    session.commit()
    return key
