"""``GET /v1/jobs/{id}/events``: a job's progress as server-sent events (``text/event-stream``).

The stream starts with ``retry: 2000`` and the job's current ``progress`` event (so a reconnect needs
no ``Last-Event-ID``: it always starts from the current state), then sends a ``progress`` event
whenever something but the ETA changed (state, stage, done/total, circles, queue position; the
row is read every ``events_poll_s`` in the thread pool, never on the event loop), a ``: keep-alive``
comment every ``events_keepalive_s``, and ends with one ``state`` event (the whole job, as
``GET /v1/jobs/{id}``) once the job is terminal. A stream lasts at most ``events_max_s`` (then a
comment says so and it ends; reconnect); a key holds at most ``max_streams_per_key`` streams
(429 ``too_many_streams``). A job deleted meanwhile ends the stream with an ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from autopaint.db import Job
from services.api.deps import AppContext, Ctx, Owner
from services.api.errors import ApiError, not_found
from services.api.schemas import ErrorOut, JobOut, ProgressEventOut
from services.api.views import job_out

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
RETRY_MS = 2000
EVENTS_DOC = (
    "event: progress\ndata: {\"state\": \"running\", \"stage\": \"searching\", \"done\": 37, \"total\": 120, "
    "\"unit\": \"slices\", \"fraction\": 0.31, \"circles_done\": 5400, \"circles_total\": 17000, "
    "\"queue_position\": null, \"eta_s\": 42.5}\n\n: keep-alive\n\nevent: state\ndata: {...the job...}\n\n")


def _snapshot(ctx: AppContext, owner: str, job_id: str) -> JobOut | None:
    """The job as ``GET /v1/jobs/{id}`` shows it; None when it is not (or no longer) the owner's."""
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.owner_key_id != owner:
            return None
        return job_out(session, job)


def progress_data(job: JobOut) -> dict[str, Any]:
    """The data of a ``progress`` event."""
    p = job.progress
    return ProgressEventOut(state=job.state, stage=p.stage, done=p.done, total=p.total, unit=p.unit,
                            fraction=p.fraction, circles_done=p.circles_done, circles_total=p.circles_total,
                            queue_position=job.queue_position, eta_s=job.eta_s).model_dump(mode="json")


def _event_schema(event: str, component: str) -> dict[str, Any]:
    """One kind of event as OpenAPI describes an SSE item: ``event`` names it, ``data`` is JSON."""
    return {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"const": event},
                           "data": {"type": "string", "contentMediaType": "application/json",
                                    "contentSchema": {"$ref": f"#/components/schemas/{component}"}}}}


EVENT_SCHEMA = {"oneOf": [_event_schema("progress", "ProgressEventOut"), _event_schema("state", "JobOut"),
                          _event_schema("error", "ErrorOut")],
                "description": "one server-sent event (the stream is a sequence of them)"}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(ctx: AppContext, owner: str, job_id: str, job: JobOut | None,
                  release: Callable[[], None]) -> AsyncIterator[bytes]:
    s = ctx.settings
    start = last_sent = time.monotonic()
    last: dict[str, Any] | None = None
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            if job is None:
                yield sse("error", {"code": "not_found", "detail": "the job was deleted"})
                return
            data = progress_data(job)
            changed = {k: v for k, v in data.items() if k != "eta_s"}
            if changed != last:
                last, last_sent = changed, time.monotonic()
                yield sse("progress", data)
            if job.state.terminal:
                yield sse("state", job.model_dump(mode="json"))
                return
            if time.monotonic() - start >= s.events_max_s:
                yield b": the stream's time is up; reconnect for more\n\n"
                return
            if time.monotonic() - last_sent >= s.events_keepalive_s:
                last_sent = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(s.events_poll_s)
            job = await run_in_threadpool(_snapshot, ctx, owner, job_id)
    finally:
        release()


def _stream_slot(request: Request, ctx: AppContext, owner: str) -> Callable[[], None]:
    """Take one of the key's ``max_streams_per_key`` slots (counted on the event loop only); returns its
    release, safe to call more than once (the stream's end and the response's background both call it)."""
    counts: Counter[str] | None = getattr(request.app.state, "event_streams", None)
    if counts is None:
        counts = request.app.state.event_streams = Counter()
    cap = ctx.settings.max_streams_per_key
    if counts[owner] >= cap:
        ctx.metrics.rejections.labels("too_many_streams").inc()
        raise ApiError(429, "too_many_streams", f"this key already has {counts[owner]} event streams open (limit "
                       f"{cap})", headers={"Retry-After": "10"})
    counts[owner] += 1
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            counts[owner] -= 1
            if counts[owner] <= 0:
                del counts[owner]

    return release


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Follow a job's progress (server-sent events)",
    description="text/event-stream: the current `progress` event at once, another whenever the progress, "
    "stage, state or queue position changes, `: keep-alive` comments, and a final `state` event (the job, as "
    "GET /v1/jobs/{id}) when it has finished; then the stream ends. Reconnecting starts again from the current "
    "state (no Last-Event-ID needed).",
    responses={
        200: {"description": "the event stream", "content": {"text/event-stream": {
            "schema": EVENT_SCHEMA, "example": EVENTS_DOC}}},
        401: {"model": ErrorOut, "description": "missing or invalid API key"},
        404: {"model": ErrorOut, "description": "no such job (or another key's job)"},
        429: {"model": ErrorOut, "description": "too many open streams for this key (too_many_streams)"},
    },
)
async def job_events(job_id: str, request: Request, owner: Owner, ctx: Ctx) -> StreamingResponse:
    job = await run_in_threadpool(_snapshot, ctx, owner, job_id)
    if job is None:
        raise not_found()
    release = _stream_slot(request, ctx, owner)
    return StreamingResponse(_events(ctx, owner, job_id, job, release), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(release))
