"""The reconciler: no accepted job is stranded by a dead worker or a lost broker message.

It runs in the API process (a daemon thread started by the app's lifespan), because the API is the
one component every deployment has, on any broker: ``autopaint serve`` (embedded: SQLite + kombu
sqla) and the production API container (PostgreSQL + Redis, next to N workers). Every
``Settings.reconcile_every_s`` seconds (default ``lease_s / 2``) one pass:

1. **Expired leases.** A RUNNING job whose lease (``lease_s``, renewed by the worker's heartbeat
   every ``lease_s / 3``) ran out has no live worker: the child was killed, the whole worker died,
   or the worker lost the broker and was stopped. (A holder that was a process of this host and
   PID namespace and is gone, as in the embedded service, has its lease ended at once:
   ``autopaint.db.leases.expire_gone_leases``, checked every ``LOCAL_CHECK_S`` between passes.) The row goes back to QUEUED with code
   ``worker_lost`` and is published again; when its attempts are used up it ends FAILED
   (``max_attempts_exceeded``) instead, so a job that keeps killing its worker does not loop.
   (``autopaint.db.leases.reclaim_expired``.)
2. **Lost messages.** A QUEUED job that entered the queue more than ``stale_queued_after_s``
   seconds ago (default ``2 x lease_s``, longer than any countdown a worker puts on a retry) while
   the broker holds no message for its queue will never be delivered (the message was deleted with a
   dead worker's prefetch, or lost with a Redis that restarted without it): it is published again.
   A job is stamped when re-published, so each job is re-published at most once per period, by
   one API replica (``autopaint.db.leases.claim_stale_queued``), and at most ``reconcile_batch``
   jobs per pass.

Re-publishing is always safe: a duplicate message finds the job leased by a live worker (it waits
for the lease) or finished (it is dropped) in ``lease_job``, so a job never runs twice at once and
its result is written once. Publishing failures (the broker is down) are left to the next pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autopaint.db import leases
from autopaint.settings import Settings
from services.api.queue import Publisher

log = logging.getLogger(__name__)

LOCAL_CHECK_S = 2.0  # between passes: holders gone from this host (one small SELECT of RUNNING rows)


@dataclass
class Pass:
    """What one pass did (job counts)."""

    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    republished: int = 0
    publish_errors: int = 0


class Reconciler:
    """Finds stranded jobs and publishes them again; ``run_once`` for one pass, ``start`` for a
    daemon thread doing a pass every ``settings.reconcile_every_s`` seconds."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], publisher: Publisher,
                 metrics: Any = None) -> None:
        self.settings, self.sessions, self.publisher, self.metrics = settings, sessions, publisher, metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0

    def _publish(self, job_id: str, queue: str, done: Pass, action: str) -> None:
        try:
            self.publisher.publish(job_id, queue or self.settings.queue)
        except Exception as exc:  # the broker is down: the next pass tries again
            done.publish_errors += 1
            log.warning("reconciler: publishing job %s failed: %s", job_id, type(exc).__name__)
            return
        setattr(done, action, getattr(done, action) + 1)
        if self.metrics is not None:
            self.metrics.reconciled.labels(action).inc()

    def run_once(self) -> Pass:
        done = Pass()
        s = self.settings
        with self.sessions() as session:
            leases.expire_gone_leases(session)  # holders that died on this host (embedded): no wait
            reclaimed = leases.reclaim_expired(session, limit=s.reconcile_batch)
        for job_id, queue in reclaimed.requeued:
            self._publish(job_id, queue, done, "requeued")
        done.failed, done.cancelled = len(reclaimed.failed), len(reclaimed.cancelled)
        if self.metrics is not None:
            for action, n in (("failed", done.failed), ("cancelled", done.cancelled)):
                if n:
                    self.metrics.reconciled.labels(action).inc(n)
        with self.sessions() as session:
            waiting = leases.queued_queues(session, s.stale_queued_after_s)
        # only queues whose broker list is empty: a message still waiting there will deliver
        # its job (a backlog is not a loss); None = the broker cannot say, try next pass
        empty = {q for q in waiting if self.publisher.queue_length(q) == 0}
        if empty:
            with self.sessions() as session:
                stale = leases.claim_stale_queued(session, s.stale_queued_after_s, empty,
                                                  limit=max(0, s.reconcile_batch - done.requeued))
            for job_id, queue in stale:
                log.warning("reconciler: job %s queued without a message; publishing it again", job_id)
                self._publish(job_id, queue, done, "republished")
        if done.requeued or done.failed or done.cancelled or done.republished or done.publish_errors:
            log.info("reconciler pass: %s", done)
        self.passes += 1
        return done

    def check_gone_holders(self) -> bool:
        """End the leases of holders gone from this host; a full pass when there were any (so a
        job whose pool child was killed shows QUEUED again within seconds). True if it acted."""
        with self.sessions() as session:
            gone = leases.expire_gone_leases(session)
        if gone:
            self.run_once()
        return bool(gone)

    def _loop(self) -> None:
        every = self.settings.reconcile_every_s
        tick = min(every, LOCAL_CHECK_S)
        next_pass = time.monotonic() + every
        while not self._stop.wait(tick):
            try:
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + every
                    self.run_once()
                else:
                    self.check_gone_holders()
            except Exception as exc:  # the database blinked: the next pass tries again
                log.warning("reconciler pass failed: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        if self.settings.reconcile_every_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()
        log.info("reconciler: every %.1f s (lease %d s)", self.settings.reconcile_every_s, self.settings.lease_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The FastAPI lifespan: a reconciler thread while the app serves (off when
    ``reconcile_s == 0``)."""
    ctx = app.state.ctx
    rec = Reconciler(ctx.settings, ctx.sessions, ctx.publisher, ctx.metrics)
    app.state.reconciler = rec
    rec.start()
    try:
        yield
    finally:
        rec.stop()
