"""Callbacks (issue #14), signing and delivery: the dispatcher POSTs the outbox row signed to a real
loopback receiver (the key's secret, both secrets during a rotation's grace), retries with backoff and
seeded jitter and records each attempt on the job; the URL guard refuses non-http(s) schemes,
credentials and non-public addresses at submit (422) and again at delivery time.
``test_callback_outbox.py`` has the outbox's own rules (retention, one ``cohort.completed``, claims).

The API runs in process (``tests.services.apikit.Api``, fake publisher); the tests play the worker
through the job repository (the worker's own code path to a terminal state) and drive the
dispatcher with ``run_once``. ``tests/services/test_events.py`` runs the whole round trip with a
live service and a real worker."""

from __future__ import annotations

import ipaddress
import json
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy import update as sa_update

from autopaint.contracts import JobState
from autopaint.db import ApiKey, CallbackDelivery, leases, make_engine, make_session_factory
from autopaint.db import callbacks as outbox
from autopaint.db import jobs as repo
from autopaint.settings import Settings
from autopaint.webhooks import SignatureError, parse_signature, sign, signature_header, verify
from services.api.auth import hash_key
from services.api.callbacks import Dispatcher
from services.api.urlguard import UrlGuard, UrlNotAllowed, is_public
from tests.services.apikit import Api, write_pair
from tests.services.callbackkit import callback_secret, deliveries, drain, queued_job, succeed
from tests.services.receiver import Receiver

# --- signatures ---------------------------------------------------------------------------------


def test_webhooks_sign_and_verify_in_one_call() -> None:
    body = b'{"event":"job.succeeded"}'
    headers = {"x-autopaint-signature": signature_header(["new", "old"], body, timestamp=1000)}
    assert verify("new", headers, body, now=1000) == {"event": "job.succeeded"}
    assert verify("old", headers, body, now=1299)["event"] == "job.succeeded"  # a rotation's grace
    assert parse_signature(headers["x-autopaint-signature"])[1] == [sign("new", body, 1000), sign("old", body, 1000)]
    for secret, hdrs, raw, now in (("wrong", headers, body, 1000), ("new", headers, body + b" ", 1000),
                                   ("new", headers, body, 1301), ("new", {}, body, 1000),
                                   ("new", {"X-Autopaint-Signature": "t=abc,v1="}, body, 1000)):
        with pytest.raises(SignatureError):
            verify(secret, hdrs, raw, now=now)


def test_signed_callback_on_success_verifies_with_the_keys_secret(cb_api: Api, receiver: Receiver,
                                                                   tmp_path: Path) -> None:
    ct, pet = write_pair(tmp_path / "in")
    r = cb_api.submit({"ct": ct, "pet": pet}, {"callback_url": receiver.url("/hooks/a?tag=1")})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["callback_url"] == receiver.url("/hooks/a?tag=1") and r.json()["callbacks"] == []
    assert "callback_url" not in r.json()["params"]  # kept on the job, not in what the worker reads
    succeed(cb_api.sessions, job_id)
    assert [(c.event, c.status) for c in deliveries(cb_api)] == [("job.succeeded", "pending")]  # with the state
    d = Dispatcher(cb_api.settings, cb_api.sessions)
    assert d.run_once() == 1
    (got,) = receiver.wait(1)
    assert got.path == "/hooks/a?tag=1" and got.headers["host"] == f"127.0.0.1:{receiver.port}"
    event = verify(callback_secret(cb_api), got.headers, got.body)
    assert event["event"] == got.headers["x-autopaint-event"] == "job.succeeded"
    assert event["id"] == got.headers["x-autopaint-delivery"] and got.headers["x-autopaint-attempt"] == "1"
    assert event["job"]["id"] == job_id and event["job"]["state"] == "succeeded" and event["job"]["finished_at"]
    assert event["links"]["results"] == f"/v1/jobs/{job_id}/results"
    for secret, body, now in (("0" * 64, got.body, None), (callback_secret(cb_api), got.body.replace(b"succeeded", b"failed"),
                                                          None), (callback_secret(cb_api), got.body, time.time() + 301)):
        with pytest.raises(SignatureError):
            verify(secret, got.headers, body, now=now)
    (cb,) = cb_api.client.get(f"/v1/jobs/{job_id}", headers=cb_api.h()).json()["callbacks"]
    assert cb["status"] == "delivered" and cb["attempts"] == 1 and cb["last_status_code"] == 200
    assert cb["delivered_at"] and cb["next_attempt_at"] is None and cb["id"] == event["id"]
    assert cb_api.client.get("/v1/jobs", headers=cb_api.h()).json()["items"][0]["callbacks"] == [cb]
    d.stop()


