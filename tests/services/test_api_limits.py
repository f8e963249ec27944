"""API limits (issue #15, items 5, 7, 8): non-finite params refused, per-key caps on active jobs and
uploads in flight, the body-read idle timeout, the ingest semaphore, result headers and HEAD, the
upload janitor. Stalls and concurrency need a real server: uvicorn in a thread on 127.0.0.1 and raw
sockets / threads as clients (the TestClient reads a request body whole before the app runs)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from autopaint.db import Artifact
from autopaint.settings import Settings
from services.api import routes_jobs
from services.api.upload_limits import clean_uploads
from tests.services.apikit import Api, write_pair


@pytest.fixture
def make_api(sqlite_settings: Settings) -> Iterator[Any]:
    apis: list[Api] = []

    def make(**overrides: Any) -> Api:
        a = Api(sqlite_settings.model_copy(update=overrides))
        apis.append(a)
        return a

    yield make
    for a in apis:
        a.close()


@contextmanager
def served(api: Api) -> Iterator[str]:
    """``api``'s app under uvicorn on a free loopback port, in a thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


def _stalled_upload(url: str, key: str, sent: bytes = b"x" * 1000) -> socket.socket:
    """Open a multipart upload announcing 1 MB, send its first part's start, then stall."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (b"--b\r\nContent-Disposition: form-data; name=\"ct\"; filename=\"x\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    req = (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
           "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n").encode()
    sock.sendall(req + head + b"\x1f\x8b" + sent)
    return sock


def _uploads(api: Api) -> list[Path]:
    folder = api.settings.state_dir / "uploads"
    return list(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("raw", ['{"suv_already": false, "weight_kg": 1e400, "injected_dose_bq": 1e8, "delay_s": 60}',
                                 '{"suv_already": false, "weight_kg": NaN, "injected_dose_bq": 1e8, "delay_s": 60}',
                                 '{"suv_already": true, "threshold": Infinity}'])
def test_non_finite_params_refused(make_api: Any, tmp_path: Path, raw: str) -> None:
    api = make_api()
    ct, pet = write_pair(tmp_path)
    files = [(r, (f"{r}.nii.gz", p.read_bytes(), "application/gzip")) for r, p in (("ct", ct), ("pet", pet))]
    r = api.client.post("/v1/jobs", files=files, data={"params": raw}, headers=api.h())
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_params"
    assert api.stored_files() == []


def test_active_jobs_per_key_capped(make_api: Any, tmp_path: Path) -> None:
    api = make_api(max_active_jobs_per_key=1)
    ct, pet = write_pair(tmp_path)
    assert api.submit({"ct": ct, "pet": pet}).status_code == 202
    r = api.submit({"ct": ct, "pet": pet})
    assert r.status_code == 429 and r.json()["code"] == "too_many_jobs" and r.headers["Retry-After"]
    assert api.submit({"ct": ct, "pet": pet}, who="b").status_code == 202  # per key


def test_stalled_upload_cut_with_408_and_temp_removed(make_api: Any) -> None:
    api = make_api(upload_idle_timeout_s=0.5)
    with served(api) as url:
        sock = _stalled_upload(url, api.key_a)
        t0 = time.monotonic()
        sock.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply or b"}" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        sock.close()
        assert time.monotonic() - t0 < 5
        assert reply.startswith(b"HTTP/1.1 408")
        assert b'"code":"upload_timeout"' in reply
        time.sleep(0.2)
        assert _uploads(api) == []


def test_uploads_per_key_capped(make_api: Any, tmp_path: Path) -> None:
    api = make_api(max_uploads_per_key=1, upload_idle_timeout_s=5)
    ct, pet = write_pair(tmp_path)
    with served(api) as url:
        sock = _stalled_upload(url, api.key_a)
        try:
            deadline = time.monotonic() + 5
            while not _uploads(api) and time.monotonic() < deadline:  # the stalled one is in flight
                time.sleep(0.02)
            files = {"ct": ct.read_bytes(), "pet": pet.read_bytes()}
            params = {"params": json.dumps({"suv_already": True})}
            r = httpx.post(f"{url}/v1/jobs", files=files, data=params,
                           headers={"Authorization": f"Bearer {api.key_a}"}, timeout=30)
            assert r.status_code == 429 and r.json()["code"] == "too_many_uploads" and r.headers["Retry-After"]
            r = httpx.post(f"{url}/v1/jobs", files=files, data=params,
                           headers={"Authorization": f"Bearer {api.key_b}"}, timeout=30)
            assert r.status_code == 202, r.text  # another key is not affected
        finally:
            sock.close()


def test_ingests_bounded_busy_503(make_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = make_api(max_concurrent_ingests=1, ingest_wait_s=0.2)
    ct, pet = write_pair(tmp_path)
    real = routes_jobs.validate_files

    def slow_validate(*args: Any, **kw: Any) -> None:
        time.sleep(1.5)
        real(*args, **kw)

    monkeypatch.setattr(routes_jobs, "validate_files", slow_validate)
    answers: list[httpx.Response] = []
    with served(api) as url:
        def post(key: str) -> None:
            answers.append(httpx.post(f"{url}/v1/jobs", files={"ct": ct.read_bytes(), "pet": pet.read_bytes()},
                                      data={"params": json.dumps({"suv_already": True})},
                                      headers={"Authorization": f"Bearer {key}"}, timeout=30))

        threads = [threading.Thread(target=post, args=(k,)) for k in (api.key_a, api.key_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [202, 503], [r.text for r in answers]
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["code"] == "busy" and busy.headers["Retry-After"]


def test_result_headers_and_head(make_api: Any, tmp_path: Path) -> None:
    api = make_api()
    ct, pet = write_pair(tmp_path)
    job_id = api.submit({"ct": ct, "pet": pet}).json()["id"]
    key = f"jobs/{job_id}/results/report.json"
    sha, size = api.ctx.storage.put_stream(key, [b'{"ok": true}'])
    with api.sessions() as s:
        s.add(Artifact(job_id=job_id, name="report.json", storage_key=key, sha256=sha, bytes=size,
                       content_type="application/json"))
        s.commit()
    url = f"/v1/jobs/{job_id}/results/report.json"
    g = api.client.get(url, headers=api.h())
    assert g.status_code == 200 and g.content == b'{"ok": true}'
    h = api.client.head(url, headers=api.h())
    assert h.status_code == 200 and h.content == b""
    for r in (g, h):
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cache-Control"] == "private, no-store"
        assert r.headers["Content-Length"] == str(size)
        assert r.headers["ETag"] == f'"{sha}"'
    assert api.client.head(url, headers=api.h("b")).status_code == 404  # another key's job
    assert api.client.head(f"/v1/jobs/{job_id}/results/nope", headers=api.h()).status_code == 404


def test_upload_janitor(make_api: Any) -> None:
    api = make_api()
    uploads = api.settings.state_dir / "uploads"
    old, new = uploads / "old-job", uploads / "new-job"
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "upload-ct.nii.gz").write_bytes(b"x")
    hour_ago = time.time() - 2 * 3600
    os.utime(old, (hour_ago, hour_ago))
    with TestClient(api.app):  # the lifespan runs the janitor at start
        pass
    assert not old.exists() and new.exists()
    assert clean_uploads(uploads, 0) == 1 and not new.exists()


def test_upload_janitor_removes_all_under_our_serve_lock(make_api: Any) -> None:
    """In ``autopaint serve`` (the lock file names this process) every leftover is stale."""
    api = make_api()
    new = api.settings.state_dir / "uploads" / "new-job"
    new.mkdir(parents=True)
    (api.settings.state_dir / "serve.lock").write_text(f"{os.getpid()}\n")
    with TestClient(api.app):
        pass
    assert not new.exists()


@pytest.mark.parametrize(("shape", "dtype"), [((40, 30, 25), "<i2"), ((10, 11, 9), ">i2"), ((8, 9, 10, 1), "u1"),
                                              ((8, 9), "<f4"), ((20, 21, 17), "<f4")])
def test_streamed_clean_nifti_equals_whole_volume_rewrite(tmp_path: Path, shape: tuple[int, ...], dtype: str) -> None:
    """The slab-streamed re-write (tiny slabs: many of them) gives the bytes of the whole-volume path."""
    import gzip

    import nibabel as nib
    import numpy as np

    from autopaint.imaging.io import read_volume, write_volume
    from services.api.ingest import write_clean_nifti

    rng = np.random.default_rng(0)
    aff = np.diag([0.9, 0.8, 2.5, 1.0])
    aff[:3, 3] = [-100, 20, 5]
    img = nib.Nifti1Image((rng.random(shape) * 100).astype(dtype), aff)
    img.header["descrip"] = b"PATIENT^NAME"
    src = tmp_path / "in.nii.gz"
    nib.save(img, str(src))
    vol = read_volume(src, dtype=None)
    whole = write_volume(vol, tmp_path / "whole.nii.gz", dtype=vol.data.dtype)
    streamed = write_clean_nifti(src, tmp_path / "streamed.nii.gz", slab_bytes=500)
    data = gzip.open(streamed).read()
    assert data == gzip.open(whole).read()
    assert b"PATIENT" not in data


def test_streamed_clean_nifti_is_deterministic(tmp_path: Path) -> None:
    """Same input -> the same stored bytes (no temp-file name or time in the gzip header): a re-run
    of a job must give results with the same sha256."""
    import hashlib

    import numpy as np

    from autopaint.imaging.io import write_volume
    from autopaint.imaging.volume import Volume
    from services.api.ingest import write_clean_nifti

    src = tmp_path / "src.nii.gz"
    write_volume(Volume(np.arange(20 * 20 * 10, dtype=np.float32).reshape(20, 20, 10), np.eye(4)), src,
                 dtype=np.int16)
    digests = {hashlib.sha256(write_clean_nifti(src, tmp_path / f"c{i}.nii.gz").read_bytes()).hexdigest()
               for i in range(2)}
    assert len(digests) == 1
