"""The API promises against the real PostgreSQL and Redis of this machine (marked services)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from autopaint.contracts import TASK_RUN_JOB, JobState
from autopaint.db import Job
from autopaint.settings import Settings
from services.api.queue import CeleryPublisher
from tests.imaging.badfiles import ROLE_FOR_CODE, build_bad_files
from tests.services.apikit import Api, write_pair
from tests.services.conftest import closed_port

pytestmark = pytest.mark.services


@pytest.fixture
def api(services_settings: Settings) -> Iterator[Api]:
    a = Api(services_settings, publisher=CeleryPublisher(services_settings))
    yield a
    a.close()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(tmp_path / "in")


def _redis(settings: Settings) -> tuple[redis.Redis, str]:
    client = redis.Redis.from_url(settings.broker_url)
    return client, f"{settings.broker_key_prefix}{settings.queue}"


def test_202_means_row_committed_and_message_in_redis(api: Api, pair: tuple[Path, Path]) -> None:
    client, qkey = _redis(api.settings)
    before = client.llen(qkey)
    r = api.submit({"ct": pair[0], "pet": pair[1]}, {"mode": "fast"})
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert api.job(jid).state == JobState.QUEUED and api.job(jid).inputs["ct"]["sha256"]
    assert client.llen(qkey) == before + 1
    msg = json.loads(client.lindex(qkey, 0))
    assert msg["headers"]["task"] == TASK_RUN_JOB and msg["headers"]["argsrepr"] == repr([jid])
    assert api.client.get("/readyz").json() == {"ready": True, "database": True, "broker": True, "storage": True}
    assert "autopaint_broker_queue_messages" in api.client.get("/metrics").text


def test_redis_down_503_no_queued_row(services_settings: Settings, pair: tuple[Path, Path]) -> None:
    down = services_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed_port()}/0",
                                                "publish_timeout_s": 1.0})
    api = Api(down, publisher=CeleryPublisher(down))
    try:
        r = api.submit({"ct": pair[0], "pet": pair[1]}, headers={"Idempotency-Key": "down-1"})
        assert r.status_code == 503 and r.json()["code"] == "broker_unavailable"
        with api.sessions() as s:
            rows = s.scalars(select(Job).where(Job.idempotency_key == "down-1")).all()
        assert [j.state for j in rows] == [JobState.FAILED.value]
        assert rows[0].error_code == "broker_unavailable"
        ready = api.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["broker"] is False
    finally:
        api.close()


def test_ownership_idempotency_cancel_delete(api: Api, pair: tuple[Path, Path]) -> None:
    a1 = api.submit({"ct": pair[0], "pet": pair[1]}, headers={"Idempotency-Key": "pg-1"}).json()["id"]
    a2 = api.submit({"ct": pair[0], "pet": pair[1]}, headers={"Idempotency-Key": "pg-1"}).json()["id"]
    assert a1 == a2
    assert api.client.get(f"/v1/jobs/{a1}", headers=api.h("b")).status_code == 404
    r = api.client.post(f"/v1/jobs/{a1}/cancel", headers=api.h())
    assert r.json()["state"] == "cancelled"
    assert api.client.delete(f"/v1/jobs/{a1}", headers=api.h()).status_code == 204
    assert api.client.get(f"/v1/jobs/{a1}", headers=api.h()).status_code == 404
    assert not (api.settings.storage_dir / "jobs" / a1).exists()


def test_413_and_bad_files_422(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"\x1f\x8b" + bytes(api.settings.max_upload_bytes))
    assert api.submit({"ct": big}).status_code == 413
    for code, path in build_bad_files(tmp_path / "bad").items():
        role = {"ct": "ct", "pet": "pet", "mask": "label"}[ROLE_FOR_CODE.get(code, "ct")]
        r = api.submit({**{"ct": pair[0], "pet": pair[1]}, role: path})
        assert r.status_code == 422 and r.json()["code"] == code, (code, r.text)
    assert api.stored_files() == []
