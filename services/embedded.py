"""The embedded service behind ``autopaint serve``: uvicorn + real Celery worker processes on
SQLite (database and the kombu ``sqla+sqlite://`` broker) and local storage; no Redis/PostgreSQL.

The worker processes, started the same way for the tests and the demo, and the supervisor that
restarts a dead one are :mod:`services.embedded_workers`; this module holds the service around them.

Faults (docs/RELIABILITY.md): a supervisor thread restarts a dead worker process (bounded, with
backoff) and reports it in ``/readyz`` (``workers``) and ``/metrics``; the state folder is locked
(``serve.lock``: a second serve on it exits 2); a worker kills its own process group when the
process that started it dies (``AUTOPAINT_PARENT_PID``), and the worker PIDs are recorded
(``workers.pids``) so the next serve kills any left over; the embedded API key is kept in
``<state>/embedded.apikey`` (mode 0600) and reused, not minted again on every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopaint.settings import Settings
from services.embedded_workers import WorkerPool, WorkerProcess, start_worker

log = logging.getLogger(__name__)

API_KEY_ENV = "AUTOPAINT_API_KEY"
LOCK_FILE = "serve.lock"
PIDS_FILE = "workers.pids"


class StateDirBusy(RuntimeError):
    """Another live process holds the state folder's lock."""


