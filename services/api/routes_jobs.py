"""``/v1/jobs``: submit (streamed multipart), list, status, results, cancel, delete."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from autopaint.contracts import JobParams, JobState
from autopaint.db import Artifact, Cohort, Job, new_id
from autopaint.db import callbacks as outbox
from autopaint.db import jobs as repo
from autopaint.errors import InvalidInput
from autopaint.imaging.modality import check_model_modality, check_roles
from autopaint.model_cards import list_cards
from autopaint.storage import StorageError, UploadTooLarge, job_prefix
from services.api.deps import AppContext, Ctx, DbSession, Owner
from services.api.errors import ApiError, not_found
from services.api.ingest import (
    DicomCaps,
    check_head,
    limits_for,
    read_dicom_inputs,
    sanitize_and_store,
    validate_files,
)
from services.api.queue import BrokerUnavailable
from services.api.routes_callbacks import vet_callback_url
from services.api.schemas import ArtifactOut, ErrorOut, JobOut, JobPage, ResultsOut
from services.api.uploads import ParsedUpload, parse_upload
from services.api.views import job_out

log = logging.getLogger(__name__)


def clean_uploads(uploads: Path, max_age_s: float, now: float | None = None) -> int:
    """Remove leftover upload temp folders (``state/uploads/*``) older than ``max_age_s`` (a crashed
    or killed API leaves them); returns how many were removed."""
    if not uploads.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for entry in uploads.iterdir():
        try:
            if now - entry.lstat().st_mtime < max_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    if removed:
        log.info("upload janitor: removed %d leftover upload folder(s) from %s", removed, uploads)
    return removed


def _sole_user(state_dir: Path) -> bool:
    """True when this process holds the state folder's serve lock (``autopaint serve``, embedded: the
    lock file holds its PID): no other API can have uploads in flight there."""
    try:
        return (state_dir / "serve.lock").read_text().strip() == str(os.getpid())
    except OSError:
        return False


@asynccontextmanager
async def _janitor_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At API start: the upload janitor — every leftover when this process is the state folder's
    only serve, else those older than ``upload_janitor_age_s`` (other API replicas may share it)."""
    ctx = getattr(app.state, "ctx", None)
    if ctx is not None:
        s = ctx.settings
        age = 0.0 if _sole_user(s.state_dir) else s.upload_janitor_age_s
        await asyncio.to_thread(clean_uploads, s.state_dir / "uploads", age)
    yield


router = APIRouter(prefix="/v1/jobs", tags=["jobs"], lifespan=_janitor_lifespan)


@dataclass
class UploadLimits:
    """Per-app upload counters, touched only on the event loop (no lock needed): uploads in flight
    per key, and a semaphore on the memory-heavy validate + re-write + store step."""

    ingests: asyncio.Semaphore
    per_key: Counter[str] = field(default_factory=Counter)


def _limits(request: Request, ctx: AppContext) -> UploadLimits:
    lim: UploadLimits | None = getattr(request.app.state, "upload_limits", None)
    if lim is None:
        lim = UploadLimits(asyncio.Semaphore(ctx.settings.max_concurrent_ingests))
        request.app.state.upload_limits = lim
    return lim


def _check_active_jobs(ctx: AppContext, owner: str) -> None:
    """429 ``too_many_jobs`` when the key already has ``max_active_jobs_per_key`` queued or running jobs."""
    cap = ctx.settings.max_active_jobs_per_key
    with ctx.sessions() as s:
        n = int(s.scalar(select(func.count()).select_from(Job).where(
            Job.owner_key_id == owner, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))) or 0)
    if n >= cap:
        ctx.metrics.rejections.labels("too_many_jobs").inc()
        raise ApiError(429, "too_many_jobs", f"this key has {n} queued or running jobs (limit {cap}); wait for "
                       "some to finish", headers={"Retry-After": "60"})


async def _idle_limited(stream: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """``stream`` with at most ``idle_s`` seconds between two chunks; else 408 ``upload_timeout``."""
    it = stream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, "upload_timeout", f"no upload bytes received for {idle_s:g} s",
                           headers={"Connection": "close"}) from None
        yield chunk


@asynccontextmanager
async def _ingest_slot(ctx: AppContext, lim: UploadLimits) -> AsyncIterator[None]:
    """One of ``max_concurrent_ingests`` slots, waiting at most ``ingest_wait_s``; else 503 ``busy``."""
    try:
        await asyncio.wait_for(lim.ingests.acquire(), timeout=max(ctx.settings.ingest_wait_s, 0.001))
    except TimeoutError:
        ctx.metrics.rejections.labels("busy").inc()
        raise ApiError(503, "busy", "the server is validating other uploads; try again shortly",
                       headers={"Retry-After": "10"}) from None
    try:
        yield
    finally:
        lim.ingests.release()

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid API key"},
    404: {"model": ErrorOut, "description": "no such job (or another key's job)"},
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "ct": {"type": "string", "format": "binary",
                               "description": "CT: a NIfTI (HU) or a zip of one DICOM series"},
                        "pet": {"type": "string", "format": "binary",
                                "description": "PET: a zip of one DICOM series (units from its headers) or a "
                                "NIfTI whose units the params state (suv_already, or the Bq/mL fields)"},
                        "organ_mask": {"type": "string", "format": "binary", "description": "organ-of-interest mask"},
                        "label": {"type": "string", "format": "binary", "description": "tumour label (metrics)"},
                        "params": {"type": "string", "description": "JSON of JobParams",
                                   "example": '{"preset": "thorax", "mode": "fast"}'},
                        "cohort_id": {"type": "string", "description": "add the job to this cohort"},
                        "case_name": {"type": "string", "description": "your label for the case"},
                    },
                },
                "encoding": {"params": {"contentType": "application/json"}},
            }
        },
    }
}


def _owned_job(session: DbSession, owner: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner_key_id != owner:
        raise not_found()
    return job


def _existing(ctx: AppContext, owner: str, key: str) -> Job | None:
    with ctx.sessions() as s:
        return s.scalars(select(Job).where(Job.owner_key_id == owner, Job.idempotency_key == key)).first()


def _replay(ctx: AppContext, job: Job) -> JSONResponse:
    with ctx.sessions() as s:
        body = job_out(s, s.merge(job)).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Idempotent-Replayed": "true", "Location": f"/v1/jobs/{job.id}"})


def _params(ctx: AppContext, fields: dict[str, str], roles: set[str], pet_is_dicom: bool = False) -> JobParams:
    """The job's parameters with the model resolved (the one place the default model is chosen),
    checked against that model's card: its modality's images present, the PET units stated (a
    DICOM PET's headers state them)."""
    try:
        params = JobParams.model_validate_json(fields.get("params") or "{}")
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid params: {msg}", code="invalid_params") from exc
    model = params.model or ctx.settings.default_model
    cards = {c["name"]: c for c in list_cards(ctx.settings.resolved_models_dir())}
    if model not in cards:
        raise InvalidInput(f"unknown model {model[:100]!r}; see GET /v1/models", code="unknown_model")
    if not cards[model]["has_weights"]:
        raise InvalidInput(f"model {model!r} has no weights on this server", code="model_unavailable")
    model_modality = cards[model].get("modality")
    check_model_modality(params.modality, model_modality, model)
    check_roles(params.modality or model_modality, roles)
    if "pet" in roles:
        params.require_complete(pet_is_dicom=pet_is_dicom)
    return params.model_copy(update={"model": model})


def _cohort(ctx: AppContext, owner: str, cohort_id: str | None) -> str | None:
    if not cohort_id:
        return None
    with ctx.sessions() as s:
        cohort = s.get(Cohort, cohort_id)
    if cohort is None or cohort.owner_key_id != owner:
        raise ApiError(404, "not_found", "no such cohort")
    return cohort.id


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a PET/CT case",
    description="Multipart upload (streamed, capped). CT and PET: a NIfTI or a zip of one DICOM series "
    "(told by content). 202 only once every file is validated (a DICOM series' geometry and modality, "
    "the CT/PET overlap, the PET's units: DICOM headers or the params' statement, then a plausibility "
    "check), stored with its sha256 and the job row committed; then the job is published to the queue. "
    "params.callback_url: a signed POST when the job ends (see GET /v1/callback-secret).",
    responses={**ERRORS, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
    openapi_extra=UPLOAD_BODY,
)
async def submit_job(
    request: Request,
    ctx: Ctx,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    s = ctx.settings
    if idempotency_key and (job := _existing(ctx, owner, idempotency_key)) is not None:
        return _replay(ctx, job)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > s.max_upload_bytes:
        ctx.metrics.rejections.labels("upload_too_large").inc()
        raise UploadTooLarge(f"the upload ({declared} bytes) exceeds {s.max_upload_bytes} bytes")
    lim = _limits(request, ctx)
    if lim.per_key[owner] >= s.max_uploads_per_key:
        ctx.metrics.rejections.labels("too_many_uploads").inc()
        raise ApiError(429, "too_many_uploads", f"this key already has {lim.per_key[owner]} uploads in progress "
                       f"(limit {s.max_uploads_per_key})", headers={"Retry-After": "10"})
    await run_in_threadpool(_check_active_jobs, ctx, owner)
    lim.per_key[owner] += 1
    try:
        return await _submit(request, ctx, owner, idempotency_key, lim)
    finally:
        lim.per_key[owner] -= 1
        if lim.per_key[owner] <= 0:
            del lim.per_key[owner]


async def _submit(request: Request, ctx: AppContext, owner: str, idempotency_key: str | None,
                  lim: UploadLimits) -> Response:
    s = ctx.settings
    job_id = new_id()
    tmp = s.state_dir / "uploads" / job_id
    tmp.mkdir(parents=True)
    limits = limits_for(s.max_voxels, s.max_upload_bytes)
    stored = False
    try:
        parsed: ParsedUpload = await parse_upload(
            request.headers.get("content-type", ""), _idle_limited(request.stream(), s.upload_idle_timeout_s),
            tmp, s.max_upload_bytes, lambda f: None if f.is_dicom_zip else check_head(f.head, limits))
        zips = {role: f.path for role, f in parsed.files.items() if f.is_dicom_zip}
        params = _params(ctx, parsed.fields, set(parsed.files), pet_is_dicom="pet" in zips)
        cohort_id = _cohort(ctx, owner, parsed.fields.get("cohort_id"))
        callback_url = await run_in_threadpool(vet_callback_url, ctx.settings, owner, params.callback_url)
        paths = {role: f.path for role, f in parsed.files.items() if role not in zips}
        async with _ingest_slot(ctx, lim):  # the memory-heavy part: bounded how many run at once
            dicom = await run_in_threadpool(read_dicom_inputs, zips, tmp, DicomCaps.from_settings(s),
                                            params.series_uids())
            await run_in_threadpool(validate_files, paths, limits, dicom)
            stored = True
            inputs = await run_in_threadpool(sanitize_and_store, ctx.storage, job_id, paths, tmp, dicom, params)
        job = Job(id=job_id, owner_key_id=owner, cohort_id=cohort_id,
                  case_name=(parsed.fields.get("case_name") or "").strip()[:200] or None, state=JobState.QUEUED,
                  params=params.model_dump(mode="json", exclude={"callback_url"}), inputs=inputs, model_name=params.model,
                  max_attempts=s.max_attempts, queue=s.queue, idempotency_key=idempotency_key,
                  callback_url=callback_url)
        body, other = _insert(ctx, job)
        if other is not None:
            ctx.storage.delete_prefix(job_prefix(job_id))
            return _replay(ctx, other)
        await _publish(ctx, job)
        ctx.metrics.bytes_uploaded.inc(parsed.received_bytes)
        ctx.metrics.jobs_submitted.inc()
        log.info("job %s accepted (%d bytes, roles %s)", job_id, parsed.received_bytes, sorted(inputs))
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})
    except (InvalidInput, UploadTooLarge, StorageError) as exc:
        ctx.metrics.rejections.labels(exc.code).inc()
        if stored:
            try:
                ctx.storage.delete_prefix(job_prefix(job_id))
            except OSError:  # a read-only storage: nothing was written there either
                log.warning("job %s: could not delete its partial inputs", job_id)
        raise
    except BaseException:
        if stored:
            with ctx.sessions() as session:
                if session.get(Job, job_id) is None:
                    ctx.storage.delete_prefix(job_prefix(job_id))
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _insert(ctx: AppContext, job: Job) -> tuple[dict[str, Any], Job | None]:
    """Commit the new row and render its 202 body in one session; ``(body, None)``, or ``({}, other)``
    when a concurrent request with the same idempotency key committed first."""
    with ctx.sessions() as session:
        session.add(job)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            other = _existing(ctx, job.owner_key_id, job.idempotency_key) if job.idempotency_key else None
            if other is None:
                raise
            return {}, other
        return job_out(session, job).model_dump(mode="json"), None


async def _publish(ctx: AppContext, job: Job) -> None:
    """Publish the committed job; a broker that does not answer fails the row (503, nothing queued)."""
    try:
        await run_in_threadpool(ctx.publisher.publish, job.id, job.queue)
    except BrokerUnavailable as exc:
        with ctx.sessions() as session:
            repo.fail_job(session, job.id, "broker_unavailable", "the job queue is unavailable; submit again")
        ctx.metrics.rejections.labels("broker_unavailable").inc()
        raise ApiError(503, "broker_unavailable", "the job queue is unavailable; try again later",
                       headers={"Retry-After": "30"}) from exc


@router.get("", response_model=JobPage, summary="List your jobs", responses=ERRORS)
def list_jobs(
    session: DbSession,
    owner: Owner,
    ctx: Ctx,
    state: Annotated[list[JobState] | None, Query(description="filter: one or more states")] = None,
    cohort_id: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobPage:
    limit = min(limit, ctx.settings.page_size_max)
    where = [Job.owner_key_id == owner]
    if state:
        where.append(Job.state.in_(state))
    if cohort_id:
        where.append(Job.cohort_id == cohort_id)
    total = int(session.scalar(select(func.count()).select_from(Job).where(*where)) or 0)
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
    ).all()
    nxt = offset + len(rows) if offset + len(rows) < total else None
    callbacks = outbox.deliveries(session, [j.id for j in rows if j.callback_url])
    return JobPage(items=[job_out(session, j, with_eta=False, callbacks=callbacks.get(j.id, [])) for j in rows],
                   total=total, offset=offset, limit=limit, next_offset=nxt)


@router.get("/{job_id}", response_model=JobOut, summary="Job status, progress, queue position and ETA",
            responses=ERRORS)
def get_job(job_id: str, session: DbSession, owner: Owner) -> JobOut:
    return job_out(session, _owned_job(session, owner, job_id))


def _artifact_out(job_id: str, a: Artifact) -> ArtifactOut:
    return ArtifactOut(name=a.name, bytes=a.bytes, sha256=a.sha256, content_type=a.content_type,
                       url=f"/v1/jobs/{job_id}/results/{a.name}")


@router.get("/{job_id}/results", response_model=ResultsOut, summary="List result files", responses=ERRORS)
def list_results(job_id: str, session: DbSession, owner: Owner) -> ResultsOut:
    job = _owned_job(session, owner, job_id)
    arts = session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).all()
    return ResultsOut(job_id=job_id, state=job.state, artifacts=[_artifact_out(job_id, a) for a in arts])


RESULT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"}
"""On every result download (and its HEAD): never sniffed into another type, never cached by a
shared or the browser's cache (patient data)."""


def _result_artifact(job_id: str, name: str, session: DbSession, owner: str, ctx: AppContext) -> tuple[Artifact, dict[str, str]]:
    _owned_job(session, owner, job_id)
    art = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).first()
    if art is None or not ctx.storage.exists(art.storage_key):
        raise ApiError(404, "not_found", "no such result")
    headers = {"Content-Length": str(art.bytes), "ETag": f'"{art.sha256}"', "X-Content-SHA256": art.sha256,
               "Content-Disposition": f'attachment; filename="{art.name}"', **RESULT_HEADERS}
    return art, headers


@router.get(
    "/{job_id}/results/{name}",
    summary="Download one result file (streamed)",
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}, "description": "the file"}},
)
def get_result(job_id: str, name: str, session: DbSession, owner: Owner, ctx: Ctx) -> StreamingResponse:
    art, headers = _result_artifact(job_id, name, session, owner, ctx)
    return StreamingResponse(ctx.storage.iter_chunks(art.storage_key), media_type=art.content_type,
                             headers=headers)


@router.head("/{job_id}/results/{name}", include_in_schema=False)
def head_result(job_id: str, name: str, session: DbSession, owner: Owner, ctx: Ctx) -> Response:
    """The GET's status and headers (size, sha256, ETag...), no body."""
    art, headers = _result_artifact(job_id, name, session, owner, ctx)
    return Response(status_code=200, media_type=art.content_type, headers=headers)


@router.get(
    "/{job_id}/inputs/{role}",
    summary="Download the job's CT or PET as a viewable NIfTI (CT in HU, PET in SUV; streamed)",
    description="The sanitized NIfTI the job stored (fresh header, no patient data); for a DICOM input or a "
    "Bq/mL PET, the NIfTI copy made at submit (the PET converted to SUV by the job's units rule).",
    responses={**ERRORS, 200: {"content": {"application/gzip": {}}, "description": "the file"}},
)
def get_input(job_id: str, role: str, session: DbSession, owner: Owner, ctx: Ctx) -> StreamingResponse:
    job = _owned_job(session, owner, job_id)
    stored = (job.inputs or {}).get(role) if role in ("ct", "pet") else None
    if stored and stored.get("view_key"):
        key, sha, size = stored["view_key"], stored["view_sha256"], stored["view_bytes"]
    elif stored and stored.get("format", "nifti") == "nifti":
        key, sha, size = stored["key"], stored["sha256"], stored["bytes"]
    else:
        raise ApiError(404, "not_found", "no such input")
    if not ctx.storage.exists(key):
        raise ApiError(404, "not_found", "no such input")
    headers = {"Content-Length": str(size), "ETag": f'"{sha}"', "X-Content-SHA256": sha,
               "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Disposition": f'attachment; filename="{role}.nii.gz"'}
    return StreamingResponse(ctx.storage.iter_chunks(key), media_type="application/gzip", headers=headers)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job",
             description="A queued job is cancelled at once; a running one stops at the next stage boundary.",
             responses=ERRORS)
def cancel_job(job_id: str, session: DbSession, owner: Owner) -> JobOut:
    _owned_job(session, owner, job_id)
    repo.request_cancel(session, job_id)
    return job_out(session, _owned_job(session, owner, job_id))


@router.delete("/{job_id}", status_code=204, summary="Delete a job, its inputs and results",
               responses={**ERRORS, 409: {"model": ErrorOut, "description": "still running; cancel requested"}})
def delete_job(job_id: str, session: DbSession, owner: Owner, ctx: Ctx) -> Response:
    _owned_job(session, owner, job_id)
    if repo.request_cancel(session, job_id) == JobState.RUNNING:
        raise ApiError(409, "job_running", "the job is running: cancel requested, delete it again once it stopped")
    session.delete(session.get(Job, job_id, populate_existing=True))
    session.commit()
    ctx.storage.delete_prefix(job_prefix(job_id))
    log.info("job %s deleted", job_id)
    return Response(status_code=204)

