"""Callbacks (issue #14), the outbox: a row commits with the terminal state; a cohort gets exactly
one ``cohort.completed`` (also when its jobs finish at the same moment, and only once its expected
jobs exist); two dispatchers never claim the same row; done rows are purged in bounded batches after
the retention period. ``test_callbacks.py`` has signing, delivery, retries and the URL guard.

The API runs in process (``tests.services.apikit.Api``, fake publisher); the tests play the worker
through the job repository and drive the dispatcher with ``run_once``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete as sa_delete
from sqlalchemy import select
from sqlalchemy import update as sa_update

from autopaint.contracts import JobState
from autopaint.db import CallbackDelivery, Cohort, Job, make_engine, make_session_factory, new_id, utcnow
from autopaint.db import callbacks as outbox
from autopaint.db import jobs as repo
from autopaint.settings import Settings
from autopaint.webhooks import verify
from services.api.callbacks import Dispatcher
from tests.services.apikit import Api, write_pair
from tests.services.callbackkit import callback_secret, deliveries, drain, queued_job, succeed
from tests.services.receiver import Receiver

# --- retention ----------------------------------------------------------------------------------


def _aged(sessions: Any, kind: str, days: float) -> str:
    """An outbox row ``days`` old: ``delivered``, ``failed`` (given up), ``failed-never-tried`` (given
    up without an attempt time), ``pending`` (a retry due) or ``cohort`` (a delivered
    ``cohort.completed`` of a cohort that still exists)."""
    row_id, then = new_id(), utcnow() - timedelta(days=days)
    with sessions() as s:
        cohort_id = None
        if kind == "cohort":
            cohort_id = new_id()
            s.add(Cohort(id=cohort_id, owner_key_id="o", name="old", callback_url="http://192.0.2.1/"))
            s.flush()
        outbox._insert_once(s, {"id": row_id, "owner_key_id": "o", "job_id": None, "cohort_id": cohort_id,
                                "event": "cohort.completed" if cohort_id else "job.failed",
                                "url": "http://192.0.2.1/", "payload": {}})
        values: dict[str, Any] = {"created_at": then, "attempts": 1, "last_attempt_at": then, "next_attempt_at": None}
        if kind in ("delivered", "cohort"):
            values["delivered_at"] = then
        elif kind == "failed-never-tried":
            values["last_attempt_at"] = None
        elif kind == "pending":
            values["next_attempt_at"] = utcnow() + timedelta(hours=1)
        s.execute(sa_update(CallbackDelivery).where(CallbackDelivery.id == row_id).values(**values))
        s.commit()
    return row_id


def _ids(sessions: Any) -> set[str]:
    with sessions() as s:
        return set(s.scalars(select(CallbackDelivery.id)))


def _retention(sessions: Any) -> None:
    """Rows done before the cutoff go, a batch at a time; young rows, pending rows of any age and the
    ``cohort.completed`` row of a cohort that exists stay (that one until its cohort is deleted)."""
    old_done = {_aged(sessions, "delivered", 40), _aged(sessions, "failed", 31),
                _aged(sessions, "failed-never-tried", 90)}
    cohort_row = _aged(sessions, "cohort", 400)
    kept = {_aged(sessions, "delivered", 29), _aged(sessions, "failed", 1), _aged(sessions, "pending", 400),
            cohort_row}
    cutoff = utcnow() - timedelta(days=30)
    with sessions() as s:
        assert outbox.purge_finished(s, cutoff, 2) == 2
    assert len(_ids(sessions) & old_done) == 1
    with sessions() as s:
        assert outbox.purge_finished(s, cutoff, 2) == 1 and outbox.purge_finished(s, cutoff, 2) == 0
    assert _ids(sessions) == kept
    with sessions() as s:  # its cohort deleted: the row is an ordinary old one (cohort_id SET NULL)
        cohort_id = s.get(CallbackDelivery, cohort_row).cohort_id
        s.execute(sa_update(CallbackDelivery).where(CallbackDelivery.id == cohort_row).values(cohort_id=None))
        s.execute(sa_delete(Cohort).where(Cohort.id == cohort_id))
        s.commit()
        assert outbox.purge_finished(s, cutoff, 2) == 1
    assert _ids(sessions) == kept - {cohort_row}


def test_retention_deletes_old_done_rows_in_bounded_batches(cb_api: Api) -> None:
    _retention(cb_api.sessions)
    settings = cb_api.settings.model_copy(update={"callback_retention_days": 30.0, "callback_purge_batch": 2})
    d = Dispatcher(settings, cb_api.sessions)
    gone = {_aged(cb_api.sessions, "failed", 45) for _ in range(3)}
    assert d.purge_once() == 2 and d.purge_once() == 1 and d.purge_once() == 0
    assert not _ids(cb_api.sessions) & gone
    d.stop()
    keep_all = Dispatcher(settings.model_copy(update={"callback_retention_days": 0.0}), cb_api.sessions)
    _aged(cb_api.sessions, "delivered", 4000)
    assert keep_all.purge_once() == 0 and len(_ids(cb_api.sessions)) == 4  # 0 days: kept forever
    keep_all.stop()


@pytest.mark.services
def test_retention_postgresql(make_pg_database: Callable[[], str]) -> None:
    from autopaint.db.migrate import upgrade

    url = make_pg_database()
    upgrade(url)
    engine = make_engine(url)
    try:
        _retention(make_session_factory(engine))
    finally:
        engine.dispose()


def test_the_dispatcher_thread_sweeps_a_backlog_then_waits_for_the_next_period(cb_api: Api) -> None:
    backlog = {_aged(cb_api.sessions, "delivered", 60) for _ in range(5)}
    settings = cb_api.settings.model_copy(update={"callback_purge_batch": 2, "callback_purge_every_s": 3600.0,
                                                   "callback_poll_s": 0.05})
    d = Dispatcher(settings, cb_api.sessions)
    d.start()
    try:
        deadline = time.monotonic() + 10
        while _ids(cb_api.sessions) & backlog:  # 2 + 2 + 1: a full batch brings the next after one poll
            assert time.monotonic() < deadline, "the backlog was not swept"
            time.sleep(0.05)
        late = _aged(cb_api.sessions, "delivered", 60)
        time.sleep(0.5)  # the last batch was not full: the next sweep is an hour away
        assert _ids(cb_api.sessions) == {late}
    finally:
        d.stop()


# --- cohorts ------------------------------------------------------------------------------------


def test_cohort_gets_exactly_one_completed_callback(cb_api: Api, receiver: Receiver) -> None:
    r = cb_api.client.post("/v1/cohorts", json={"name": "c", "callback_url": receiver.url("/cohort")},
                           headers=cb_api.h())
    assert r.status_code == 201, r.text
    cohort_id = r.json()["id"]
    jobs = [queued_job(cb_api, None, cohort_id) for _ in range(3)]
    succeed(cb_api.sessions, jobs[0])
    with cb_api.sessions() as s:
        repo.fail_job(s, jobs[1], "bad", "bad")
    assert deliveries(cb_api) == []  # one job is still queued
    with cb_api.sessions() as s:
        repo.request_cancel(s, jobs[2])
        outbox.on_terminal(s, s.get(Job, jobs[2]))  # a second trigger for the same completion
        s.commit()
    d = Dispatcher(cb_api.settings, cb_api.sessions)
    drain(d, lambda: len(receiver.requests) >= 1)
    d.run_once()
    (got,) = receiver.requests
    event = verify(callback_secret(cb_api), got.headers, got.body)
    assert event["event"] == "cohort.completed" and event["cohort"]["id"] == cohort_id
    assert event["cohort"]["counts"] == {"succeeded": 1, "failed": 1, "cancelled": 1}
    assert event["links"]["metrics_csv"] == f"/v1/cohorts/{cohort_id}/metrics.csv"
    body = cb_api.client.get(f"/v1/cohorts/{cohort_id}", headers=cb_api.h()).json()
    assert [(c["event"], c["status"]) for c in body["callbacks"]] == [("cohort.completed", "delivered")]
    d.stop()


def test_cohort_with_expected_jobs_waits_for_them(cb_api: Api, receiver: Receiver) -> None:
    r = cb_api.client.post("/v1/cohorts", json={"name": "c", "callback_url": receiver.url(), "expected_jobs": 2},
                           headers=cb_api.h())
    cohort_id = r.json()["id"]
    succeed(cb_api.sessions, queued_job(cb_api, None, cohort_id))
    assert deliveries(cb_api) == []  # all finished, but only 1 of the 2 expected jobs exists
    succeed(cb_api.sessions, queued_job(cb_api, None, cohort_id))
    assert [c.event for c in deliveries(cb_api)] == ["cohort.completed"]


def _finish_at_once(sessions: Any, barrier: threading.Barrier, job_id: str) -> None:
    with sessions() as s:
        barrier.wait()
        repo.finish_job(s, job_id, {}, [])


def _race(url: str, rounds: int = 3, n: int = 6) -> None:
    """``n`` jobs of a cohort finish at the same moment in ``n`` threads: every round ends with exactly
    one ``cohort.completed`` row (none lost, none doubled)."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    try:
        for _ in range(rounds):
            cohort_id, ids = new_id(), [new_id() for _ in range(n)]
            with sessions() as s:
                s.add(Cohort(id=cohort_id, owner_key_id="race", name="race", callback_url="http://192.0.2.1/"))
                s.add_all(Job(id=j, owner_key_id="race", cohort_id=cohort_id, state=JobState.RUNNING,
                              lease_owner="w", params={}, inputs={}) for j in ids)
                s.commit()
            barrier = threading.Barrier(n)
            threads = [threading.Thread(target=_finish_at_once, args=(sessions, barrier, j)) for j in ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            with sessions() as s:
                assert all(s.get(Job, j).state == JobState.SUCCEEDED for j in ids)  # type: ignore[union-attr]
                rows = s.scalars(select(CallbackDelivery.event).where(CallbackDelivery.cohort_id == cohort_id)).all()
            assert rows == ["cohort.completed"]
    finally:
        engine.dispose()


def test_cohort_completion_race_sqlite(sqlite_settings: Settings) -> None:
    _race(sqlite_settings.database_url)


@pytest.mark.services
def test_cohort_completion_race_postgresql(make_pg_database: Callable[[], str]) -> None:
    from autopaint.db.migrate import upgrade

    url = make_pg_database()
    upgrade(url)
    _race(url)


def test_cohort_client_closes_its_cohort_after_the_last_submit(cb_api: Api, receiver: Receiver,
                                                                tmp_path: Path) -> None:
    """``run_cohort(callback_url=...)``: the cohort expects every case, a refused case does not keep it
    open (the client closes it after the last submit), and its one callback counts the accepted jobs."""
    from autopaint.client import Client
    from autopaint.client_cohort import run_cohort

    cohort_dir = tmp_path / "cohort"
    write_pair(cohort_dir / "a_ok")
    (cohort_dir / "b_refused").mkdir(parents=True)
    (cohort_dir / "b_refused" / "ct.nii.gz").write_bytes(b"not a nifti")
    finished: set[str] = set()

    def play_worker(_case: str, job: dict[str, Any]) -> None:  # the job runs when the client first sees it
        if job.get("id") and job["id"] not in finished:
            finished.add(job["id"])
            succeed(cb_api.sessions, job["id"])

    with Client("http://testserver", cb_api.key_a, transport=cb_api.client._transport) as c:  # type: ignore[attr-defined]
        summary = run_cohort(c, cohort_dir, tmp_path / "out", params={"suv_already": True}, download=False,
                             poll_s=0.05, on_update=play_worker, callback_url=receiver.url("/cohort"))
    assert (summary.succeeded, summary.failed) == (1, 1)
    d = Dispatcher(cb_api.settings, cb_api.sessions)
    drain(d, lambda: len(receiver.requests) == 1)
    event = verify(callback_secret(cb_api), receiver.requests[0].headers, receiver.requests[0].body)
    assert event["event"] == "cohort.completed" and event["cohort"]["counts"] == {"succeeded": 1}
    cohort = cb_api.client.get(f"/v1/cohorts/{event['cohort']['id']}", headers=cb_api.h()).json()
    assert cohort["expected_jobs"] == 1 and cohort["callback_url"] == receiver.url("/cohort")
    d.stop()


# --- claims -------------------------------------------------------------------------------------


def _claims_are_exclusive(url: str) -> None:
    """Two dispatchers (API processes) claiming at once never get the same row."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    try:
        ids = [new_id() for _ in range(12)]
        with sessions() as s:
            for i in ids:
                outbox._insert_once(s, {"owner_key_id": "o", "job_id": None, "cohort_id": None, "event": "job.failed",
                                        "url": "http://192.0.2.1/", "payload": {}, "id": i})
            s.commit()
        barrier, got = threading.Barrier(2), [[], []]

        def claim(k: int) -> None:
            with sessions() as s:
                barrier.wait()
                got[k] = [d.id for d in outbox.claim_due(s, 12, 60)]

        threads = [threading.Thread(target=claim, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not set(got[0]) & set(got[1]) and set(got[0]) | set(got[1]) == set(ids)
    finally:
        engine.dispose()


def test_claims_are_exclusive_sqlite(sqlite_settings: Settings) -> None:
    _claims_are_exclusive(sqlite_settings.database_url)


@pytest.mark.services
def test_claims_are_exclusive_postgresql(make_pg_database: Callable[[], str]) -> None:
    from autopaint.db.migrate import upgrade

    url = make_pg_database()
    upgrade(url)
    _claims_are_exclusive(url)
