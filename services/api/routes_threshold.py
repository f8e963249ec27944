"""``POST /v1/jobs/{id}/threshold``: re-binarise the stored residual on the CPU (no model, no GPU).

Uses ``autopaint.segment.outputs.rethreshold`` — numpy/cc3d/SimpleITK only, torch-free (a test
checks ``torch`` stays out of ``sys.modules``); the import-linter contract allows this one edge.
The job's ``RETHRESHOLD_RESULTS`` (mask, lesion tables) are replaced (new sha256 recorded) and the
manifest's ``threshold`` (:class:`autopaint.contracts.ThresholdRecord`) records the new value and
the previous one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from autopaint.contracts import RETHRESHOLD_RESULTS, ArtifactRecord, JobParams, JobState, ThresholdRecord
from autopaint.db import Artifact, Job
from autopaint.db import jobs as repo
from autopaint.storage import Storage, fetch_local, store_results
from services.api.deps import Ctx, DbSession, Owner
from services.api.errors import ApiError, not_found
from services.api.schemas import ArtifactOut, ErrorOut, ThresholdIn, ThresholdOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def previous_threshold(manifest: dict[str, Any] | None) -> float | None:
    value = ((manifest or {}).get("threshold") or {}).get("value")
    return float(value) if isinstance(value, int | float) else None


def _compute(storage: Storage, job: Job, residual_key: str, threshold: float
             ) -> tuple[dict[str, Any], list[ArtifactRecord]]:
    """Re-binarise the stored residual (the library's ``rethreshold``: lesion SUV statistics from
    the job's PET in SUV, metrics with its label) and store the replaced results."""
    from autopaint.imaging.io import read_volume
    from autopaint.imaging.suv import pet_to_suv
    from autopaint.segment.outputs import rethreshold

    tmp = Path(tempfile.mkdtemp(prefix="autopaint-thr-"))
    try:
        params, inputs = JobParams.model_validate(job.params or {}), job.inputs or {}
        residual = fetch_local(storage, residual_key, tmp / "residual.nii.gz")
        pet = None
        if "pet" in inputs:
            raw = read_volume(fetch_local(storage, inputs["pet"]["key"], tmp / "pet.nii.gz"))
            pet = pet_to_suv(raw, tags=params.suv_tags(), already_suv=params.suv_already)
        label = fetch_local(storage, inputs["label"]["key"], tmp / "label.nii.gz") if "label" in inputs else None
        out = rethreshold(residual, threshold, pet=pet, label=label, out_dir=tmp / "out")
        return out, store_results(storage, job.id, tmp / "out", RETHRESHOLD_RESULTS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@router.post(
    "/{job_id}/threshold",
    response_model=ThresholdOut,
    summary="Re-threshold a finished job from its stored residual (CPU, no model rerun)",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut, "description": "job not succeeded"}},
)
async def rethreshold_job(job_id: str, body: ThresholdIn, session: DbSession, owner: Owner, ctx: Ctx) -> ThresholdOut:
    job = session.get(Job, job_id)
    if job is None or job.owner_key_id != owner:
        raise not_found()
    if job.state != JobState.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", f"the job is {job.state}; only finished jobs can be re-thresholded")
    residual = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "residual.nii.gz")).first()
    if residual is None:
        raise ApiError(409, "no_residual", "the job has no stored residual")
    out, arts = await run_in_threadpool(_compute, ctx.storage, job, residual.storage_key, body.threshold)
    previous = previous_threshold(job.manifest)
    repo.replace_artifacts(session, job_id, arts)
    manifest = dict(job.manifest or {})
    manifest["threshold"] = ThresholdRecord(value=body.threshold, source="rethreshold", previous=previous)
    if out.get("metrics") is not None:
        manifest["rethreshold_metrics"] = out["metrics"]
    job.manifest = manifest
    session.commit()
    log.info("job %s re-thresholded at %.3f: %d lesions", job_id, body.threshold, len(out["lesions"]))
    return ThresholdOut(
        job_id=job_id, threshold=body.threshold, previous_threshold=previous, lesions=out["lesions"],
        metrics=out.get("metrics"),
        artifacts=[ArtifactOut(name=a["name"], bytes=a["bytes"], sha256=a["sha256"], content_type=a["content_type"],
                               url=f"/v1/jobs/{job_id}/results/{a['name']}") for a in arts],
    )
