"""Helpers for the worker tests: job rows, publishing, worker subprocesses, polling."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autopaint.contracts import TASK_RUN_JOB, JobState
from autopaint.db import Artifact, Job, make_engine, make_session_factory, new_id
from autopaint.settings import Settings
from autopaint.storage import make_storage
from autopaint.storage.base import input_key
from services.embedded_workers import WorkerProcess, start_worker
from services.worker.app import create_celery_app


class Kit:
    """One test's worker world: settings with a unique queue, DB sessions, a producer."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.engine = make_engine(settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self.storage = make_storage(settings)
        self.producer = create_celery_app(settings)
        self.runlog = tmp / "runlog.txt"
        self.runlog.touch()
        self.workers: list[WorkerProcess] = []

    def make_job(self, behaviour: str = "slow:0.5", max_attempts: int | None = None) -> str:
        """A QUEUED job whose CT payload tells the ``auto`` fake pipeline what to do."""
        job_id = new_id()
        data = behaviour.encode() + b"\n" + os.urandom(4096)
        key = input_key(job_id, "ct")
        sha, size = self.storage.put_stream(key, [data])
        with self.sessions() as s:
            s.add(Job(id=job_id, owner_key_id="test-owner", state=JobState.QUEUED,
                      params={}, inputs={"ct": {"key": key, "sha256": sha, "bytes": size}},
                      max_attempts=max_attempts or self.settings.max_attempts,
                      queue=self.settings.queue))
            s.commit()
        return job_id

    def publish(self, job_id: str) -> None:
        self.producer.send_task(TASK_RUN_JOB, args=[job_id], queue=self.settings.queue)

    def payload(self, job_id: str) -> bytes:
        job = self.job(job_id)
        return b"".join(self.storage.iter_chunks(job.inputs["ct"]["key"]))

    def start_worker(self, pipeline: str = "auto", slow_s: float = 3.0) -> WorkerProcess:
        env = {"AUTOPAINT_TEST_PIPELINE": f"tests.services.fake_pipelines:{pipeline}",
               "AUTOPAINT_TEST_RUNLOG": str(self.runlog), "AUTOPAINT_TEST_SLOW_S": str(slow_s)}
        w = start_worker(self.settings, [self.settings.queue], extra_env=env,
                         log_path=self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        return w

    def job(self, job_id: str) -> Job:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def artifacts(self, job_id: str) -> list[Artifact]:
        with self.sessions() as s:
            return list(s.query(Artifact).filter(Artifact.job_id == job_id))

    def wait(self, job_id: str, pred: Callable[[Job], bool], timeout: float = 60.0) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if pred(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timeout waiting on job {job_id}: state={job.state} "
                                     f"stage={job.stage} attempts={job.attempts}\n{self.logs()}")
            time.sleep(0.1)

    def wait_terminal(self, job_id: str, timeout: float = 60.0) -> Job:
        return self.wait(job_id, lambda j: j.state.terminal, timeout)

    def runs(self, job_id: str) -> list[str]:
        return [line.split()[1] for line in self.runlog.read_text().splitlines()
                if line.startswith(job_id)]

    def worker_log_count(self, text: str) -> int:
        return sum(p.read_text().count(text) for p in self.tmp.glob("worker-*.log"))

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def close(self) -> None:
        for w in self.workers:
            w.stop(timeout=2)
        self.engine.dispose()


def unique_queue() -> str:
    return f"autopaint-test-{uuid.uuid4().hex[:8]}"


def with_overrides(settings: Settings, **kw: Any) -> Settings:
    return settings.model_copy(update=kw)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(kind: str, tmp: Path, request: Any, **overrides: Any) -> Settings:
    """Settings for a live service test: ``embedded`` (SQLite + sqla broker) or ``redis``
    (PostgreSQL + Redis, fixtures ``pg_url``/``redis_url``/``run_id`` from conftest)."""
    from autopaint.db.migrate import upgrade

    state = tmp / "state"
    common: dict[str, Any] = {"state_dir": state, "storage_dir": state / "storage",
                              "queue": unique_queue(), "lease_s": 2, "max_attempts": 3,
                              "progress_every_circles": 1, "api_key_required": True, **overrides}
    if kind == "embedded":
        settings = Settings(database_url=f"sqlite:///{state / 'autopaint.db'}",
                            broker_url=f"sqla+sqlite:///{state / 'broker.db'}", **common,
                            _env_file=None)  # type: ignore[call-arg]
        settings.ensure_dirs()
        upgrade(settings.database_url)
    else:
        prefix = f"autopaint-test-{request.getfixturevalue('run_id')}:"
        settings = Settings(database_url=request.getfixturevalue("pg_url"),
                            broker_url=request.getfixturevalue("redis_url"), broker_key_prefix=prefix,
                            **common, _env_file=None)  # type: ignore[call-arg]
        settings.ensure_dirs()
    return settings


def api_key(settings: Settings) -> str:
    from services.api.auth import create_api_key

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as s:
            return create_api_key(s, "test")[1]
    finally:
        engine.dispose()


FAKE_ENV = {"AUTOPAINT_TEST_PIPELINE": "tests.services.fake_pipelines:auto"}


def write_random_model(models_dir: Path, name: str = "tiny-random-petct") -> Path:
    """A tiny randomly initialised PET/CT gated-conv model (128 px) in the registry layout, so the
    real pipeline runs in seconds when no trained model is shipped. Returns the model folder."""
    import torch

    from autopaint.imaging.preprocess import params_for
    from autopaint.model.checkpoint import save_checkpoint, write_card
    from autopaint.model.networks import build_network, preset_config

    torch.manual_seed(0)
    cfg = preset_config("demo", "gconv_lap", 2, depth=4, base_width=8, max_width=32)
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "model.pt", cfg, build_network(cfg).state_dict(),
                    params_for("thorax", "petct", cfg.size).to_dict(), {"modality": "petct"})
    write_card(folder, {"name": name, "modality": "petct", "arch": cfg.arch, "size": cfg.size,
                        "default_threshold": 0.3})
    return folder
