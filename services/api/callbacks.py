"""The callback dispatcher: delivers the outbox (``autopaint.db.callbacks``) from the API process.

A daemon thread (started by the app's lifespan, like the reconciler; off when
``AUTOPAINT_CALLBACKS_ENABLED=false``) looks for due rows every ``callback_poll_s`` seconds, claims
at most ``callback_concurrency`` of them (a conditional UPDATE: with several API processes each row
is sent by one) and POSTs each one from a small thread pool:

- the URL is checked again by the guard (``services.api.urlguard``) and the request goes to the
  address the guard vetted (``Host`` and TLS SNI/certificate name stay the URL's host); a refused
  URL is recorded as an error and not sent;
- the body is the row's payload plus ``"id"`` (the delivery id) with links made absolute when
  ``public_url`` is set, encoded by ``autopaint.webhooks.encode_body`` and signed with the owner's
  key secret(s) (``autopaint.webhooks.signature_header``): headers ``X-Autopaint-Event``,
  ``X-Autopaint-Delivery``, ``X-Autopaint-Signature``, ``X-Autopaint-Attempt``;
- ``callback_timeout_s`` per attempt, redirects are not followed, the response body is not read,
  the environment's proxies are not used; only a 2xx counts as delivered;
- every attempt is recorded on the row (attempts, last status code or error, a short history); a
  failed one is retried after ``callback_backoff_s`` x 2^(attempts-1) (capped by
  ``callback_backoff_max_s``), spread by +-``callback_jitter``, until ``callback_max_attempts``;
- every ``callback_purge_every_s`` the thread deletes at most ``callback_purge_batch`` rows that are
  done (delivered or given up) and older than ``callback_retention_days`` (the next batch comes
  after one poll interval while a batch was full; 0 days keeps every row; a cohort's row stays
  while its cohort exists: ``autopaint.db.callbacks.purge_finished``).

Receivers get each event at least once (an API process that dies mid-attempt leaves the row to be
claimed again after its lease); they dedupe on ``X-Autopaint-Delivery``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from autopaint import __version__
from autopaint.db import callbacks as outbox
from autopaint.db import utcnow
from autopaint.settings import Settings
from autopaint.webhooks import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    encode_body,
    signature_header,
)
from services.api.urlguard import Target, UrlGuard, UrlNotAllowed

log = logging.getLogger(__name__)


def absolute_links(links: Any, base: str) -> Any:
    """``links`` (nested dicts of ``/v1/...`` paths) prefixed with ``base`` (unchanged when empty)."""
    if isinstance(links, dict):
        return {k: absolute_links(v, base) for k, v in links.items()}
    if isinstance(links, str) and base and links.startswith("/"):
        return base.rstrip("/") + links
    return links


def render(due: outbox.Due, public_url: str) -> bytes:
    """The exact body of one attempt (the same bytes on every retry of the row)."""
    payload = {**due.payload, "id": due.id}
    if "links" in payload:
        payload["links"] = absolute_links(payload["links"], public_url)
    return encode_body(payload)


class Dispatcher:
    """Claims due outbox rows and POSTs them; ``run_once`` for one round and ``purge_once`` for one
    retention batch (tests), ``start`` for the daemon thread. ``rng`` draws the retries' jitter (a
    seeded ``random.Random`` makes it reproducible)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], guard: UrlGuard | None = None,
                 transport: httpx.BaseTransport | None = None, rng: random.Random | None = None) -> None:
        self.settings, self.sessions = settings, sessions
        self.rng = rng if rng is not None else random.Random()
        self._next_purge = 0.0  # time.monotonic() of the next retention sweep (the first: at start)
        self.guard = guard if guard is not None else UrlGuard.from_settings(settings)
        self.http = httpx.Client(timeout=settings.callback_timeout_s, follow_redirects=False, trust_env=False,
                                 transport=transport, headers={"User-Agent": f"autopaint-callbacks/{__version__}"})
        self._pool = ThreadPoolExecutor(max_workers=settings.callback_concurrency, thread_name_prefix="callback")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight, self._lock = 0, threading.Lock()

    @property
    def lease_s(self) -> float:
        """How long a claim holds a row: longer than any attempt (connect + write + read timeouts)."""
        return 4 * self.settings.callback_timeout_s + 30.0

    def run_once(self) -> int:
        """Claim the due rows (at most ``callback_concurrency``) and attempt each, waiting for them all;
        returns how many (tests; the thread uses :meth:`_fill`)."""
        with self.sessions() as session:
            due = outbox.claim_due(session, self.settings.callback_concurrency, self.lease_s)
        list(self._pool.map(self._deliver, due))
        return len(due)

    def _fill(self) -> int:
        """Claim as many due rows as attempts may start now (a slow receiver holds one slot, not the
        round) and start them; returns how many started."""
        with self._lock:
            free = self.settings.callback_concurrency - self._inflight
        if free <= 0:
            return 0
        with self.sessions() as session:
            due = outbox.claim_due(session, free, self.lease_s)
        for row in due:
            with self._lock:
                self._inflight += 1
            self._pool.submit(self._deliver, row).add_done_callback(self._done)
        return len(due)

    def _done(self, _future: object) -> None:
        with self._lock:
            self._inflight -= 1

    def _deliver(self, due: outbox.Due) -> None:
        try:
            outcome = self.attempt(due)
        except Exception as exc:  # a bug must not kill the pool: record it and retry later
            log.exception("callback %s: attempt failed", due.id)
            outcome = outbox.Outcome(None, f"internal error: {type(exc).__name__}", 0)
        s = self.settings
        with self.sessions() as session:
            outbox.record_attempt(session, due, outcome, s.callback_max_attempts, s.callback_backoff_s,
                                  s.callback_backoff_max_s, s.callback_jitter, self.rng)
        log.info("callback %s %s -> %s (attempt %d)", due.id, due.event,
                 outcome.status_code if outcome.error is None else outcome.error, due.attempts + 1)

    def attempt(self, due: outbox.Due) -> outbox.Outcome:
        """One POST of ``due`` (guard, sign, send); never raises for the receiver's faults."""
        start = time.monotonic()
        try:
            target = self.guard.check(due.url)
        except UrlNotAllowed as exc:
            return outbox.Outcome(None, f"{exc.code}: {exc}", 0)
        with self.sessions() as session:
            secrets = outbox.signing_secrets(session, due.owner_key_id, self.settings.callback_secret_grace_s)
        if not secrets:
            return outbox.Outcome(None, "no_signing_secret: the job's API key is gone", 0)
        body = render(due, self.settings.public_url)
        headers = {"Content-Type": "application/json", EVENT_HEADER: due.event, DELIVERY_HEADER: due.id,
                   ATTEMPT_HEADER: str(due.attempts + 1), SIGNATURE_HEADER: signature_header(secrets, body)}
        status, error = self._post(target, body, headers)
        return outbox.Outcome(status, error, int((time.monotonic() - start) * 1000))

    def _post(self, target: Target, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """POST to the vetted addresses in turn (the next one only when connecting failed)."""
        error = "no address"
        headers = {**headers, "Host": target.host_header}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        for addr in target.addresses:
            try:
                with self.http.stream("POST", target.pinned_url(addr), content=body, headers=headers,
                                      extensions=extensions) as resp:
                    status = resp.status_code  # the body is not read
            except httpx.ConnectError as exc:
                error = f"connect error ({addr}): {exc}"
                continue
            except httpx.TimeoutException:
                return None, f"timeout after {self.settings.callback_timeout_s:g} s"
            except httpx.HTTPError as exc:
                return None, f"{type(exc).__name__}: {exc}"
            return status, None if 200 <= status < 300 else f"HTTP {status}"
        return None, error

    def purge_once(self) -> int:
        """Delete one batch (``callback_purge_batch``) of done rows older than the retention; returns
        how many (0 when ``callback_retention_days`` is 0: rows are kept)."""
        s = self.settings
        if s.callback_retention_days <= 0:
            return 0
        cutoff = utcnow() - timedelta(days=s.callback_retention_days)
        with self.sessions() as session:
            n = outbox.purge_finished(session, cutoff, s.callback_purge_batch)
        if n:
            log.info("callback outbox: deleted %d delivered or given-up rows older than %g days", n,
                     s.callback_retention_days)
        return n

    def _maybe_purge(self) -> None:
        """A retention sweep when one is due: every ``callback_purge_every_s``, or after one poll
        interval while the last batch was full (a backlog goes in bounded batches, not one DELETE)."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        s = self.settings
        try:
            full = self.purge_once() >= s.callback_purge_batch
        except Exception as exc:  # the database blinked: the next sweep tries again
            log.warning("callback outbox purge: %s: %s", type(exc).__name__, exc)
            full = False
        self._next_purge = now + (s.callback_poll_s if full else s.callback_purge_every_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._maybe_purge()
            try:
                started = self._fill()
            except Exception as exc:  # the database blinked: try again next round
                log.warning("callback dispatcher: %s: %s", type(exc).__name__, exc)
                started = 0
            if not started:  # nothing due, or every slot busy
                self._stop.wait(self.settings.callback_poll_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="callback-dispatcher", daemon=True)
            self._thread.start()
            log.info("callback dispatcher: every %.2f s, %d at once", self.settings.callback_poll_s,
                     self.settings.callback_concurrency)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.settings.callback_timeout_s)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)  # a claimed row not started: retried after its lease
        deadline = time.monotonic() + self.settings.callback_timeout_s
        while self._inflight > 0 and time.monotonic() < deadline:  # attempts under way may finish
            time.sleep(0.05)
        self.http.close()


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The dispatcher thread while the app serves (none when callbacks are turned off)."""
    ctx = getattr(app.state, "ctx", None)
    if ctx is None or not ctx.settings.callbacks_enabled:
        yield
        return
    dispatcher = Dispatcher(ctx.settings, ctx.sessions)
    app.state.callback_dispatcher = dispatcher
    dispatcher.start()
    try:
        yield
    finally:
        dispatcher.stop()
