"""Callback signatures: the one home of how a callback is signed and how a receiver verifies it.

Every callback the service POSTs carries these headers::

    X-Autopaint-Event: job.succeeded
    X-Autopaint-Delivery: 6f1c...            (the delivery id: the same on every retry; dedupe on it)
    X-Autopaint-Signature: t=1767225600,v1=5e0b...[,v1=...]

``v1`` is the hex HMAC-SHA256 of ``f"{t}.".encode() + raw_body`` keyed with the API key's callback
secret (the secret string as UTF-8 bytes; ``GET /v1/callback-secret``). For a while after a
rotation (``POST /v1/callback-secret/rotate``) a second ``v1`` made with the previous secret is
added, so a receiver that still has the old secret keeps verifying. A receiver checks it in one call::

    from autopaint.webhooks import SignatureError, verify

    try:
        event = verify(secret, request.headers, raw_body)   # the decoded JSON body
    except SignatureError:
        return 400

This module uses the standard library only (no web, database or settings code): receivers and
the tests import it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

EVENT_HEADER = "X-Autopaint-Event"
DELIVERY_HEADER = "X-Autopaint-Delivery"
SIGNATURE_HEADER = "X-Autopaint-Signature"
ATTEMPT_HEADER = "X-Autopaint-Attempt"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0

JOB_EVENTS = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
"""The event of each terminal job state."""
COHORT_COMPLETED = "cohort.completed"


class SignatureError(ValueError):
    """The callback's signature is missing, malformed, stale or does not match."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}." + body`` keyed with ``secret`` (UTF-8)."""
    message = f"{int(timestamp)}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Iterable[str], body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Autopaint-Signature`` value: ``t=<unix>`` and one ``v1=`` per secret (current first)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return ",".join([f"t={t}"] + [f"{SCHEME}={sign(s, body, t)}" for s in secrets])


def parse_signature(value: str) -> tuple[int, list[str]]:
    """``(timestamp, [v1 signatures])`` of a header value; SignatureError when malformed."""
    t: int | None = None
    sigs: list[str] = []
    for part in value.split(","):
        key, _, val = part.strip().partition("=")
        if key == "t" and val.isdigit():
            t = int(val)
        elif key == SCHEME and val:
            sigs.append(val.strip())
    if t is None or not sigs:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    return t, sigs


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def verify(secret: str, headers: Mapping[str, str], body: bytes,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> dict[str, Any]:
    """Check a received callback and return its decoded JSON body.

    ``headers``: the request's headers (any mapping; names are matched case-insensitively);
    ``body``: the raw request body, exactly as received. Raises :class:`SignatureError` when the
    signature header is missing or malformed, its timestamp is more than ``tolerance_s`` seconds
    from ``now`` (default: the current time; replayed old callbacks fail), or no ``v1`` matches."""
    value = _header(headers, SIGNATURE_HEADER)
    if not value:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    t, sigs = parse_signature(value)
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        raise SignatureError(f"signature timestamp {t} is more than {tolerance_s:g} s from now")
    expected = sign(secret, body, t)
    if not any(hmac.compare_digest(expected, s) for s in sigs):
        raise SignatureError("signature does not match")
    try:
        event: dict[str, Any] = json.loads(body)
    except ValueError as exc:
        raise SignatureError("the body is not JSON") from exc
    return event


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes the service signs and sends for ``payload`` (compact, sorted keys, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