def test_secret_rotation_signs_with_both_during_the_grace(cb_api: Api, receiver: Receiver) -> None:
    old = callback_secret(cb_api)
    r = cb_api.client.post("/v1/callback-secret/rotate", headers=cb_api.h())
    assert r.status_code == 200 and r.json()["secret"] != old and r.json()["previous_valid_until"]
    new = r.json()["secret"]
    assert callback_secret(cb_api) == new and len(new) == 64
    assert cb_api.client.get("/v1/callback-secret", headers=cb_api.h("b")).json()["secret"] not in (old, new)
    succeed(cb_api.sessions, queued_job(cb_api, receiver.url()))
    d = Dispatcher(cb_api.settings, cb_api.sessions)
    d.run_once()
    (got,) = receiver.wait(1)
    assert verify(new, got.headers, got.body) and verify(old, got.headers, got.body)
    no_grace = Dispatcher(cb_api.settings.model_copy(update={"callback_secret_grace_s": 0.0}), cb_api.sessions)
    succeed(cb_api.sessions, queued_job(cb_api, receiver.url()))
    no_grace.run_once()
    got = receiver.wait(2)[1]
    assert verify(new, got.headers, got.body)
    with pytest.raises(SignatureError):
        verify(old, got.headers, got.body)
    d.stop()
    no_grace.stop()


# --- retries ------------------------------------------------------------------------------------


def test_retry_after_500_then_200_is_recorded_on_the_job(cb_api: Api) -> None:
    with Receiver([500, 200]) as receiver:
        job_id = queued_job(cb_api, receiver.url())
        with cb_api.sessions() as s:
            leases.lease_job(s, job_id, "w", 60)
            repo.fail_job(s, job_id, "boom", "the pipeline failed")
        d = Dispatcher(cb_api.settings, cb_api.sessions)
        assert d.run_once() == 1
        (cb,) = cb_api.client.get(f"/v1/jobs/{job_id}", headers=cb_api.h()).json()["callbacks"]
        assert (cb["status"], cb["attempts"], cb["last_status_code"], cb["last_error"]) == ("pending", 1, 500, "HTTP 500")
        drain(d, lambda: len(receiver.requests) == 2 and deliveries(cb_api)[0].delivered_at is not None)
        first, second = receiver.requests
        secret = callback_secret(cb_api)
        assert verify(secret, first.headers, first.body) == verify(secret, second.headers, second.body)
        assert first.headers["x-autopaint-delivery"] == second.headers["x-autopaint-delivery"]  # receivers dedupe
        assert (first.headers["x-autopaint-attempt"], second.headers["x-autopaint-attempt"]) == ("1", "2")
        event = json.loads(second.body)
        assert event["event"] == "job.failed" and event["job"]["error_code"] == "boom"
        (cb,) = cb_api.client.get(f"/v1/jobs/{job_id}", headers=cb_api.h()).json()["callbacks"]
        assert (cb["status"], cb["attempts"], cb["last_status_code"], cb["last_error"]) == ("delivered", 2, 200, None)
        assert cb["delivered_at"] and cb["next_attempt_at"] is None
        assert [h["status_code"] for h in deliveries(cb_api)[0].history] == [500, 200]
        d.stop()


