"""Real processes for the fault suite and ``bench/chaos.py``: ``autopaint serve`` subprocesses, a
private ``redis-server``, a size-capped tmpfs and a private PostgreSQL database. Every process is
started here and killed by its PID (or the process group a started worker leads); nothing is killed
by name. What the tests read from and send to a serve is :mod:`tests.faults.probes`.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autopaint.client import Client
from autopaint.db import Job
from tests.faults.probes import SUV, all_jobs, inputs, read_job, wait_for

ROOT = Path(__file__).resolve().parents[2]
FAKE_PIPELINE = "tests.services.fake_pipelines:slow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class Tmpfs:
    """A size-capped ``tmpfs`` mounted at ``path`` (needs root with mount rights: ``unavailable``
    says why not); ``fill`` takes its last free byte with a filler file, ``free`` gives the space
    back, ``umount`` (teardown) unmounts it."""

    FILLER = ".filler"

    def __init__(self, path: Path, size_kb: int) -> None:
        self.path, self.size_kb, self.mounted = path, size_kb, False

    @staticmethod
    def unavailable(scratch: Path) -> str | None:
        """None when a tmpfs can be mounted here, else the reason (for a skip)."""
        if os.geteuid() != 0:
            return "mounting a size-capped tmpfs needs root"
        probe = scratch / "tmpfs-probe"
        probe.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run mount: {exc}"
        if r.returncode != 0:
            return f"mount -t tmpfs is not permitted here: {r.stderr.strip()}"
        subprocess.run(["umount", str(probe)], check=False)
        return None

    def mount(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k,mode=0755", "tmpfs", str(self.path)],
                       check=True, capture_output=True)
        self.mounted = True
        return self

    def fill(self) -> int:
        """Write a filler file until the file system answers ENOSPC; returns its size in bytes."""
        import errno

        n = 0
        with open(self.path / self.FILLER, "ab", buffering=0) as fh:
            for block in (1 << 16, 1 << 12, 1):
                while True:
                    try:
                        n += fh.write(b"\0" * block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return n

    def free(self) -> None:
        (self.path / self.FILLER).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Every file on it but the filler and the readiness probe's (relative paths)."""
        return sorted(p.relative_to(self.path) for p in self.path.rglob("*")
                      if p.is_file() and p.name != self.FILLER and "_probe" not in p.parts)

    def umount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], check=False)  # a process still holds a file
            self.mounted = False


PG_ADMIN_URL = os.environ.get("AUTOPAINT_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class PgDatabase:
    """A private database on the shared PostgreSQL server: a unique name, created by ``create`` and
    dropped by ``drop``. ``terminate_backends`` ends the connections to this database only (never
    another one's, never the server)."""

    def __init__(self, prefix: str = "autopaint_fault") -> None:
        import uuid

        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    @staticmethod
    def available() -> bool:
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
                return True
        except Exception:
            return False

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)

    def create(self) -> PgDatabase:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` every connection to this database; returns how many."""
        with self._admin() as conn:
            row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def drop(self) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


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
    def database_url(self) -> str:
        """The database this serve uses: ``AUTOPAINT_DATABASE_URL`` from ``env``, else its SQLite file."""
        return self.env.get("AUTOPAINT_DATABASE_URL") or f"sqlite:///{self.state / 'autopaint.db'}"

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
        return read_job(self.state, job_id, self.database_url)

    def jobs(self) -> list[Job]:
        return all_jobs(self.state, self.database_url)

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
