"""Worker processes of the embedded service (``autopaint serve``) and their supervisor.

Each worker is ``autopaint worker`` (Celery prefork) in its own process group
(``start_new_session``), so it can be stopped with ``os.killpg`` without touching the caller; it
kills its own group when the process that started it dies (``AUTOPAINT_PARENT_PID``,
:func:`watch_parent`). :class:`WorkerPool` keeps a fixed number of them and its supervisor thread
restarts a dead one (bounded, with backoff; docs/RELIABILITY.md). The state folder, its lock and
the API live in :mod:`services.embedded`.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopaint.settings import Settings

log = logging.getLogger(__name__)

PARENT_PID_ENV = "AUTOPAINT_PARENT_PID"  # set for workers started here: they die with this process
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # n-th death within the window -> delay
MAX_RESTARTS = 5  # a worker that dies more often than this within RESTART_WINDOW_S is given up
RESTART_WINDOW_S = 600.0


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



@dataclass
class _Slot:
    """The supervisor's record of one worker position."""

    deaths: list[float] = field(default_factory=list)  # monotonic times, within the window
    restart_at: float | None = None
    given_up: bool = False


def _nothing() -> None:
    return None


class WorkerPool:
    """Worker processes at fixed positions and the supervisor thread that restarts a dead one.

    ``spawn(i)`` starts the worker of position ``i``; ``procs`` is the list of the running ones, kept
    current here (its owner reads it); ``on_spawned`` runs after workers were started or one was
    restarted (under the pool's lock: record their PIDs), ``on_restart`` once per restart,
    ``on_death`` after a supervisor pass that found a worker dead."""

    def __init__(self, spawn: Callable[[int], WorkerProcess], procs: list[WorkerProcess], *,
                 on_spawned: Callable[[], None] = _nothing, on_restart: Callable[[], None] = _nothing,
                 on_death: Callable[[], None] = _nothing) -> None:
        self.spawn, self.procs = spawn, procs
        self.on_spawned, self.on_restart, self.on_death = on_spawned, on_restart, on_death
        self.restarts = 0
        self._slots: list[_Slot] = []
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._mutex = threading.Lock()

    def start(self, count: int, supervise_every_s: float | None) -> None:
        """Start ``count`` workers; with ``supervise_every_s``, the supervisor thread checks them that often."""
        self._stopping.clear()
        with self._mutex:
            for i in range(count):
                self.procs.append(self.spawn(i))
                self._slots.append(_Slot())
            self.on_spawned()
        if supervise_every_s is not None and count and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, args=(supervise_every_s,),
                                                name="worker-supervisor", daemon=True)
            self._supervisor.start()

    def alive(self) -> int:
        """Worker processes running now."""
        return sum(1 for w in list(self.procs) if w.alive())

    def _supervise(self, every_s: float) -> None:
        while not self._stopping.wait(every_s):
            try:
                if self.check():
                    self.on_death()
            except Exception:  # never let the supervisor die
                log.exception("worker supervisor")

    def check(self) -> bool:
        """Restart due workers, schedule dead ones; True when one was found dead just now."""
        now = time.monotonic()
        died = False
        with self._mutex:
            if self._stopping.is_set():
                return False
            for i, (w, slot) in enumerate(zip(self.procs, self._slots, strict=True)):
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
                    self.procs[i] = self.spawn(i)
                    self.restarts += 1
                    self.on_restart()
                    log.warning("worker %d restarted: pid %d (restart %d)", i, self.procs[i].pid,
                                self.restarts)
                    self.on_spawned()
        return died

    def stop(self, timeout_s: float) -> None:
        """Stop the supervisor, then every worker (warm shutdown: each may finish its running job
        within ``timeout_s``, all at once)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
            self._supervisor = None
        with self._mutex:
            if self.procs:
                log.info("stopping %d worker(s) (warm shutdown, up to %.0f s)", len(self.procs), timeout_s)
            for w in self.procs:  # all at once: each may finish its running job meanwhile
                w.terminate()
            for w in self.procs:
                w.stop(timeout=timeout_s)
            if self.procs:
                log.info("workers stopped")
            self.procs.clear()
            self._slots.clear()
