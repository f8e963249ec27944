"""API keys: ``ap_<43 url-safe chars>`` tokens (32 random bytes); only their sha256 is stored.

A plain sha256 (not a slow password hash) is the right tool here: the token has 256 bits of
entropy, so brute force is hopeless and a fast hash keeps the per-request check cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from autopaint.db import ApiKey, utcnow

TOKEN_PREFIX = "ap_"
ANONYMOUS_OWNER = "anonymous"


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_api_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """Create and commit a key; return the row and the token (shown to the user once only)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(token), prefix=token[: len(TOKEN_PREFIX) + 6])
    session.add(row)
    session.commit()
    return row, token


def authenticate(session: Session, token: str) -> ApiKey | None:
    """The active key matching ``token`` (constant-time compare of the hashes), else None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_key(token)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    if row is None or row.revoked or not hmac.compare_digest(row.key_hash, digest):
        return None
    session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=utcnow()))
    session.commit()
    return row


def revoke_api_key(session: Session, key_id_or_prefix: str) -> int:
    """Revoke by id or by the shown prefix; return how many keys were revoked."""
    res = session.execute(
        update(ApiKey)
        .where((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
        .values(revoked=True)
    )
    session.commit()
    return int(res.rowcount)  # type: ignore[attr-defined]
