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


def state_processes(state: Path) -> dict[int, int]:
    """Live processes that belong to the state folder ``state`` (a serve started with ``--state-dir
    state``, or a worker / pool child whose environment has ``AUTOPAINT_STATE_DIR=state``):
    {pid: process group}. Read from /proc only (nothing is signalled)."""
    want_env = f"AUTOPAINT_STATE_DIR={state}".encode()
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (str(state).encode() in cmd or want_env in env) and pid_alive(pid) and pid != os.getpid():
            with contextlib.suppress(OSError):
                found[pid] = os.getpgid(pid)
    return found


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


def _read(url: str, fn: Callable[[Any], Any]) -> Any:
    """``fn(session)`` on a fresh engine; one retry when the connection is dropped under it (the
    PostgreSQL fault terminates every backend of its database, ours included)."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(3):
        engine = make_engine(url)
        try:
            with make_session_factory(engine)() as s:
                return fn(s)
        except OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.2)
        finally:
            engine.dispose()


def read_job(state: Path, job_id: str, url: str | None = None) -> Job:
    def _get(s: Any) -> Job:
        job = s.get(Job, job_id)
        assert job is not None, job_id
        return job

    job: Job = _read(url or f"sqlite:///{state / 'autopaint.db'}", _get)
    return job


def all_jobs(state: Path, url: str | None = None) -> list[Job]:
    from sqlalchemy import select

    jobs: list[Job] = _read(url or f"sqlite:///{state / 'autopaint.db'}", lambda s: list(s.scalars(select(Job))))
    return jobs


def artifacts(serve: Serve, job_id: str) -> list[str]:
    """The artifact rows (names) of a job."""
    from sqlalchemy import select

    from autopaint.db import Artifact

    names: list[str] = _read(serve.database_url, lambda s: list(s.scalars(
        select(Artifact.name).where(Artifact.job_id == job_id))))
    return sorted(names)


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


def poll_job(serve: Serve, job_id: str, n: int, every: float) -> tuple[list[tuple[float, int, str]], Any]:
    """Poll ``GET /v1/jobs/{id}`` ``n`` times from a thread, ``every`` seconds apart; returns the list it
    fills, [(monotonic time, status, error code of a 4xx/5xx JSON body, or the exception name with
    status 0)], and the thread (join it)."""
    import threading

    seen: list[tuple[float, int, str]] = []

    def _run() -> None:
        with serve.client() as c:
            for _ in range(n):
                try:
                    r = c.http.get(f"/v1/jobs/{job_id}", timeout=10)
                    code = ""
                    if r.status_code >= 400:
                        code = str(r.json().get("code")) if r.headers.get("content-type", "").startswith(
                            "application/") else "not-json"
                    seen.append((time.monotonic(), r.status_code, code))
                except (httpx.HTTPError, ValueError) as exc:
                    seen.append((time.monotonic(), 0, type(exc).__name__))
                time.sleep(every)

    t = threading.Thread(target=_run, daemon=True)
    t.start()
    return seen, t


BIG_SHAPE = (512, 512, 200)  # int16: 100 MiB of voxels
PIECE = 1 << 20


def slow_upload_body(boundary: str, pause_s: float, sent: list[int]) -> Iterator[bytes]:
    """A multipart body whose CT part is a valid 100 MiB NIfTI (a CT header declaring ``BIG_SHAPE``
    int16, then -1000 HU), yielded in 1 MiB pieces with ``pause_s`` between them; ``sent[0]`` counts."""
    import numpy as np

    from tests.imaging.badfiles import header_block

    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="ct"; filename="ct.nii"\r\n'
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    yield bytes(header_block(BIG_SHAPE, np.int16)) + b"\0" * 4
    piece = np.full(PIECE // 2, -1000, dtype=np.int16).tobytes()
    for _ in range(int(np.prod(BIG_SHAPE)) * 2 // PIECE):
        sent[0] += len(piece)
        yield piece
        time.sleep(pause_s)
    yield f"\r\n--{boundary}--\r\n".encode()


def start_slow_upload(serve: Serve, pause_s: float = 0.02) -> tuple[Any, list[object]]:
    """Start the 100 MiB upload of ``slow_upload_body`` from a thread; returns (thread, outcome: the
    status code or the exception name once it ends)."""
    import threading

    boundary, sent = "fault-upload-boundary", [0]
    outcome: list[object] = []

    def _upload() -> None:
        try:
            r = httpx.post(f"{serve.url}/v1/jobs", content=slow_upload_body(boundary, pause_s, sent),
                           headers={"Authorization": f"Bearer {serve.key}",
                                    "Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=120)
            outcome.append(r.status_code)
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    t = threading.Thread(target=_upload, daemon=True)
    t.start()
    return t, outcome


def spooled_bytes(state: Path) -> int:
    """Bytes in the upload spool (``<state>/uploads``)."""
    return sum(p.stat().st_size for p in (state / "uploads").rglob("*") if p.is_file())


def post_pair(serve: Serve, folder: Path) -> httpx.Response:
    """``POST /v1/jobs`` of the small valid pair in ``folder``, the raw response (no raising)."""
    ct, pet = inputs(folder)
    files = {"ct": ("ct.nii.gz", ct.read_bytes()), "pet": ("pet.nii.gz", pet.read_bytes())}
    return httpx.post(f"{serve.url}/v1/jobs", files=files, data={"params": json.dumps(SUV)},
                      headers={"Authorization": f"Bearer {serve.key}"}, timeout=60)
