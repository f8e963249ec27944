"""One mapping from exceptions to HTTP answers: JSON ``{"code", "detail"}`` everywhere.

Storage faults: ``StorageFull`` (``ENOSPC``/``EDQUOT``) -> 507 ``storage_full``; ``StorageUnavailable``
(read-only, permissions, I/O) -> 503 ``storage_unavailable``; a bare ``OSError`` with one of those
errnos (e.g. the upload's temp file in ``state/uploads``) is answered the same way. Anything else
unhandled -> 500 ``internal_error`` (logged with its traceback; the body carries none)."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from autopaint.errors import AutopaintError, InvalidInput, ModelError
from autopaint.storage import StorageFull, StorageUnavailable, UploadTooLarge, storage_error_from

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise in routes: answered as ``status`` with ``{"code": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Our one error body (``ErrorOut``): RFC 7807 ``type``/``title``/``status``/``detail`` plus the stable
    snake_case ``code``."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "code": code,
            "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


STORAGE_RETRY_AFTER = "60"


def storage_response(exc: StorageFull | StorageUnavailable) -> JSONResponse:
    status = 507 if isinstance(exc, StorageFull) else 503
    return error_response(status, exc.code, str(exc), {"Retry-After": STORAGE_RETRY_AFTER})


def internal_error() -> JSONResponse:
    return error_response(500, "internal_error", "internal server error; the server logged the details")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StorageFull)
    @app.exception_handler(StorageUnavailable)
    async def _storage(_req: Request, exc: StorageFull | StorageUnavailable) -> JSONResponse:
        return storage_response(exc)

    @app.exception_handler(OSError)
    async def _os_error(req: Request, exc: OSError) -> JSONResponse:
        mapped = storage_error_from(exc)
        if isinstance(mapped, StorageFull | StorageUnavailable):
            log.error("%s %s: storage fault: %s", req.method, req.url.path, exc)
            return storage_response(mapped)
        log.error("%s %s: unhandled %s", req.method, req.url.path, type(exc).__name__, exc_info=exc)
        return internal_error()

    @app.exception_handler(DBAPIError)
    async def _database(req: Request, exc: DBAPIError) -> JSONResponse:
        # a connection dropped under a query (server restart, failover, pg_terminate_backend) or a
        # database that cannot answer now: transient, the client may retry (the pool reconnects)
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            log.warning("%s %s: database unavailable: %s", req.method, req.url.path, type(exc.orig).__name__)
            return error_response(503, "database_unavailable", "the database is unavailable; retry shortly",
                                  {"Retry-After": "1"})
        log.error("%s %s: unhandled %s", req.method, req.url.path, type(exc).__name__, exc_info=exc)
        return internal_error()

    @app.exception_handler(Exception)
    async def _unhandled(req: Request, exc: Exception) -> JSONResponse:
        # Starlette runs this in its outermost middleware: the answer is our JSON, not "Internal
        # Server Error" in plain text (the exception is still re-raised there for the server's log)
        log.error("%s %s: unhandled %s", req.method, req.url.path, type(exc).__name__, exc_info=exc)
        return internal_error()

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_req: Request, exc: UploadTooLarge) -> JSONResponse:
        # The rest of the body is not read; ask the client to stop sending.
        return error_response(413, "upload_too_large", str(exc), {"Connection": "close"})

    @app.exception_handler(InvalidInput)
    async def _invalid(_req: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(422, exc.code, str(exc))

    @app.exception_handler(ModelError)
    async def _model(_req: Request, exc: ModelError) -> JSONResponse:
        return error_response(422, exc.code, str(exc))

    @app.exception_handler(AutopaintError)
    async def _other(_req: Request, exc: AutopaintError) -> JSONResponse:
        log.error("unhandled project error %s: %s", exc.code, exc)
        return error_response(500, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts)[:2000])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                401: "unauthorized"}.get(exc.status_code, "http_error")
        # keep the exception's headers: a 405 carries the Allow header RFC 9110 requires
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
