"""The embedded service behind ``autopaint serve``: uvicorn + real Celery worker processes on
SQLite (database and the kombu ``sqla+sqlite://`` broker) and local storage; no Redis/PostgreSQL.

The same classes start workers for the tests and the demo. Workers are separate process groups
(``start_new_session``) so they can be stopped with ``os.killpg`` without touching the caller.

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
PARENT_PID_ENV = "AUTOPAINT_PARENT_PID"  # set for workers started here: they die with this process
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


def watch_parent(interval_s: float = 1.0) -> bool:
    """In a worker started by :func:`start_worker`: a daemon thread that kills this worker's whole
    process group (its pool children too) as soon as the process that started it is gone (its
    parent PID changes), so a killed ``serve`` leaves no orphan worker running jobs. Returns
    whether it watches (only when ``AUTOPAINT_PARENT_PID`` is set)."""
    try:
        parent = int(os.environ.get(PARENT_PID_ENV, ""))
    except ValueError:
        return False

    def _watch() -> None:
        while True:
            if os.getppid() != parent:
                log.error("the process that started this worker (pid %d) is gone; exiting", parent)
                if os.getpgrp() == os.getpid():
                    os.killpg(os.getpid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval_s)

    threading.Thread(target=_watch, name="watch-parent", daemon=True).start()
    return True


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

    def terminate(self) -> None:
        """SIGTERM the parent: Celery's warm shutdown (the running job may finish)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

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
    group, configured by ``settings`` through ``AUTOPAINT_*`` environment variables. The worker
    kills its group when this process dies (:func:`watch_parent`)."""
    from services.worker.config import settings_env

    env = {**os.environ, **settings_env(settings), **(extra_env or {}), PARENT_PID_ENV: str(os.getpid())}
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


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait (bounded) until no process of the group ``pgid`` is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # n-th death within the window -> delay
MAX_RESTARTS = 5  # a worker that dies more often than this within RESTART_WINDOW_S is given up
RESTART_WINDOW_S = 600.0


@dataclass
class _Slot:
    """The supervisor's record of one worker position."""

    deaths: list[float] = field(default_factory=list)  # monotonic times, within the window
    restart_at: float | None = None
    given_up: bool = False


@dataclass
class EmbeddedService:
    """uvicorn (API) in a background thread + ``workers`` Celery worker processes, watched by a
    supervisor thread that restarts a dead one (``supervise``)."""

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
    restarts: int = 0
    _server: Any = None
    _thread: threading.Thread | None = None
    _lock_fd: int | None = None
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None
    _metrics: Any = None
    _app: Any = None
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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
        self._stopping.clear()
        with self._mutex:
            for i in range(self.workers):
                self.worker_procs.append(self._spawn(i))
                self._slots.append(_Slot())
            self._record_pids()
        if self.supervise and self.workers and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
            self._supervisor.start()

    def workers_alive(self) -> int:
        """Worker processes running now (``/readyz`` is not ready at 0)."""
        return sum(1 for w in list(self.worker_procs) if w.alive())

    def _supervise(self) -> None:
        while not self._stopping.wait(self.supervise_every_s):
            try:
                if self._check_workers():
                    self._reconcile_now()
            except Exception:  # never let the supervisor die
                log.exception("worker supervisor")

    def _reconcile_now(self) -> None:
        """A worker died: the API's reconciler re-queues its job now (its holder is gone from this
        host, so the lease need not run out) instead of at its next pass."""
        rec = getattr(self._app.state, "reconciler", None) if self._app is not None else None
        if rec is not None:
            rec.check_gone_holders()

    def _check_workers(self) -> bool:
        """Restart due workers, schedule dead ones; True when one was found dead just now."""
        now = time.monotonic()
        died = False
        with self._mutex:
            if self._stopping.is_set():
                return False
            for i, (w, slot) in enumerate(zip(self.worker_procs, self._slots, strict=True)):
                if slot.given_up:
                    continue
                if slot.restart_at is None:
                    if w.alive():
                        continue
                    w.stop(timeout=0)  # the group: pool children orphaned by a killed parent
                    _wait_group_gone(w.pid, 2.0)
                    died = True
                    slot.deaths = [t for t in slot.deaths if now - t < RESTART_WINDOW_S] + [now]
                    if len(slot.deaths) > MAX_RESTARTS:
                        slot.given_up = True
                        log.error("worker %d (pid %d) exited with %s and died %d times in %.0f s: "
                                  "not restarting it", i, w.pid, w.proc.returncode, len(slot.deaths),
                                  RESTART_WINDOW_S)
                        continue
                    delay = RESTART_BACKOFF_S[min(len(slot.deaths), len(RESTART_BACKOFF_S)) - 1]
                    slot.restart_at = now + delay
                    log.error("worker %d (pid %d) exited with %s; restarting it in %.0f s", i, w.pid,
                              w.proc.returncode, delay)
                elif now >= slot.restart_at:
                    slot.restart_at = None
                    self.worker_procs[i] = self._spawn(i)
                    self.restarts += 1
                    if self._metrics is not None and self._metrics.worker_restarts is not None:
                        self._metrics.worker_restarts.inc()
                    log.warning("worker %d restarted: pid %d (restart %d)", i, self.worker_procs[i].pid,
                                self.restarts)
                    self._record_pids()
        return died

    def stop_workers(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
            self._supervisor = None
        with self._mutex:
            if self.worker_procs:
                log.info("stopping %d worker(s) (warm shutdown, up to %.0f s)", len(self.worker_procs),
                         self.worker_stop_timeout_s)
            for w in self.worker_procs:  # all at once: each may finish its running job meanwhile
                w.terminate()
            for w in self.worker_procs:
                w.stop(timeout=self.worker_stop_timeout_s)
            if self.worker_procs:
                log.info("workers stopped")
            self.worker_procs.clear()
            self._slots.clear()
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
