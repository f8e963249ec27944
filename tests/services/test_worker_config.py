"""Worker configuration, queue routing, progress throttling and import hygiene (no servers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autopaint.contracts import JobState
from autopaint.db import Job, leases, new_id
from autopaint.progress import ProgressEvent, Stage, Unit
from autopaint.settings import Settings
from services.worker.config import ConfigError, celery_config, settings_env, worker_queues
from services.worker.context import WorkerContext
from services.worker.runner import ProgressWriter


def test_delivery_guarantees_in_config(sqlite_settings: Settings) -> None:
    s = sqlite_settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/0",
                                           "broker_key_prefix": "p:"})
    conf = celery_config(s)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["broker_transport_options"]["global_keyprefix"] == "p:"
    sqla = celery_config(sqlite_settings.model_copy(update={"broker_url": "sqla+sqlite:////tmp/x.db"}))
    assert "visibility_timeout" not in sqla["broker_transport_options"]  # it would reach create_engine


def test_visibility_timeout_must_exceed_hard_limit(sqlite_settings: Settings) -> None:
    bad = sqlite_settings.model_copy(update={"visibility_timeout_s": sqlite_settings.hard_time_limit_s})
    with pytest.raises(ConfigError, match="visibility_timeout"):
        celery_config(bad)
    with pytest.raises(ValueError):  # and Settings itself refuses it at process start
        Settings(hard_time_limit_s=100, soft_time_limit_s=50, visibility_timeout_s=100, _env_file=None)  # type: ignore[call-arg]


def test_queue_routing(sqlite_settings: Settings) -> None:
    cpu = sqlite_settings.model_copy(update={"device": "cpu"})
    gpu = sqlite_settings.model_copy(update={"device": "cuda:0"})
    assert worker_queues(cpu) == [cpu.cpu_queue]
    assert worker_queues(gpu) == [gpu.queue]
    assert worker_queues(cpu, "gpu, cpu") == ["gpu", "cpu"]


def test_settings_env_round_trip(sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in settings_env(sqlite_settings).items():
        monkeypatch.setenv(k, v)
    assert Settings() == sqlite_settings


def test_progress_is_throttled_to_every_n_circles(sqlite_settings: Settings) -> None:
    s = sqlite_settings.model_copy(update={"progress_every_circles": 10})
    ctx = WorkerContext(s)
    job_id = new_id()
    with ctx.session() as session:
        session.add(Job(id=job_id, owner_key_id="o", state=JobState.QUEUED, params={}, inputs={}))
        session.commit()
        assert leases.lease_job(session, job_id, "w", 60) is not None
    writer = ProgressWriter(ctx, job_id, s.progress_every_circles)
    writer(ProgressEvent(Stage.preprocessing, 0, 1, Unit.volumes))
    for i in range(1, 101):
        writer(ProgressEvent(Stage.searching, i, 100, Unit.circles, "sweep"))
    # 1 (prepare) + 1 (stage change at circle 1) + every 10 circles after it (11..91) + the last
    assert writer.writes == 1 + 1 + 9 + 1
    with ctx.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.stage, job.circles_done, job.circles_total) == ("searching", 100, 100)
        assert "preprocessing" in job.timings
    ctx.dispose()


def test_worker_modules_import_no_torch() -> None:
    code = ("import sys, services.worker.app, services.worker.runner, autopaint.client, "
            "services.commands.service, services.embedded; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