def test_gives_up_after_max_attempts_and_a_refused_connection_is_an_error(cb_api: Api) -> None:
    with Receiver([503] * 10) as receiver:
        job_id = queued_job(cb_api, receiver.url())
        with cb_api.sessions() as s:
            assert repo.request_cancel(s, job_id) == JobState.CANCELLED  # the API's cancel of a queued job
        d = Dispatcher(cb_api.settings, cb_api.sessions)
        drain(d, lambda: deliveries(cb_api)[0].status == "failed")
        assert len(receiver.requests) == 3 and json.loads(receiver.requests[0].body)["event"] == "job.cancelled"
    row = deliveries(cb_api)[0]
    assert (row.attempts, row.last_status_code, row.next_attempt_at) == (3, 503, None)
    assert outbox.backoff_s(1, 2.0, 60) == 2 and outbox.backoff_s(4, 2.0, 60) == 16 and outbox.backoff_s(9, 2.0, 60) == 60
    closed = queued_job(cb_api, receiver.url())  # the receiver is gone now: connection refused
    with cb_api.sessions() as s:
        repo.fail_job(s, closed, "x", "y")
    d.run_once()
    row = next(r for r in deliveries(cb_api) if r.job_id == closed)
    assert row.attempts == 1 and row.last_status_code is None and "connect" in (row.last_error or "")
    d.stop()


def test_backoff_jitter_stays_within_its_bounds_and_spreads() -> None:
    """+-20 % around the exponential backoff (capped first): every draw within the bounds, the draws
    spread over them, reproducible with a seeded generator, exact without jitter."""
    for attempts, plain in ((1, 2.0), (2, 4.0), (4, 16.0), (9, 60.0), (12, 60.0)):
        assert outbox.backoff_s(attempts, 2.0, 60) == plain
        rng = random.Random(attempts)
        draws = [outbox.backoff_s(attempts, 2.0, 60, 0.2, rng) for _ in range(500)]
        assert all(0.8 * plain <= d <= 1.2 * plain for d in draws)
        assert min(draws) < 0.83 * plain and max(draws) > 1.17 * plain  # the whole range is used
        assert abs(sum(draws) / len(draws) - plain) < 0.03 * plain  # centred on the plain backoff
        again = random.Random(attempts)
        assert draws == [outbox.backoff_s(attempts, 2.0, 60, 0.2, again) for _ in range(500)]


def test_a_retry_is_scheduled_with_the_seeded_jitter(cb_api: Api) -> None:
    settings = cb_api.settings.model_copy(update={"callback_backoff_s": 10.0, "callback_backoff_max_s": 100.0,
                                                   "callback_jitter": 0.2})
    want = [10.0 * random.Random(42).uniform(0.8, 1.2), 20.0 * random.Random(43).uniform(0.8, 1.2)]
    waits = []
    with Receiver([500] * 4) as receiver:
        for seed in (42, 43):
            job_id = queued_job(cb_api, receiver.url())
            with cb_api.sessions() as s:
                repo.fail_job(s, job_id, "boom", "boom")
                if seed == 43:  # a second failure: 2 x the base
                    s.execute(sa_update(CallbackDelivery).where(CallbackDelivery.job_id == job_id).values(attempts=1))
                    s.commit()
            d = Dispatcher(settings, cb_api.sessions, rng=random.Random(seed))
            assert d.run_once() == 1
            d.stop()
            row = next(r for r in deliveries(cb_api) if r.job_id == job_id)
            assert row.status == "pending" and row.last_attempt_at and row.next_attempt_at
            waits.append((row.next_attempt_at - row.last_attempt_at).total_seconds())
    assert waits == pytest.approx(want, abs=1e-3)
    assert 8.0 <= waits[0] <= 12.0 and 16.0 <= waits[1] <= 24.0 and waits[0] != 10.0


# --- the URL guard ------------------------------------------------------------------------------

REFUSED = ["ftp://example.org/hook", "file:///etc/passwd", "gopher://127.0.0.1:70/_x", "http://127.0.0.1:9/x",
           "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/", "http://10.1.2.3/hook",
           "http://[::ffff:127.0.0.1]/", "http://2130706433/", "http://localhost/", "http://user:pw@example.org/",
           "http:///nohost", "http://exa mple.org/", "not a url"]


@pytest.mark.parametrize("url", REFUSED)
def test_submit_refuses_urls_outside_the_policy(api: Api, url: str) -> None:
    r = api.client.post("/v1/cohorts", json={"name": "c", "callback_url": url}, headers=api.h())
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "callback_url_not_allowed" and r.json()["status"] == 422


