"""A job's files under ``/v1/jobs/{job_id}``: the result list, one result's download (streamed; its
HEAD) and the viewable NIfTI of its CT or PET."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select

from autopaint.db import Artifact
from services.api.deps import AppContext, Ctx, DbSession, Owner
from services.api.errors import ApiError
from services.api.routes_jobs import ERRORS, owned_job
from services.api.schemas import ArtifactOut, ResultsOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _artifact_out(job_id: str, a: Artifact) -> ArtifactOut:
    return ArtifactOut(name=a.name, bytes=a.bytes, sha256=a.sha256, content_type=a.content_type,
                       url=f"/v1/jobs/{job_id}/results/{a.name}")


@router.get("/{job_id}/results", response_model=ResultsOut, summary="List result files", responses=ERRORS)
def list_results(job_id: str, session: DbSession, owner: Owner) -> ResultsOut:
    job = owned_job(session, owner, job_id)
    arts = session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).all()
    return ResultsOut(job_id=job_id, state=job.state, artifacts=[_artifact_out(job_id, a) for a in arts])


RESULT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"}
"""On every result download (and its HEAD): never sniffed into another type, never cached by a
shared or the browser's cache (patient data)."""


def _result_artifact(job_id: str, name: str, session: DbSession, owner: str, ctx: AppContext) -> tuple[Artifact, dict[str, str]]:
    owned_job(session, owner, job_id)
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
    job = owned_job(session, owner, job_id)
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
