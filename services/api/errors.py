"""One mapping from exceptions to HTTP answers: JSON ``{"code", "detail"}`` everywhere."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autopaint.errors import AutopaintError, InvalidInput, ModelError
from autopaint.storage import UploadTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise in routes: answered as ``status`` with ``{"code": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.detail), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_req: Request, exc: UploadTooLarge) -> JSONResponse:
        # The rest of the body is not read; ask the client to stop sending.
        return JSONResponse(
            error_body("upload_too_large", str(exc)), status_code=413, headers={"Connection": "close"}
        )

    @app.exception_handler(InvalidInput)
    async def _invalid(_req: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=422)

    @app.exception_handler(ModelError)
    async def _model(_req: Request, exc: ModelError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=422)

    @app.exception_handler(AutopaintError)
    async def _other(_req: Request, exc: AutopaintError) -> JSONResponse:
        log.error("unhandled project error %s: %s", exc.code, exc)
        return JSONResponse(error_body(exc.code, str(exc)), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return JSONResponse(error_body("invalid_request", "; ".join(parts)[:2000]), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        # keep the exception's headers: a 405 carries the Allow header RFC 9110 requires
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
