"""What bounds uploads to ``POST /v1/jobs``: uploads in flight per key, queued or running jobs per
key, the idle timeout between two body chunks, the slots of the memory-heavy ingest step, and the
janitor of upload folders left in ``state/uploads`` by a crashed or killed API."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from sqlalchemy import func, select

from autopaint.contracts import JobState
from autopaint.db import Job
from services.api.deps import AppContext
from services.api.errors import ApiError

log = logging.getLogger(__name__)


def clean_uploads(uploads: Path, max_age_s: float, now: float | None = None) -> int:
    """Remove leftover upload temp folders (``state/uploads/*``) older than ``max_age_s`` (a crashed
    or killed API leaves them); returns how many were removed."""
    if not uploads.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for entry in uploads.iterdir():
        try:
            if now - entry.lstat().st_mtime < max_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    if removed:
        log.info("upload janitor: removed %d leftover upload folder(s) from %s", removed, uploads)
    return removed


def _sole_user(state_dir: Path) -> bool:
    """True when this process holds the state folder's serve lock (``autopaint serve``, embedded: the
    lock file holds its PID): no other API can have uploads in flight there."""
    try:
        return (state_dir / "serve.lock").read_text().strip() == str(os.getpid())
    except OSError:
        return False


@asynccontextmanager
async def janitor_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At API start: the upload janitor — every leftover when this process is the state folder's
    only serve, else those older than ``upload_janitor_age_s`` (other API replicas may share it)."""
    ctx = getattr(app.state, "ctx", None)
    if ctx is not None:
        s = ctx.settings
        age = 0.0 if _sole_user(s.state_dir) else s.upload_janitor_age_s
        await asyncio.to_thread(clean_uploads, s.state_dir / "uploads", age)
    yield


@dataclass
class UploadLimits:
    """Per-app upload counters, touched only on the event loop (no lock needed): uploads in flight
    per key, and a semaphore on the memory-heavy validate + re-write + store step."""

    ingests: asyncio.Semaphore
    per_key: Counter[str] = field(default_factory=Counter)


def upload_limits(request: Request, ctx: AppContext) -> UploadLimits:
    """The app's upload counters (made at the first upload)."""
    lim: UploadLimits | None = getattr(request.app.state, "upload_limits", None)
    if lim is None:
        lim = UploadLimits(asyncio.Semaphore(ctx.settings.max_concurrent_ingests))
        request.app.state.upload_limits = lim
    return lim


def check_active_jobs(ctx: AppContext, owner: str) -> None:
    """429 ``too_many_jobs`` when the key already has ``max_active_jobs_per_key`` queued or running jobs."""
    cap = ctx.settings.max_active_jobs_per_key
    with ctx.sessions() as s:
        n = int(s.scalar(select(func.count()).select_from(Job).where(
            Job.owner_key_id == owner, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))) or 0)
    if n >= cap:
        ctx.metrics.rejections.labels("too_many_jobs").inc()
        raise ApiError(429, "too_many_jobs", f"this key has {n} queued or running jobs (limit {cap}); wait for "
                       "some to finish", headers={"Retry-After": "60"})


async def idle_limited(stream: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """``stream`` with at most ``idle_s`` seconds between two chunks; else 408 ``upload_timeout``."""
    it = stream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, "upload_timeout", f"no upload bytes received for {idle_s:g} s",
                           headers={"Connection": "close"}) from None
        yield chunk


@asynccontextmanager
async def ingest_slot(ctx: AppContext, lim: UploadLimits) -> AsyncIterator[None]:
    """One of ``max_concurrent_ingests`` slots, waiting at most ``ingest_wait_s``; else 503 ``busy``."""
    try:
        await asyncio.wait_for(lim.ingests.acquire(), timeout=max(ctx.settings.ingest_wait_s, 0.001))
    except TimeoutError:
        ctx.metrics.rejections.labels("busy").inc()
        raise ApiError(503, "busy", "the server is validating other uploads; try again shortly",
                       headers={"Retry-After": "10"}) from None
    try:
        yield
    finally:
        lim.ingests.release()
