"""Operations: ``/healthz``, ``/readyz`` (database + broker + ``storage``: a small write + delete in the
storage root, false when full or read-only; in the embedded service also ``workers``: the worker
processes alive, not ready at 0), ``/metrics`` and ``GET /v1/models``."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from autopaint.model_cards import list_cards
from autopaint.storage import probe_storage
from services.api.deps import Ctx, Owner
from services.api.schemas import ModelOut, ReadyOut

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness (the process answers)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _db_ok(ctx: Ctx) -> bool:
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        log.warning("readyz: database unavailable: %s", type(exc).__name__)
        return False


@router.get("/readyz", response_model=ReadyOut,
            summary="Readiness: database and broker reachable, storage writable (embedded: and a worker alive)",
            responses={503: {"model": ReadyOut}})
async def readyz(ctx: Ctx) -> JSONResponse:
    db = await run_in_threadpool(_db_ok, ctx)
    broker = await run_in_threadpool(ctx.publisher.ping)
    storage = await run_in_threadpool(probe_storage, ctx.storage)
    if not storage:
        log.warning("readyz: storage not writable")
    workers = ctx.worker_status() if ctx.worker_status is not None else None
    ready = db and broker and storage and (workers is None or workers > 0)
    body = ReadyOut(ready=ready, database=db, broker=broker, workers=workers, storage=storage)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(ctx: Ctx) -> Response:
    data = await run_in_threadpool(generate_latest, ctx.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=list[ModelOut], tags=["models"], summary="Models this service can run")
def list_models(ctx: Ctx, owner: Owner) -> list[ModelOut]:
    del owner
    cards = list_cards(ctx.settings.resolved_models_dir())
    return [
        ModelOut(name=c["name"], modality=c.get("modality"), size=c.get("size"), arch=c.get("arch"),
                 default_threshold=c.get("default_threshold"), has_weights=c["has_weights"],
                 weights_bytes=c["weights_bytes"], default=c["name"] == ctx.settings.default_model, card=c["card"])
        for c in cards
    ]
