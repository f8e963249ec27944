"""Probes and traffic for the fault suite and ``bench/chaos.py``: process checks, the job rows a
serve shares (read on a fresh engine, retried when a fault drops the connection), waits, ``/readyz``
and status pollers, and the uploads the tests send (the small valid pair, a slow 100 MiB one). The
processes themselves (serve, redis-server, tmpfs, PostgreSQL) are :mod:`tests.faults.harness`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from autopaint.db import Job, make_engine, make_session_factory

if TYPE_CHECKING:
    from tests.faults.harness import Serve

SUV = {"suv_already": True}


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
