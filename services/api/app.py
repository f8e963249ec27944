"""The FastAPI application: ``create_app(settings)``.

Importing this module (or calling ``create_app``) never imports torch: the API validates, stores
and enqueues by task name (``autopaint.contracts``); the worker does the computing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI

from autopaint import __version__
from autopaint.db import make_engine, make_session_factory
from autopaint.settings import Settings
from autopaint.storage import make_storage
from services.api import routes_cohorts, routes_jobs, routes_ops, routes_threshold, routes_viewer
from services.api.deps import AppContext
from services.api.errors import install_error_handlers
from services.api.metrics import ApiMetrics
from services.api.queue import CeleryPublisher, Publisher
from services.api.reconciler import lifespan as reconciler_lifespan

log = logging.getLogger(__name__)

DESCRIPTION = """
Unsupervised tumour segmentation in PET/CT by autoinpainting (GconvLap).

Submit a case with `POST /v1/jobs` (multipart NIfTI upload, API key in `Authorization: Bearer ...`),
follow it with `GET /v1/jobs/{id}` (stage, progress in slices and circles, queue position, ETA),
download results from `GET /v1/jobs/{id}/results/{name}`. Errors are JSON `{"code", "detail"}`.
"""


class _LatencyMiddleware:
    """Pure ASGI (does not touch the request body): request latency by route template."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(scope["method"], route, str(status[0])).observe(
                time.perf_counter() - start
            )


def create_app(settings: Settings, publisher: Publisher | None = None) -> FastAPI:
    """Build the API for ``settings``. ``publisher``: the job publisher (default: Celery on
    ``settings.broker_url``); tests pass fakes. The schema must exist (``autopaint admin migrate``)."""
    settings.ensure_dirs()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    pub: Publisher = publisher if publisher is not None else CeleryPublisher(settings)
    metrics = ApiMetrics(sessions, lambda: pub.queue_length(settings.queue))
    app = FastAPI(
        title="autopaint",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Submit cases and follow them"},
            {"name": "cohorts", "description": "Groups of jobs with aggregated results"},
            {"name": "models", "description": "Available inpainting models"},
            {"name": "operations", "description": "Health, readiness and metrics"},
        ],
        lifespan=reconciler_lifespan,  # re-publishes jobs stranded by dead workers or lost messages
    )
    app.state.ctx = AppContext(settings=settings, engine=engine, sessions=sessions,
                               storage=make_storage(settings), publisher=pub, metrics=metrics)
    install_error_handlers(app)
    for module in (routes_jobs, routes_threshold, routes_cohorts, routes_ops):
        app.include_router(module.router)
    app.include_router(routes_viewer.router)
    app.add_middleware(_LatencyMiddleware, metrics=metrics)
    return app