def test_job_submit_refuses_a_private_callback_and_stores_nothing(api: Api, tmp_path: Path) -> None:
    ct, pet = write_pair(tmp_path / "in")
    r = api.submit({"ct": ct, "pet": pet}, {"callback_url": "http://169.254.169.254/latest/meta-data/"})
    assert r.status_code == 422 and r.json()["code"] == "callback_url_not_allowed", r.text
    assert api.stored_files() == [] and api.publisher.published == []
    off = api.settings.model_copy(update={"callbacks_enabled": False})
    with pytest.raises(UrlNotAllowed) as err:
        UrlGuard.from_settings(off).check("https://example.org/")
    assert err.value.code == "callbacks_disabled"


@pytest.mark.parametrize(("addr", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("100.64.0.1", False),
    ("169.254.169.254", False), ("0.0.0.0", False), ("224.0.0.1", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("192.0.2.1", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fc00::1", False), ("fd12:3456::1", False), ("ff02::1", False), ("::ffff:10.0.0.1", False),
    ("::ffff:169.254.169.254", False), ("2002:7f00:1::", False), ("64:ff9b::a9fe:a9fe", False), ("fec0::1", False),
])
def test_public_addresses(addr: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(addr)) is public


def test_allow_list_admits_networks_and_host_names(sqlite_settings: Settings) -> None:
    guard = UrlGuard.from_settings(sqlite_settings.model_copy(update={"callback_allow": "10.0.0.0/8, localhost"}))
    assert guard.check("http://10.1.2.3:8080/x").addresses == (ipaddress.ip_address("10.1.2.3"),)
    assert guard.check("http://localhost/x").host == "localhost"
    for url in ("http://172.16.0.1/", "https://" + "a" * 2100 + ".org/"):
        with pytest.raises(UrlNotAllowed):
            guard.check(url)
    with pytest.raises(ValueError):
        UrlGuard.from_settings(sqlite_settings.model_copy(update={"callback_allow": "10.0.0.0/8,bad host!"}))


def test_delivery_time_guard_refuses_and_records(cb_api: Api, receiver: Receiver) -> None:
    """Allowed at submit, refused at delivery (the operator narrowed the allow list): not sent, the
    refusal is the attempt's error and the row is retried later."""
    r = cb_api.client.post("/v1/cohorts", json={"name": "c", "callback_url": receiver.url()}, headers=cb_api.h())
    assert r.status_code == 201, r.text
    job_id = queued_job(cb_api, receiver.url())
    succeed(cb_api.sessions, job_id)
    strict = Dispatcher(cb_api.settings.model_copy(update={"callback_allow": ""}), cb_api.sessions)
    assert strict.run_once() == 1
    time.sleep(0.2)
    assert receiver.requests == []
    (cb,) = cb_api.client.get(f"/v1/jobs/{job_id}", headers=cb_api.h()).json()["callbacks"]
    assert cb["status"] == "pending" and cb["attempts"] == 1 and cb["last_status_code"] is None
    assert cb["last_error"].startswith("callback_url_not_allowed: ") and "127.0.0.1" in cb["last_error"]
    strict.stop()


def test_other_keys_and_anonymous_callers(api: Api, sqlite_settings: Settings) -> None:
    job_id = queued_job(api, None)
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.h("b")).status_code == 404
    assert api.client.get("/v1/callback-secret").status_code == 401
    anon = Api(sqlite_settings.model_copy(update={"api_key_required": False}))
    try:
        r = anon.client.get("/v1/callback-secret")
        assert r.status_code == 409 and r.json()["code"] == "no_api_key"
        r = anon.client.post("/v1/cohorts", json={"name": "c", "callback_url": "https://example.org/"})
        assert r.status_code == 422 and r.json()["code"] == "callback_requires_api_key"
    finally:
        anon.close()


def test_admin_create_key_prints_the_callback_secret(sqlite_settings: Settings) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    env = {"AUTOPAINT_STATE_DIR": str(sqlite_settings.state_dir), "AUTOPAINT_DATABASE_URL": sqlite_settings.database_url}
    result = CliRunner().invoke(app, ["admin", "create-key", "--name", "hooks"], env=env)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[0]
    with make_session_factory(make_engine(sqlite_settings.database_url))() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(token))).one()
    assert f"callback signing secret: {key.callback_secret}" in result.output and len(key.callback_secret) == 64
