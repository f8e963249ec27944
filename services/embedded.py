"""The embedded service behind ``autopaint serve``: uvicorn + real Celery worker processes on
SQLite (database and the kombu ``sqla+sqlite://`` broker) and local storage; no Redis/PostgreSQL.

The same classes start workers for the tests and the demo. Workers are separate process groups
(``start_new_session``) so they can be stopped with ``os.killpg`` without touching the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopaint.settings import Settings

log = logging.getLogger(__name__)

API_KEY_ENV = "AUTOPAINT_API_KEY"


def embedded_queue(settings: Settings) -> str:
    """The queue an embedded service publishes to and consumes: ``gpu`` with CUDA, else ``cpu``."""
    from services.worker.config import cuda_present

    return settings.queue if cuda_present(settings.device) else settings.cpu_queue


def prepare(settings: Settings, migrate: bool = True) -> None:
    """Create the state folders and bring the database schema to the newest migration."""
    settings.ensure_dirs()
    if migrate:
        from autopaint.db.migrate import upgrade

        upgrade(settings.database_url)


def recover_jobs(settings: Settings) -> int:
    """Publish every unfinished job again (at start of the embedded service).

    The kombu sqla transport deletes a message when a worker fetches it; if the whole worker
    (not just a child) dies, that message is gone and the job row would stay QUEUED/RUNNING.
    Re-publishing is safe: a duplicate message finds the job leased or finished and is dropped
    (``lease_job``), so each job still runs at most once at a time. Returns the number published.
    """
    from sqlalchemy import select

    from autopaint.contracts import TASK_RUN_JOB, JobState
    from autopaint.db import Job, make_engine, make_session_factory
    from services.worker.app import create_celery_app

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(select(Job.id, Job.queue).where(
                Job.state.in_([JobState.QUEUED, JobState.RUNNING]))).all()
    finally:
        engine.dispose()
    if rows:
        producer = create_celery_app(settings)
        for job_id, queue in rows:
            producer.send_task(TASK_RUN_JOB, args=[job_id], queue=queue or settings.queue)
        log.info("re-published %d unfinished job(s)", len(rows))
    return len(rows)


def ensure_api_key(settings: Settings, name: str = "embedded") -> str:
    """The demo's API key: ``AUTOPAINT_API_KEY`` when set (registered, hashed, if new), else a
    fresh key (only its sha256 is stored)."""
    from sqlalchemy import select

    from autopaint.db import ApiKey, make_engine, make_session_factory
    from services.api.auth import TOKEN_PREFIX, create_api_key, hash_key

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            given = os.environ.get(API_KEY_ENV)
            if not given:
                return create_api_key(session, name)[1]
            if not given.startswith(TOKEN_PREFIX):
                raise ValueError(f"{API_KEY_ENV} must start with {TOKEN_PREFIX!r}")
            digest = hash_key(given)
            if session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first() is None:
                session.add(ApiKey(name=name, key_hash=digest, prefix=given[: len(TOKEN_PREFIX) + 6]))
                session.commit()
            return given
    finally:
        engine.dispose()


@dataclass
class WorkerProcess:
    """One ``autopaint worker`` process group (prefork parent + its children)."""

    proc: subprocess.Popen[bytes]
    queues: list[str]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the parent (Celery warm shutdown: the running job may finish), SIGKILL the
        whole group after ``timeout`` seconds (an unfinished job is re-run: acks_late + lease)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def start_worker(settings: Settings, queues: list[str], concurrency: int = 1,
                 log_path: Path | None = None, extra_env: dict[str, str] | None = None,
                 loglevel: str = "INFO") -> WorkerProcess:
    """Start ``autopaint worker`` (Celery prefork, ``concurrency`` children) in its own process
    group, configured by ``settings`` through ``AUTOPAINT_*`` environment variables."""
    from services.worker.config import settings_env

    env = {**os.environ, **settings_env(settings), **(extra_env or {})}
    cmd = [sys.executable, "-m", "services.cli", "worker", "--queues", ",".join(queues),
           "--concurrency", str(concurrency), "--loglevel", loglevel,
           "--name", f"autopaint-{secrets.token_hex(4)}"]
    out: Any = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if log_path is not None:
        out.close()
    log.info("worker pid %d started on %s", proc.pid, queues)
    return WorkerProcess(proc, queues, log_path)


@dataclass
class EmbeddedService:
    """uvicorn (API) in a background thread + ``workers`` Celery worker processes."""

    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_only: bool = False
    log_dir: Path | None = None
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment of the workers
    worker_procs: list[WorkerProcess] = field(default_factory=list)
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_workers(self) -> None:
        queue = self.settings.queue
        for i in range(self.workers):
            log_path = self.log_dir / f"worker-{i}.log" if self.log_dir else None
            self.worker_procs.append(start_worker(self.settings, [queue], log_path=log_path,
                                                  extra_env=self.worker_env))

    def _server_obj(self) -> Any:
        import uvicorn

        from services.api.app import create_app

        config = uvicorn.Config(create_app(self.settings), host=self.host, port=self.port,
                                log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        return self._server

    def start(self, timeout: float = 30.0) -> None:
        """Start workers and the API in a background thread; wait until it accepts requests."""
        if not self.api_only:
            self.start_workers()
        server = self._server_obj()
        self._thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API did not start on {self.url}")
            time.sleep(0.05)

    def run_forever(self) -> None:
        """Start workers, serve the API in this thread until Ctrl-C/SIGTERM, then stop workers."""
        if not self.api_only:
            self.start_workers()

        def _term(signum: int, _frame: Any) -> None:
            raise SystemExit(128 + signum)

        # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the previous handler:
        # make that handler an exception so the workers below are stopped, not orphaned
        previous = signal.signal(signal.SIGTERM, _term)
        try:
            self._server_obj().run()
        finally:
            self.stop_workers()
            signal.signal(signal.SIGTERM, previous)

    def stop_workers(self) -> None:
        for w in self.worker_procs:
            w.stop()
        self.worker_procs.clear()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.stop_workers()

    @contextlib.contextmanager
    def running(self) -> Iterator[EmbeddedService]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
