"""The worker's delivery promises (DESIGN.md §5.2-5.5) with real Celery worker processes.

Every test runs on the embedded path (SQLite + kombu sqla broker) and on PostgreSQL + Redis
(``services`` marker), against two long-lived worker processes (-P prefork -c 1 each) running the
TEST-ONLY injected pipeline (tests/services/fake_pipelines.py:auto).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

from autopaint.contracts import JobState
from autopaint.db import jobs as repo
from tests.services.workerkit import Kit


def test_job_runs_and_results_are_stored_with_sha256(worker_kit: Kit) -> None:
    kit = worker_kit
    job_id = kit.make_job("slow:0.5")
    payload = kit.payload(job_id)
    kit.publish(job_id)
    job = kit.wait_terminal(job_id)
    assert job.state == JobState.SUCCEEDED, (job.error_code, job.error_message, kit.logs())
    assert job.attempts == 1
    assert job.circles_done == job.circles_total == 20
    assert {"loading", "searching", "thresholding"} <= set(job.timings)
    arts = {a.name: a for a in kit.artifacts(job_id)}
    assert set(arts) == {"mask.nii.gz", "report.json"}
    mask = b"".join(kit.storage.iter_chunks(arts["mask.nii.gz"].storage_key))
    assert mask == payload
    assert arts["mask.nii.gz"].sha256 == hashlib.sha256(payload).hexdigest()
    assert job.manifest is not None
    assert job.manifest["inputs"]["ct"] == hashlib.sha256(payload).hexdigest()
    assert job.manifest["results"]["mask.nii.gz"] == arts["mask.nii.gz"].sha256
    assert job.model_name == "fake-slow"
    assert kit.runs(job_id) == ["start", "end"]


def test_sigkill_of_worker_child_mid_job_reruns_it(worker_kit: Kit) -> None:
    kit = worker_kit
    job_id = kit.make_job("slow:3")
    kit.publish(job_id)
    job = kit.wait(job_id, lambda j: j.state == JobState.RUNNING and j.circles_done >= 2)
    assert job.lease_owner is not None
    child_pid = int(job.lease_owner.rsplit(":", 1)[1])
    assert child_pid not in [w.pid for w in kit.workers]  # a prefork child, not a parent
    os.kill(child_pid, signal.SIGKILL)
    assert kit.runs(job_id) == ["start"], "the job ended before the kill: machine too slow"
    job = kit.wait_terminal(job_id, timeout=90)
    assert job.state == JobState.SUCCEEDED, (job.error_code, job.error_message, kit.logs())
    assert job.attempts == 2
    assert kit.runs(job_id) == ["start", "start", "end"]
    assert len(kit.artifacts(job_id)) == 2
    assert all(w.alive() for w in kit.workers)  # the parents replaced the child


def test_always_crashing_job_fails_after_max_attempts(worker_kit: Kit) -> None:
    kit = worker_kit
    job_id = kit.make_job("crash")
    kit.publish(job_id)
    job = kit.wait_terminal(job_id, timeout=90)
    assert job.state == JobState.FAILED
    assert job.attempts == 3 == job.max_attempts
    assert job.error_code == "worker_error"
    assert "simulated crash" in (job.error_message or "")
    assert kit.runs(job_id) == ["start"] * 3
    assert kit.artifacts(job_id) == []


def test_duplicate_delivery_runs_once(worker_kit: Kit) -> None:
    kit = worker_kit
    skipped_before = kit.worker_log_count("'skipped'")
    job_id = kit.make_job("slow:2")
    kit.publish(job_id)
    kit.publish(job_id)  # the same id twice (a publisher retry): both workers get one
    job = kit.wait_terminal(job_id, timeout=60)
    assert job.state == JobState.SUCCEEDED, kit.logs()
    # the second message is consumed and dropped (after waiting out the first run's lease)
    deadline = time.monotonic() + 30
    while kit.worker_log_count("'skipped'") <= skipped_before:
        assert time.monotonic() < deadline, kit.logs()
        time.sleep(0.2)
    assert kit.runs(job_id) == ["start", "end"]
    assert kit.job(job_id).attempts == 1
    assert sorted(a.name for a in kit.artifacts(job_id)) == ["mask.nii.gz", "report.json"]


def test_cancel_running_job_stops_at_next_stage(worker_kit: Kit) -> None:
    kit = worker_kit
    job_id = kit.make_job("slow:2")
    kit.publish(job_id)
    kit.wait(job_id, lambda j: j.state == JobState.RUNNING and j.stage == "searching")
    with kit.sessions() as s:
        assert repo.request_cancel(s, job_id) == JobState.RUNNING
    job = kit.wait_terminal(job_id, timeout=30)
    assert job.state == JobState.CANCELLED
    assert kit.runs(job_id) == ["start", "cancelled-before-refining"]
    assert kit.artifacts(job_id) == []


def test_cancel_queued_job_never_runs(worker_kit: Kit) -> None:
    kit = worker_kit
    cancelled = kit.make_job("slow:0.2")
    with kit.sessions() as s:
        assert repo.request_cancel(s, cancelled) == JobState.CANCELLED
    kit.publish(cancelled)  # its message still arrives: the worker must drop it
    sentinel = kit.make_job("slow:0.2")
    kit.publish(sentinel)
    assert kit.wait_terminal(sentinel).state == JobState.SUCCEEDED
    time.sleep(1.0)
    assert kit.job(cancelled).state == JobState.CANCELLED
    assert kit.runs(cancelled) == []
    assert kit.job(cancelled).attempts == 0


def test_recover_republishes_jobs_whose_message_was_lost(worker_kit: Kit) -> None:
    from services.embedded import recover_jobs

    lost = worker_kit.make_job("slow:0.2")  # a row without a message (a dead worker's)
    assert recover_jobs(worker_kit.settings) >= 1
    assert worker_kit.wait_terminal(lost).state == JobState.SUCCEEDED
    assert worker_kit.runs(lost) == ["start", "end"]