def lock_state_dir(state_dir: Path) -> int:
    """Take ``<state_dir>/serve.lock`` (``flock``, exclusive, non-blocking) for this process and
    write its PID there; returns the open descriptor (the lock lives as long as it stays open).

    The kernel drops the lock when its holder dies, so a lock file left by a killed serve (a dead
    PID) is simply taken over. Raises :class:`StateDirBusy` when a live process holds it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirBusy(f"another autopaint serve (pid {holder}) is using the state folder "
                           f"{state_dir}; stop it first or pass another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), to tell
    a recorded worker from a later process that reuses its PID; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def kill_stale_workers(state_dir: Path) -> int:
    """Kill the process groups of workers recorded in ``<state_dir>/workers.pids`` by an earlier
    serve that died without stopping them (call it holding the state folder's lock). Returns how
    many were still running."""
    path = state_dir / PIDS_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    killed = 0
    for entry in recorded if isinstance(recorded, list) else []:
        pid, started = int(entry.get("pid", 0)), entry.get("start")
        if pid > 0 and started is not None and _start_time(pid) == started:
            log.warning("killing worker pid %d left running by an earlier serve", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            killed += 1
    path.unlink(missing_ok=True)
    return killed



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
    """Publish every unfinished job again (at start of the embedded service on the sqla broker; while
    the API runs, its reconciler does this for any broker, see ``services.api.reconciler``).

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


def api_key_file(settings: Settings, name: str = "embedded") -> Path:
    """Where :func:`ensure_api_key` keeps the service's own key: ``<state>/<name>.apikey``."""
    return settings.state_dir / f"{name}.apikey"


def ensure_api_key(settings: Settings, name: str = "embedded") -> str:
    """The embedded service's API key, the same on every start.

    ``AUTOPAINT_API_KEY`` when set (registered, hashed, if new). Otherwise the token kept in
    ``<state>/<name>.apikey`` (mode 0600, like the database beside it: the state folder is the
    owner's) when it is still a valid key; else a fresh key is created (only its sha256 goes to
    the database) and written there. Revoke it with ``autopaint admin`` to get a new one.
    """
    from sqlalchemy import select

    from autopaint.db import ApiKey, make_engine, make_session_factory
    from autopaint.fsutil import atomic_write_bytes
    from services.api.auth import TOKEN_PREFIX, create_api_key, hash_key

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            given = os.environ.get(API_KEY_ENV)
            if not given:
                path = api_key_file(settings, name)
                with contextlib.suppress(OSError):
                    kept = path.read_text().strip()
                    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(kept))).first()
                    if kept.startswith(TOKEN_PREFIX) and row is not None and not row.revoked:
                        return kept
                token = create_api_key(session, name)[1]
                atomic_write_bytes(path, f"{token}\n".encode())  # mkstemp: created 0600
                os.chmod(path, 0o600)
                return token
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
class EmbeddedService:
    """uvicorn (API) in a background thread + ``workers`` Celery worker processes, watched by a
    supervisor thread that restarts a dead one (``supervise``; :class:`~services.embedded_workers.WorkerPool`)."""

    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_only: bool = False
    log_dir: Path | None = None
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment of the workers
    worker_procs: list[WorkerProcess] = field(default_factory=list)
    supervise: bool = True
    supervise_every_s: float = 0.5
    worker_stop_timeout_s: float = 10.0  # warm shutdown: the running job may finish this long
    _server: Any = None
    _thread: threading.Thread | None = None
    _lock_fd: int | None = None
    _metrics: Any = None
    _app: Any = None
    _pool: WorkerPool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pool = WorkerPool(lambda i: self._spawn(i), self.worker_procs, on_spawned=self._record_pids,
                                on_restart=self._count_restart, on_death=self._reconcile_now)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def restarts(self) -> int:
        """Worker restarts by the supervisor so far."""
        return self._pool.restarts

    # --- the state folder ---------------------------------------------------------------------

    def acquire(self) -> None:
        """Lock the state folder (:class:`StateDirBusy` when another serve holds it) and kill
        worker groups an earlier, killed serve left running. A no-op for ``api_only``."""
        if self.api_only or self._lock_fd is not None:
            return
        self._lock_fd = lock_state_dir(self.settings.state_dir)
        kill_stale_workers(self.settings.state_dir)

    def _release(self) -> None:
        if self._lock_fd is not None:
            (self.settings.state_dir / PIDS_FILE).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _record_pids(self) -> None:
        entries = [{"pid": w.pid, "start": _start_time(w.pid)} for w in self.worker_procs]
        from autopaint.fsutil import atomic_write_bytes

        with contextlib.suppress(OSError):
            atomic_write_bytes(self.settings.state_dir / PIDS_FILE, json.dumps(entries).encode())

    # --- workers and their supervisor -----------------------------------------------------------

    def _spawn(self, i: int) -> WorkerProcess:
        log_path = self.log_dir / f"worker-{i}.log" if self.log_dir else None
        return start_worker(self.settings, [self.settings.queue], log_path=log_path, extra_env=self.worker_env)

    def start_workers(self) -> None:
        self.acquire()
        self._pool.start(self.workers, self.supervise_every_s if self.supervise else None)

    def workers_alive(self) -> int:
        """Worker processes running now (``/readyz`` is not ready at 0)."""
        return self._pool.alive()

    def _count_restart(self) -> None:
        if self._metrics is not None and self._metrics.worker_restarts is not None:
            self._metrics.worker_restarts.inc()

    def _reconcile_now(self) -> None:
        """A worker died: the API's reconciler re-queues its job now (its holder is gone from this
        host, so the lease need not run out) instead of at its next pass."""
        rec = getattr(self._app.state, "reconciler", None) if self._app is not None else None
        if rec is not None:
            rec.check_gone_holders()

    def stop_workers(self) -> None:
        self._pool.stop(self.worker_stop_timeout_s)
        self._release()

    # --- the API --------------------------------------------------------------------------------

    def _server_obj(self) -> Any:
        import uvicorn

        from services.api.app import create_app

        app = create_app(self.settings)
        self._app = app
        if not self.api_only:
            ctx = app.state.ctx
            ctx.worker_status = self.workers_alive
            ctx.metrics.watch_workers(self.workers_alive)
            self._metrics = ctx.metrics
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="on")
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
        """Start workers, serve the API in this thread until Ctrl-C/SIGTERM, then stop workers
        (warm shutdown: a running job gets ``worker_stop_timeout_s`` to finish)."""
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
