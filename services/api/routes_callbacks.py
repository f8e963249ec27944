"""``/v1/callback-secret``: read and rotate the secret that signs your callbacks; the check of a
submitted callback URL; the dispatcher's lifespan (``services.api.callbacks``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from autopaint.db import ApiKey
from autopaint.db import callbacks as outbox
from autopaint.errors import InvalidInput
from autopaint.settings import Settings
from services.api.auth import ANONYMOUS_OWNER
from services.api.callbacks import lifespan
from services.api.deps import Ctx, DbSession, Owner
from services.api.errors import ApiError
from services.api.schemas import CallbackSecretOut, ErrorOut
from services.api.urlguard import UrlGuard

router = APIRouter(prefix="/v1/callback-secret", tags=["callbacks"], lifespan=lifespan)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid API key"},
    409: {"model": ErrorOut, "description": "the server runs without API keys (no secret to sign with)"},
}


def vet_callback_url(settings: Settings, owner: str, url: str | None) -> str | None:
    """The submitted callback URL, checked by the guard (DNS lookup: call it off the event loop);
    None when none was given. InvalidInput (422) when it is refused or cannot be signed."""
    url = (url or "").strip()
    if not url:
        return None
    if owner == ANONYMOUS_OWNER:
        raise InvalidInput("callbacks are signed with your API key's secret: this server runs without keys",
                           code="callback_requires_api_key")
    UrlGuard.from_settings(settings).check(url)
    return url


def _out(key: ApiKey, grace_s: float) -> CallbackSecretOut:
    rotated = key.callback_secret_rotated_at
    until = rotated + timedelta(seconds=grace_s) if rotated is not None and key.callback_secret_previous else None
    return CallbackSecretOut(secret=key.callback_secret, rotated_at=rotated, previous_valid_until=until)


def _key(session: DbSession, owner: str) -> ApiKey:
    key = session.get(ApiKey, owner) if owner != ANONYMOUS_OWNER else None
    if key is None:
        raise ApiError(409, "no_api_key", "this server runs without API keys: there is no callback secret")
    return key


@router.get("", response_model=CallbackSecretOut, summary="Your callback signing secret", responses=ERRORS,
            description="The HMAC-SHA256 secret that signs the callbacks of your API key's jobs and cohorts "
            "(header X-Autopaint-Signature: t=<unix>,v1=<hex of HMAC(secret, t + '.' + body)>); verify with "
            "autopaint.webhooks.verify.")
def get_secret(session: DbSession, owner: Owner, ctx: Ctx) -> CallbackSecretOut:
    return _out(_key(session, owner), ctx.settings.callback_secret_grace_s)


@router.post("/rotate", response_model=CallbackSecretOut, summary="Replace your callback signing secret",
             responses=ERRORS, description="A new random secret signs from now on (pending retries too); the "
             "previous one also signs, as a second v1 signature, until previous_valid_until.")
def rotate_secret(session: DbSession, owner: Owner, ctx: Ctx) -> CallbackSecretOut:
    key = outbox.rotate_secret(session, _key(session, owner).id)
    if key is None:  # gone in between
        raise ApiError(409, "no_api_key", "the API key is gone")
    return _out(key, ctx.settings.callback_secret_grace_s)
