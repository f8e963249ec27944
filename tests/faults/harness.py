"""Real processes for the fault suite and ``bench/chaos.py``: ``autopaint serve`` subprocesses, a
private ``redis-server``, the job rows they share, and process checks. Every process is started
here and killed by its PID (or the process group a started worker leads); nothing is killed by name.

Jobs run the TEST-ONLY fake pipeline (``tests.services.fake_pipelines:slow`` through
``AUTOPAINT_TEST_PIPELINE``): a few seconds in ``searching`` (20 circle steps), then the stored CT
copied as the mask, so a job's result sha256 depends only on its inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autopaint.client import Client
from autopaint.db import Job, make_engine, make_session_factory

ROOT = Path(__file__).resolve().parents[2]
FAKE_PIPELINE = "tests.services.fake_pipelines:slow"
SUV = {"suv_already": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Running (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def inputs(folder: Path) -> tuple[Path, Path]:
    """A small valid CT + PET (SUV) NIfTI pair."""
    from tests.services.apikit import write_pair

    if not (folder / "ct.nii.gz").exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_pair(folder, with_phi=False)
    return folder / "ct.nii.gz", folder / "pet.nii.gz"


class RedisServer:
    """A private ``redis-server`` on a free loopback port, AOF on (as in docker-compose), in
    ``folder``; ``kill`` is SIGKILL, ``start`` again restarts it on the same port and data."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        import redis

        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
               "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
               "--maxmemory-policy", "noeviction", "--daemonize", "no",
               "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

        def _up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(_up, timeout, f"redis-server on port {self.port}")
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Serve:
    """``autopaint serve`` as a subprocess on its own state folder and port (device cpu -> queue
    ``cpu``), its workers running the fake pipeline. ``env``: extra ``AUTOPAINT_*`` settings."""

    state: Path
    workers: int = 1
    slow_s: float = 4.0
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    peak_mb: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def runlog(self) -> Path:
        return self.state.parent / f"{self.state.name}-runlog.txt"

    def env_vars(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPAINT_")}
        for keep in ("AUTOPAINT_DATA_DIR",):
            if keep in os.environ:
                env[keep] = os.environ[keep]
        env.update({"AUTOPAINT_DEVICE": "cpu", "AUTOPAINT_PROGRESS_EVERY_CIRCLES": "1",
                    "AUTOPAINT_TEST_PIPELINE": FAKE_PIPELINE, "AUTOPAINT_TEST_RUNLOG": str(self.runlog),
                    "AUTOPAINT_TEST_SLOW_S": str(self.slow_s), "PYTHONPATH": str(ROOT),
                    "OMP_NUM_THREADS": "1", **self.env})
        return env

    def cmd(self) -> list[str]:
        return [sys.executable, "-m", "services.cli", "serve", "--state-dir", str(self.state),
                "--port", str(self.port), "--workers", str(self.workers)]

    def launch(self) -> subprocess.Popen[bytes]:
        """Start one serve process (without waiting); its output goes to ``<state>-serve-N.log``."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.runlog.touch()
        log = self.state.parent / f"{self.state.name}-serve-{len(self.started)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.cmd(), cwd=ROOT, env=self.env_vars(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started.append(proc)
        return proc

    def start(self, timeout: float = 90.0) -> Serve:
        self.proc = self.launch()
        self.wait_ready(timeout)
        return self

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            r = httpx.get(f"{self.url}/readyz", timeout=5)
            return r.status_code, r.json()
        except (httpx.HTTPError, ValueError):
            return 0, {}

    def wait_ready(self, timeout: float = 90.0) -> None:
        def _ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.logs()}")
            return self.readyz()[0] == 200

        wait_for(_ready, timeout, f"serve ready on {self.url}", every=0.25)

    def logs(self, tail: int = 4000) -> str:
        parts = [p.read_text(errors="replace")[-tail:] for p in sorted(self.state.parent.glob(f"{self.state.name}-serve-*.log"))]
        parts += [p.read_text(errors="replace")[-tail:] for p in sorted((self.state / "logs").glob("*.log"))]
        return "\n".join(parts)

    @property
    def key(self) -> str:
        return (self.state / "embedded.apikey").read_text().strip()

    def client(self) -> Client:
        return Client(self.url, self.key, retries=0)

    def worker_pids(self) -> list[int]:
        """The worker parents this serve recorded (``<state>/workers.pids``)."""
        try:
            return [int(e["pid"]) for e in json.loads((self.state / "workers.pids").read_text())]
        except (OSError, ValueError):
            return []

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the serve processes (API + supervisor + reconciler) seen so far
        (the kernel's high-water mark of the current one, at each call), MiB."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
        return self.peak_mb

    def submit(self, folder: Path) -> str:
        ct, pet = inputs(folder)
        with self.client() as c:
            return str(c.submit(ct=ct, pet=pet, params=SUV)["id"])

    def job(self, job_id: str) -> Job:
        return read_job(self.state, job_id)

    def runs(self, job_id: str) -> list[str]:
        return [line.split()[1] for line in self.runlog.read_text().splitlines() if line.startswith(job_id)]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.peak_rss_mb()
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every serve started here, then SIGKILL what is left, and kill the process
        groups of the workers they recorded (started by them, so by us)."""
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def read_job(state: Path, job_id: str) -> Job:
    engine = make_engine(f"sqlite:///{state / 'autopaint.db'}")
    try:
        with make_session_factory(engine)() as s:
            job = s.get(Job, job_id)
            assert job is not None, job_id
            return job
    finally:
        engine.dispose()


def all_jobs(state: Path) -> list[Job]:
    from sqlalchemy import select

    engine = make_engine(f"sqlite:///{state / 'autopaint.db'}")
    try:
        with make_session_factory(engine)() as s:
            return list(s.scalars(select(Job)))
    finally:
        engine.dispose()


def child_pid(job: Job) -> int:
    """The PID of the process holding the job's lease (a worker's pool child)."""
    assert job.lease_owner, job
    return int(job.lease_owner.rsplit(":", 1)[1])


def wait_running(serve: Serve, job_id: str, circles: int = 2, timeout: float = 90.0) -> Job:
    def _running() -> Job | None:
        job = serve.job(job_id)
        return job if job.state == "running" and job.circles_done >= circles and job.lease_owner else None

    job: Job = wait_for(_running, timeout, f"job {job_id} running")
    return job


def wait_terminal(serve: Serve, job_id: str, timeout: float = 180.0) -> Job:
    try:
        job: Job = wait_for(lambda: (j := serve.job(job_id)).state.terminal and j, timeout,
                            f"job {job_id} to end", every=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {serve.job(job_id).state}\n{serve.logs()}") from None
    return job


@contextlib.contextmanager
def readyz_watch(serve: Serve, every: float = 0.1) -> Iterator[list[tuple[float, int, Any]]]:
    """Poll ``/readyz`` in a thread while the block runs: [(monotonic time, status, workers)]."""
    import threading

    seen: list[tuple[float, int, Any]] = []
    stop = threading.Event()

    def _poll() -> None:
        while not stop.is_set():
            status, body = serve.readyz()
            seen.append((time.monotonic(), status, body.get("workers")))
            stop.wait(every)

    t = threading.Thread(target=_poll, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(timeout=10)
