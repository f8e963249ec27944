"""``/v1/jobs``: submit (streamed multipart), list, status, cancel, delete. A job's files (results,
viewable inputs) are ``services.api.routes_files``; what bounds uploads ``services.api.upload_limits``."""

from __future__ import annotations

import logging
import shutil
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from autopaint.contracts import JobParams, JobState
from autopaint.db import Cohort, Job, new_id
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
from services.api.schemas import ErrorOut, JobOut, JobPage
from services.api.upload_limits import (
    UploadLimits,
    check_active_jobs,
    idle_limited,
    ingest_slot,
    janitor_lifespan,
    upload_limits,
)
from services.api.uploads import ParsedUpload, parse_upload
from services.api.views import job_out

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], lifespan=janitor_lifespan)


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


def owned_job(session: DbSession, owner: str, job_id: str) -> Job:
    """The caller's job; 404 when it does not exist or is another key's."""
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
    lim = upload_limits(request, ctx)
    if lim.per_key[owner] >= s.max_uploads_per_key:
        ctx.metrics.rejections.labels("too_many_uploads").inc()
        raise ApiError(429, "too_many_uploads", f"this key already has {lim.per_key[owner]} uploads in progress "
                       f"(limit {s.max_uploads_per_key})", headers={"Retry-After": "10"})
    await run_in_threadpool(check_active_jobs, ctx, owner)
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
            request.headers.get("content-type", ""), idle_limited(request.stream(), s.upload_idle_timeout_s),
            tmp, s.max_upload_bytes, lambda f: None if f.is_dicom_zip else check_head(f.head, limits))
        zips = {role: f.path for role, f in parsed.files.items() if f.is_dicom_zip}
        params = _params(ctx, parsed.fields, set(parsed.files), pet_is_dicom="pet" in zips)
        cohort_id = _cohort(ctx, owner, parsed.fields.get("cohort_id"))
        callback_url = await run_in_threadpool(vet_callback_url, ctx.settings, owner, params.callback_url)
        paths = {role: f.path for role, f in parsed.files.items() if role not in zips}
        async with ingest_slot(ctx, lim):  # the memory-heavy part: bounded how many run at once
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
    return job_out(session, owned_job(session, owner, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job",
             description="A queued job is cancelled at once; a running one stops at the next stage boundary.",
             responses=ERRORS)
def cancel_job(job_id: str, session: DbSession, owner: Owner) -> JobOut:
    owned_job(session, owner, job_id)
    repo.request_cancel(session, job_id)
    return job_out(session, owned_job(session, owner, job_id))


@router.delete("/{job_id}", status_code=204, summary="Delete a job, its inputs and results",
               responses={**ERRORS, 409: {"model": ErrorOut, "description": "still running; cancel requested"}})
def delete_job(job_id: str, session: DbSession, owner: Owner, ctx: Ctx) -> Response:
    owned_job(session, owner, job_id)
    if repo.request_cancel(session, job_id) == JobState.RUNNING:
        raise ApiError(409, "job_running", "the job is running: cancel requested, delete it again once it stopped")
    session.delete(session.get(Job, job_id, populate_existing=True))
    session.commit()
    ctx.storage.delete_prefix(job_prefix(job_id))
    log.info("job %s deleted", job_id)
    return Response(status_code=204)
