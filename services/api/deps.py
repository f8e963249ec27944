"""Per-app objects (settings, database, storage, publisher, metrics) and request dependencies.

``require_owner`` is a plain header dependency: FastAPI resolves it before the endpoint body runs,
and the upload endpoint reads ``request.stream()`` itself, so an unauthenticated upload is answered
401 before any of its body is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from autopaint.settings import Settings
from autopaint.storage import Storage
from services.api.auth import ANONYMOUS_OWNER, authenticate
from services.api.errors import ApiError
from services.api.metrics import ApiMetrics
from services.api.queue import Publisher


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    publisher: Publisher
    metrics: ApiMetrics
    # workers alive, for /readyz: set by a process that runs its own workers (the embedded
    # service's supervisor); None for a plain API (production: workers are separate services)
    worker_status: Callable[[], int] | None = None


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def get_session(ctx: Annotated[AppContext, Depends(get_ctx)]) -> Iterator[Session]:
    with ctx.sessions() as session:
        yield session


# The security schemes only read the headers (auto_error=False: no FastAPI 403); FastAPI puts them
# in the OpenAPI document (components.securitySchemes + each route's ``security``, so Swagger UI has
# an Authorize button) and ``require_owner`` answers our own 401 JSON error.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="API key: `Authorization: Bearer ap_...` (`autopaint admin create-key`)")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                              description="the same API key in `X-API-Key` (alternative to Authorization)")


def _token(bearer: HTTPAuthorizationCredentials | None, x_api_key: str | None) -> str | None:
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if bearer is not None and bearer.credentials.strip():
        return bearer.credentials.strip()
    return None


def require_owner(
    ctx: Annotated[AppContext, Depends(get_ctx)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
    x_api_key: Annotated[str | None, Depends(api_key_scheme)] = None,
) -> str:
    """The id of the caller's API key (``anonymous`` when keys are not required)."""
    token = _token(bearer, x_api_key)
    if token is None:
        if not ctx.settings.api_key_required:
            return ANONYMOUS_OWNER
        raise ApiError(401, "unauthorized", "missing API key", headers={"WWW-Authenticate": "Bearer"})
    with ctx.sessions() as session:
        key = authenticate(session, token)
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return key.id


Owner = Annotated[str, Depends(require_owner)]
Ctx = Annotated[AppContext, Depends(get_ctx)]
DbSession = Annotated[Session, Depends(get_session)]
