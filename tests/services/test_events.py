"""Server-sent events and the callback round trip on a live service (issue #14).

The embedded service (uvicorn + one real worker process, SQLite, the TEST-ONLY fake pipeline that
walks the stages in about a second) runs a job; ``GET /v1/jobs/{id}/events`` streams its progress
and ends with its state, and the dispatcher thread the API's lifespan started POSTs the signed
``job.succeeded`` to a loopback receiver. Also: 404 for another key's job, the per-key stream cap
(429), keep-alive comments, and a cancel ending an open stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autopaint.client import Client
from autopaint.contracts import JobState
from autopaint.db import ApiKey, Job, make_engine, make_session_factory, new_id
from autopaint.webhooks import verify
from services.api.auth import hash_key
from services.embedded import EmbeddedService
from tests.services.receiver import Receiver
from tests.services.workerkit import FAKE_ENV, api_key, free_port, make_settings

SUV = {"preset": "thorax", "suv_already": True}


class Live:
    def __init__(self, service: EmbeddedService, key: str, other_key: str, case: Path, receiver: Receiver) -> None:
        self.service, self.url, self.key, self.other_key = service, service.url, key, other_key
        self.case, self.receiver = case, receiver

    def h(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def queued_job(self) -> str:
        """A QUEUED job of ``key`` on a queue no worker serves (it stays queued until cancelled)."""
        engine = make_engine(self.service.settings.database_url)
        try:
            with make_session_factory(engine)() as s:
                owner = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(self.key))).one()
                job = Job(id=new_id(), owner_key_id=owner, state=JobState.QUEUED, params={}, inputs={},
                          queue="nobody-listens")
                s.add(job)
                s.commit()
                return job.id
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from autopaint.data.phantom import write_cohort

    tmp = tmp_path_factory.mktemp("events")
    write_cohort("thorax", 1, 0, tmp / "phantom", "small", 0.0)
    case = next(p for p in sorted((tmp / "phantom").iterdir()) if p.is_dir())
    settings = make_settings("embedded", tmp, None, callback_allow="127.0.0.1/32", callback_poll_s=0.1,
                             callback_backoff_s=0.1, events_poll_s=0.1, events_keepalive_s=0.4,
                             max_streams_per_key=1)
    service = EmbeddedService(settings, port=free_port(), workers=1, log_dir=tmp / "logs",
                              worker_env={**FAKE_ENV, "AUTOPAINT_TEST_SLOW_S": "1.0"})
    with Receiver() as receiver, service.running(), Client(service.url, api_key(settings)) as client:
        client.wait_ready(timeout=30)
        yield Live(service, api_key(settings), api_key(settings), case, receiver)


def events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) of each SSE event and ("comment", text) of each comment, as they arrive."""
    name, data = "message", []
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


def test_sse_progress_then_state_and_a_verified_callback(live: Live) -> None:
    with Client(live.url, live.key) as client:
        job = client.submit(ct=live.case / "ct.nii.gz", pet=live.case / "pet.nii.gz",
                            params={**SUV, "callback_url": live.receiver.url("/done")})
        with httpx.stream("GET", f"{live.url}/v1/jobs/{job['id']}/events", headers=live.h(), timeout=30) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            got = [e for e in events(r.iter_lines()) if e[0] != "comment"]  # ends by itself
        secret = client.http.get("/v1/callback-secret").json()["secret"]
        (received,) = live.receiver.wait(1)
        # the receiver has the POST a moment before the dispatcher records the delivery
        deadline = time.monotonic() + 10
        while (final := client.job(job["id"]))["callbacks"][0]["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    names = [name for name, _ in got]
    assert names[0] == "progress" and names[-1] == "state" and set(names[:-1]) == {"progress"}
    progress = [data for _, data in got[:-1]]
    assert progress[-1]["state"] == "succeeded" and progress[-1]["fraction"] == 1.0
    running = [p for p in progress if p["state"] == "running"]
    assert len(running) >= 3, progress  # the stages and circles as they happened
    circles = [p["circles_done"] for p in running if p["circles_total"] == 20]
    assert circles and circles == sorted(circles)
    assert got[-1][1]["id"] == job["id"] and got[-1][1]["state"] == "succeeded"
    event = verify(secret, received.headers, received.body)
    assert received.path == "/done" and event["event"] == "job.succeeded" and event["job"]["id"] == job["id"]
    assert sorted(event["links"]["files"]) == ["mask.nii.gz", "report.json"]
    assert [(c["event"], c["status"], c["attempts"]) for c in final["callbacks"]] == [("job.succeeded", "delivered", 1)]


def test_sse_errors_and_a_finished_job(live: Live) -> None:
    job_id = live.queued_job()
    r = httpx.get(f"{live.url}/v1/jobs/{job_id}/events", headers=live.h(live.other_key), timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.get(f"{live.url}/v1/jobs/nope/events", headers=live.h(), timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert httpx.get(f"{live.url}/v1/jobs/{job_id}/events", timeout=10).status_code == 401
    httpx.post(f"{live.url}/v1/jobs/{job_id}/cancel", headers=live.h(), timeout=10).raise_for_status()
    r = httpx.get(f"{live.url}/v1/jobs/{job_id}/events", headers=live.h(), timeout=10)  # ends at once
    assert [name for name, _ in events(iter(r.text.split("\n")))] == ["progress", "state"]


def test_stream_cap_keepalive_and_cancel_ending_a_stream(live: Live) -> None:
    job_id = live.queued_job()
    url = f"{live.url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=live.h(), timeout=10) as first:
        stream = events(first.iter_lines())
        name, data = next(stream)
        assert name == "progress" and data["state"] == "queued" and data["queue_position"] >= 1
        assert next(stream) == ("comment", "keep-alive")  # nothing changed for events_keepalive_s
        second = httpx.get(url, headers=live.h(), timeout=10)  # max_streams_per_key = 1
        assert second.status_code == 429 and second.json()["code"] == "too_many_streams"
        httpx.post(f"{live.url}/v1/jobs/{job_id}/cancel", headers=live.h(), timeout=10).raise_for_status()
        rest = [e for e in stream if e[0] != "comment"]
    assert [n for n, _ in rest] == ["progress", "state"] and rest[-1][1]["state"] == "cancelled"
    again = httpx.get(url, headers=live.h(), timeout=10)  # the slot was given back
    assert again.status_code == 200


def test_a_client_that_goes_away_gives_its_slot_back(live: Live) -> None:
    url = f"{live.url}/v1/jobs/{live.queued_job()}/events"
    with httpx.stream("GET", url, headers=live.h(), timeout=10) as first:
        assert next(events(first.iter_lines()))[0] == "progress"
    deadline = time.monotonic() + 10
    while True:  # the server notices the disconnect and ends the stream
        with httpx.stream("GET", url, headers=live.h(), timeout=10) as r:
            if r.status_code == 200:
                break
            assert r.status_code == 429 and time.monotonic() < deadline
        time.sleep(0.1)
