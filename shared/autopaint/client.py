"""Python client of the autopaint REST API (httpx).

    with Client("http://127.0.0.1:8000", api_key) as c:
        job = c.submit(ct="ct.nii.gz", pet="pet.nii.gz", params={"preset": "thorax", "suv_already": True})
        job = c.submit(ct="dicom/CT", pet="dicom/PET")  # DICOM series folders: units from the headers
        job = c.wait(job["id"], on_progress=lambda j: print(j["progress"]))
        c.download(job["id"], "results/")
        for event, data in c.events(job["id"]): ...   # the same progress as server-sent events

``submit(..., callback_url=...)`` and ``create_cohort(..., callback_url=...)`` ask for a signed POST when
the job / cohort finishes; ``callback_secret()`` is the secret that signs them
(``autopaint.webhooks.verify`` checks one).

Uploads are streamed from disk (multipart); a DICOM series folder (CT or PET) is zipped on the fly
into a temporary file that is streamed and then deleted. ``submit`` sends an ``Idempotency-Key`` (a fresh
uuid unless given) and retries transient failures (connection errors, 502/503/504) with the same
key, so a retry never creates a second job. Downloads are written to a temporary file, checked
against the server's sha256 and renamed into place. Jobs are returned as the API's JSON dicts
(``GET /v1/jobs/{id}``: ``id, state, progress{stage, done, total, unit, circles_done,
circles_total, fraction}, queue_position, eta_s, attempts, error_code, ...``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from autopaint.errors import AutopaintError, InvalidInput
from autopaint.fsutil import atomic_write_chunks

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
RETRY_STATUS = (502, 503, 504)
PathLike = str | os.PathLike[str]
DICOM_ROLES = ("ct", "pet")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def zip_dicom_folder(folder: PathLike, dest: PathLike) -> Path:
    """Zip every file under ``folder`` (recursively; hidden names skipped, as the DICOM reader does)
    into ``dest`` with relative member names — the upload form of a DICOM series folder."""
    root, dest = Path(folder), Path(dest)
    n = 0
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for dirpath, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(x for x in names if not x.startswith(".")):
                path = Path(dirpath) / name
                if not path.is_file():
                    continue
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                with open(path, "rb") as src, zf.open(info, "w") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                n += 1
    if n == 0:
        dest.unlink(missing_ok=True)
        raise InvalidInput(f"the DICOM folder {root.name!r} holds no files", code="not_dicom")
    return dest


class ApiError(AutopaintError):
    """The API answered an error: ``status`` (HTTP), ``code`` (stable) and the server's detail."""

    code = "api_error"

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} [{code}]: {detail}", code=code)
        self.status = status
        self.detail = detail


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        code, detail = str(body.get("code", "http_error")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        code, detail = "http_error", resp.text[:500]
    raise ApiError(resp.status_code, code, detail)


class Client:
    """A session with one autopaint server (``base_url``) using one API key."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                 timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, retry: bool = True, **kw: Any) -> httpx.Response:
        """One request; connection errors and 502/503/504 are retried with backoff when the call
        is safe to repeat (reads, and writes carrying an idempotency key)."""
        attempts = self.retries + 1 if retry else 1
        for i in range(attempts):
            try:
                resp = self.http.request(method, url, **kw)
            except httpx.TransportError:
                if i == attempts - 1:
                    raise
                time.sleep(min(5.0, 0.5 * 2**i))
                continue
            if resp.status_code in RETRY_STATUS and i < attempts - 1:
                wait = resp.headers.get("Retry-After", "")
                time.sleep(min(float(wait), 10.0) if wait.replace(".", "", 1).isdigit() else 0.5 * 2**i)
                continue
            _raise_for(resp)
            return resp
        raise AssertionError("unreachable")

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, ct: PathLike | None = None, pet: PathLike | None = None,
               organ_mask: PathLike | None = None, label: PathLike | None = None,
               params: dict[str, Any] | None = None, case_name: str | None = None,
               cohort_id: str | None = None, idempotency_key: str | None = None,
               callback_url: str | None = None) -> dict[str, Any]:
        """Upload the inputs (streamed) and create a job; returns the job (state ``queued``).

        ``ct`` / ``pet``: a NIfTI file, or a DICOM series folder (zipped on the fly to a temporary
        file, deleted afterwards; the server also takes a zip file as it is). ``organ_mask`` /
        ``label``: NIfTI. ``params``: :class:`autopaint.contracts.JobParams` fields (preset,
        modality, model, mode, threshold, the PET units: ``suv_already`` or the Bq/mL fields for a
        NIfTI PET, nothing for a DICOM PET; ``ct_series_uid`` / ``pet_series_uid``). Only role names
        reach the server, never the local file names. ``callback_url``: POSTed (signed) when the job
        ends (``params["callback_url"]``).
        """
        key = idempotency_key or uuid.uuid4().hex
        roles = {"ct": ct, "pet": pet, "organ_mask": organ_mask, "label": label}
        params = {**(params or {}), **({"callback_url": callback_url} if callback_url else {})}
        data = {"params": json.dumps(params)}
        if case_name:
            data["case_name"] = case_name
        if cohort_id:
            data["cohort_id"] = cohort_id
        with tempfile.TemporaryDirectory(prefix="autopaint-upload-") as tmp:
            sources = {role: self._upload_source(role, Path(path), Path(tmp))
                       for role, path in roles.items() if path is not None}
            return self._post_job(data, sources, key)

    @staticmethod
    def _upload_source(role: str, path: Path, tmp: Path) -> tuple[Path, str, str]:
        """(file to stream, part filename, content type) of one input; a folder is zipped into ``tmp``."""
        if path.is_dir():
            if role not in DICOM_ROLES:
                raise InvalidInput(f"{role} must be a NIfTI file, not a folder", code="bad_arguments")
            return zip_dicom_folder(path, tmp / f"{role}.zip"), f"{role}.zip", "application/zip"
        return path, f"{role}.nii.gz", "application/gzip"

    def _post_job(self, data: dict[str, str], sources: dict[str, tuple[Path, str, str]], key: str) -> dict[str, Any]:
        for i in range(self.retries + 1):
            with contextlib.ExitStack() as stack:
                files: dict[str, tuple[str, BinaryIO, str]] = {
                    role: (name, stack.enter_context(open(path, "rb")), ctype)
                    for role, (path, name, ctype) in sources.items()
                }
                try:
                    resp = self.http.post("/v1/jobs", data=data, files=files,
                                          headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    if i == self.retries:
                        raise
                    time.sleep(min(5.0, 0.5 * 2**i))
                    continue
            if resp.status_code in RETRY_STATUS and i < self.retries:
                time.sleep(min(5.0, 0.5 * 2**i))
                continue
            _raise_for(resp)
            job: dict[str, Any] = resp.json()
            return job
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``."""
        out: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}").json()
        return out

    def list_jobs(self, state: str | None = None, cohort_id: str | None = None,
                  offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """One page: ``{items, total, offset, limit, next_offset}``."""
        q: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            q["state"] = state
        if cohort_id:
            q["cohort_id"] = cohort_id
        out: dict[str, Any] = self._request("GET", "/v1/jobs", params=q).json()
        return out

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             poll_s: float = 1.0, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the job is succeeded/failed/cancelled; ``on_progress(job)`` after each poll.
        Raises ``TimeoutError`` after ``timeout`` seconds (None = no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(poll_s)

    def events(self, job_id: str, timeout: float = 60.0) -> Iterator[tuple[str, Any]]:
        """Follow ``GET /v1/jobs/{id}/events``: ``(event, data)`` pairs (``progress`` dicts, then the final
        ``state``: the job) until the server ends the stream (comments are skipped). ``timeout``: the
        longest wait for one line (keep-alives arrive every 15 s)."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(timeout, connect=10.0),
                              headers={"Accept": "text/event-stream"}) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            name, data = "message", []
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield name, json.loads("\n".join(data))
                    name, data = "message", []

    def cancel(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("POST", f"/v1/jobs/{job_id}/cancel").json()
        return out

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def rethreshold(self, job_id: str, threshold: float) -> dict[str, Any]:
        """New mask, lesions and metrics from the stored residual (no model run)."""
        out: dict[str, Any] = self._request("POST", f"/v1/jobs/{job_id}/threshold",
                                            json={"threshold": threshold}).json()
        return out

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """Result files: ``[{name, bytes, sha256, content_type, url}]``."""
        arts: list[dict[str, Any]] = self._request("GET", f"/v1/jobs/{job_id}/results").json()["artifacts"]
        return arts

    def download(self, job_id: str, out_dir: PathLike, names: list[str] | None = None) -> list[Path]:
        """Stream result files into ``out_dir`` (sha256-checked, atomic); returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for art in self.results(job_id):
            if names is not None and art["name"] not in names:
                continue
            paths.append(self._download_one(job_id, art, out))
        return paths

    def _download_one(self, job_id: str, art: dict[str, Any], out: Path) -> Path:
        name = Path(art["name"]).name  # server names are plain; never let one escape out_dir
        dest = out / name

        def checked(chunks: Iterator[bytes]) -> Iterator[bytes]:
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
                yield chunk
            if art.get("sha256") and digest.hexdigest() != art["sha256"]:
                raise ApiError(200, "checksum_mismatch", f"{name}: sha256 differs from the server's")

        with self.http.stream("GET", f"/v1/jobs/{job_id}/results/{name}") as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            atomic_write_chunks(dest, checked(resp.iter_bytes(1 << 20)))
        return dest

    # --- cohorts, models, health ----------------------------------------------------------

    def create_cohort(self, name: str, callback_url: str | None = None,
                      expected_jobs: int | None = None) -> dict[str, Any]:
        """A new cohort; ``callback_url`` gets one ``cohort.completed`` POST once its jobs have all finished
        (and it holds ``expected_jobs``, when given, or was closed: :meth:`close_cohort`)."""
        body: dict[str, Any] = {"name": name}
        if callback_url:
            body["callback_url"] = callback_url
        if expected_jobs:
            body["expected_jobs"] = expected_jobs
        out: dict[str, Any] = self._request("POST", "/v1/cohorts", json=body).json()
        return out

    def close_cohort(self, cohort_id: str) -> dict[str, Any]:
        """No more jobs are coming: the cohort is complete once the jobs it holds now have finished."""
        out: dict[str, Any] = self._request("POST", f"/v1/cohorts/{cohort_id}/close").json()
        return out

    def callback_secret(self, rotate: bool = False) -> dict[str, Any]:
        """``{secret, rotated_at, previous_valid_until}``: the secret signing this key's callbacks
        (``rotate``: replace it first)."""
        if rotate:
            out: dict[str, Any] = self._request("POST", "/v1/callback-secret/rotate", retry=False).json()
        else:
            out = self._request("GET", "/v1/callback-secret").json()
        return out

    def cohort(self, cohort_id: str) -> dict[str, Any]:
        """Per-case states and progress: ``{id, name, counts, progress, cases: [...]}``."""
        out: dict[str, Any] = self._request("GET", f"/v1/cohorts/{cohort_id}").json()
        return out

    def cohort_csv(self, cohort_id: str, which: str, dest: PathLike) -> Path:
        """Download the cohort's aggregated ``lesions`` or ``metrics`` CSV to ``dest``."""
        resp = self._request("GET", f"/v1/cohorts/{cohort_id}/{which}.csv")
        path = Path(dest)
        path.write_bytes(resp.content)
        return path

    def models(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._request("GET", "/v1/models").json()
        return out

    def ready(self) -> bool:
        """``/readyz`` answers 200 (database and broker reachable)."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.http.base_url} not ready after {timeout} s")
            time.sleep(0.2)


def read_lesions(result_dir: PathLike) -> list[dict[str, Any]]:
    """The downloaded ``lesions.json`` (empty list when absent)."""
    path = Path(result_dir) / "lesions.json"
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = json.loads(path.read_text())
    return rows


def lesion_lines(result_dir: PathLike, limit: int = 10) -> Iterator[str]:
    """Human-readable lines for the lesions of a downloaded result folder (largest first)."""
    rows = sorted(read_lesions(result_dir), key=lambda r: -float(r.get("volume_ml") or 0.0))
    yield f"{len(rows)} lesion(s)" + (f", the {limit} largest:" if len(rows) > limit else ":")
    if rows:
        yield f"{'id':>4} {'ml':>8} {'SUVmax':>7} {'SUVmean':>7} {'SUVpeak':>7} {'TLG':>8}  centroid RAS mm"

    def num(row: dict[str, Any], key: str) -> float:
        value = row.get(key)
        return float(value) if value not in (None, "") else float("nan")

    for r in rows[:limit]:
        yield (f"{r.get('id', '?'):>4} {num(r, 'volume_ml'):8.2f} {num(r, 'suv_max'):7.2f} "
               f"{num(r, 'suv_mean'):7.2f} {num(r, 'suv_peak'):7.2f} {num(r, 'tlg'):8.2f}  "
               f"({num(r, 'centroid_x_mm'):.0f}, {num(r, 'centroid_y_mm'):.0f}, {num(r, 'centroid_z_mm'):.0f})")
