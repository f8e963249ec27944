"""The FastAPI application: ``create_app(settings)``.

Importing this module (or calling ``create_app``) never imports torch: the API validates, stores
and enqueues by task name (``autopaint.contracts``); the worker does the computing.
"""

from __future__ import annotations

import logging
import re
import time
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from starlette.routing import compile_path

from autopaint import __version__
from autopaint.contracts import RESULTS, JobParams
from autopaint.db import make_engine, make_session_factory
from autopaint.settings import Settings
from autopaint.storage import make_storage
from services.api import (
    routes_callbacks,
    routes_cohorts,
    routes_events,
    routes_files,
    routes_jobs,
    routes_ops,
    routes_threshold,
    routes_viewer,
)
from services.api.deps import AppContext
from services.api.errors import install_error_handlers
from services.api.metrics import ApiMetrics
from services.api.queue import CeleryPublisher, Publisher
from services.api.reconciler import lifespan as reconciler_lifespan
from services.api.schemas import ErrorOut, ProgressEventOut
from services.api.urlguard import UrlGuard

log = logging.getLogger(__name__)

DESCRIPTION = """
Unsupervised tumour segmentation in PET/CT by autoinpainting (GconvLap).

Submit a case with `POST /v1/jobs` (multipart NIfTI upload, API key in `Authorization: Bearer ...`),
follow it with `GET /v1/jobs/{id}` (stage, progress in slices and circles, queue position, ETA) or as
server-sent events from `GET /v1/jobs/{id}/events`, or give a `callback_url` (job or cohort) to get a
signed POST when it finishes (secret: `GET /v1/callback-secret`), and download results from
`GET /v1/jobs/{id}/results/{name}`. Every error is JSON `ErrorOut`: RFC 9457
problem details (`type`, `title`, `status`, `detail`) plus our stable `code`.
"""

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SCHEMAS = "#/components/schemas/"
_ERROR_REF = {"$ref": _SCHEMAS + "ErrorOut"}
_FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return {"description": description or phrase, "content": {"application/json": {"schema": dict(_ERROR_REF)}}}


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` moved to ``components.schemas``."""
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return schema


def patch_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """The generated document, made to say what the service does (issue #14):

    - every 4xx/5xx of every operation is ``ErrorOut`` (FastAPI's ``HTTPValidationError`` is not
      what our 422 handler answers; it and ``ValidationError`` leave the components), and every
      operation documents a 500;
    - an operation with ``security`` (it depends on ``require_owner``) documents its 401;
    - ``JobParams`` is a component, and the multipart ``params`` field is a JSON string whose
      ``contentSchema`` is it. Responses that already name another body (``/readyz``'s 503 is a
      ``ReadyOut``) are kept."""
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_ERRORS:
        schemas.pop(name, None)
    schemas["ErrorOut"] = _hoist(ErrorOut.model_json_schema(ref_template=_SCHEMAS + "{model}"), schemas)
    # the data of GET /v1/jobs/{id}/events' progress events (referenced by its text/event-stream schema)
    schemas["ProgressEventOut"] = _hoist(ProgressEventOut.model_json_schema(ref_template=_SCHEMAS + "{model}"),
                                         schemas)
    params = _hoist(JobParams.model_json_schema(ref_template=_SCHEMAS + "{model}"), schemas)
    params["examples"] = [{"preset": "thorax", "mode": "fast", "suv_already": True},
                          {"model": "thorax-petct-gconvlap-128", "threshold": 0.3, "suv_already": False,
                           "weight_kg": 72.5, "injected_dose_bq": 3.5e8, "delay_s": 3600,
                           "half_life_s": 6586.2}]
    schemas["JobParams"] = params
    for path_item in doc.get("paths", {}).values():
        for op in path_item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses: dict[str, Any] = op["responses"]
            for status, resp in list(responses.items()):
                if not (status.isdigit() and int(status) >= 400):
                    continue
                media = resp.setdefault("content", {}).get("application/json")
                ref = (media or {}).get("schema", {}).get("$ref", "")
                if media is None or not ref or ref.rsplit("/", 1)[-1] in _FASTAPI_ERRORS:
                    resp["content"]["application/json"] = {"schema": dict(_ERROR_REF)}
                if int(status) == 422 and resp.get("description") == "Validation Error":
                    resp["description"] = "the request is invalid (code invalid_request, or the input's own code)"
            if "requestBody" in op:  # a body that is not JSON / not parseable: Starlette's 400
                responses.setdefault("400", _error_response(400, "the body cannot be parsed"))
            if op.get("security"):
                responses.setdefault("401", _error_response(401, "missing, invalid or revoked API key"))
            responses.setdefault("500", _error_response(500))
            ok = responses.get("200", {})
            if "application/octet-stream" in ok.get("content", {}) and any(
                    p.get("name") == "name" for p in op.get("parameters", [])):  # a result file
                ok["content"] = {ctype: {"schema": {} if ctype == "application/json" else
                                             {"type": "string", "format": "binary"}}
                                 for ctype in sorted(set(RESULTS.values()))}
            body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema", {})
            field = body.get("properties", {}).get("params")
            if field is not None:
                field.pop("example", None)
                field.update({"type": "string", "contentMediaType": "application/json",
                              "contentSchema": {"$ref": _SCHEMAS + "JobParams"},
                              "description": "JSON of JobParams (see its schema)",
                              "examples": ['{"preset": "thorax", "mode": "fast", "suv_already": true}']})
    return doc


def _install_openapi(app: FastAPI) -> None:
    plain = app.openapi

    def custom() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = patch_openapi(plain())
        return app.openapi_schema

    app.openapi = custom  # type: ignore[method-assign]


class _AllowMiddleware:
    """A 405 names every method of the path in ``Allow`` (RFC 9110 15.5.6). Starlette answers from
    the first route whose path matches, so ``PATCH /v1/jobs/{id}`` said ``Allow: GET`` although
    ``DELETE`` is there too; the handler in ``errors`` keeps the header, this completes it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._paths: list[tuple[re.Pattern[str], list[str]]] | None = None

    def _methods(self, app: FastAPI, path: str) -> list[str]:
        """The methods the OpenAPI document gives the path template(s) matching ``path``."""
        if self._paths is None:
            self._paths = [(compile_path(template)[0], [m.upper() for m in item if m in _HTTP_METHODS])
                           for template, item in app.openapi().get("paths", {}).items()]
        return sorted({m for regex, ms in self._paths if regex.match(path) for m in ms})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = self._methods(scope["app"], scope["path"])
                if methods:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    headers.append((b"allow", ", ".join(methods).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, _send)


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
    UrlGuard.from_settings(settings)  # a bad AUTOPAINT_CALLBACK_ALLOW fails here, at start
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
            {"name": "callbacks", "description": "The secret that signs your callbacks"},
            {"name": "operations", "description": "Health, readiness and metrics"},
        ],
        lifespan=reconciler_lifespan,  # re-publishes jobs stranded by dead workers or lost messages
    )
    app.state.ctx = AppContext(settings=settings, engine=engine, sessions=sessions,
                               storage=make_storage(settings), publisher=pub, metrics=metrics)
    install_error_handlers(app)
    for module in (routes_jobs, routes_files, routes_events, routes_threshold, routes_cohorts, routes_callbacks,
                   routes_ops):
        app.include_router(module.router)
    app.include_router(routes_viewer.router)
    app.add_middleware(_AllowMiddleware)
    app.add_middleware(_LatencyMiddleware, metrics=metrics)
    _install_openapi(app)
    return app
