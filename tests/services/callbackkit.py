"""Helpers of the callback tests (``test_callbacks.py``, ``test_callback_outbox.py``): job rows made
without an upload, the worker played through the job repository, the dispatcher driven with
``run_once``. The ``cb_api`` and ``receiver`` fixtures are in ``conftest.py``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from autopaint.contracts import JobState
from autopaint.db import ApiKey, CallbackDelivery, Job, leases, new_id
from autopaint.db import jobs as repo
from services.api.auth import hash_key
from services.api.callbacks import Dispatcher
from tests.services.apikit import Api


def owner_id(api: Api, who: str = "a") -> str:
    with api.sessions() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(api.key_a if who == "a" else api.key_b)))
        return key.one().id


def callback_secret(api: Api) -> str:
    r = api.client.get("/v1/callback-secret", headers=api.h())
    assert r.status_code == 200, r.text
    return str(r.json()["secret"])


def queued_job(api: Api, url: str | None, cohort_id: str | None = None) -> str:
    """A QUEUED job row of key ``a`` (what a submit commits), without an upload."""
    job_id = new_id()
    with api.sessions() as s:
        s.add(Job(id=job_id, owner_key_id=owner_id(api), state=JobState.QUEUED, params={}, inputs={},
                  callback_url=url, cohort_id=cohort_id, queue=api.settings.queue))
        s.commit()
    return job_id


def succeed(sessions: Any, job_id: str) -> None:
    """Play the worker: lease and finish the job (``finish_job``, as the worker does)."""
    with sessions() as s:
        assert leases.lease_job(s, job_id, f"w-{job_id[:6]}", 60) is not None
        assert repo.finish_job(s, job_id, {"model": {"name": "fake"}}, [])


def drain(d: Dispatcher, done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the dispatcher did not get there in time"
        d.run_once()
        time.sleep(0.02)


def deliveries(api: Api) -> list[CallbackDelivery]:
    with api.sessions() as s:
        return list(s.scalars(select(CallbackDelivery).order_by(CallbackDelivery.created_at)))
