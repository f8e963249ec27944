"""``POST /v1/jobs/{id}/threshold``: re-binarise the stored residual on the CPU (no model, no GPU).

Uses ``autopaint.segment.outputs.rethreshold`` — numpy/cc3d/SimpleITK only, torch-free (a test
checks ``torch`` stays out of ``sys.modules``); the import-linter contract allows this one edge.
The job's ``mask.nii.gz``, ``lesions.csv`` and ``lesions.json`` are replaced (new sha256 recorded)
and the manifest's ``threshold`` records the new value and the previous one.
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

from autopaint.contracts import JobState
from autopaint.db import Artifact, Job
from autopaint.storage import Storage, result_key
from services.api.deps import Ctx, DbSession, Owner
from services.api.errors import ApiError, not_found
from services.api.schemas import ArtifactOut, ErrorOut, ThresholdIn, ThresholdOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
REPLACED = {"mask.nii.gz": "application/gzip", "lesions.csv": "text/csv", "lesions.json": "application/json"}


def _local(storage: Storage, key: str, tmp: Path, name: str) -> Path:
    """A local path for a stored object (copied into ``tmp`` when the backend has none)."""
    path = storage.path(key)
    if path is not None and path.is_file():
        return path
    dest = tmp / name
    with open(dest, "wb") as fh:
        for chunk in storage.iter_chunks(key):
            fh.write(chunk)
    return dest


def previous_threshold(manifest: dict[str, Any] | None) -> float | None:
    value = (manifest or {}).get("threshold")
    if isinstance(value, dict):
        value = value.get("value")
    return float(value) if isinstance(value, int | float) else None


def _compute(storage: Storage, job: Job, residual_key: str, threshold: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from autopaint.imaging.io import read_volume
    from autopaint.imaging.suv import pet_to_suv
    from autopaint.segment.outputs import rethreshold

    tmp = Path(tempfile.mkdtemp(prefix="autopaint-thr-"))
    try:
        residual = _local(storage, residual_key, tmp, "residual.nii.gz")
        params, inputs = job.params or {}, job.inputs or {}
        pet = None
        if "pet" in inputs:
            raw = read_volume(_local(storage, inputs["pet"]["key"], tmp, "pet.nii.gz"))
            tags = {k: params.get(k) for k in ("weight_kg", "injected_dose_bq", "delay_s", "half_life_s")
                    if params.get(k) is not None}
            pet = pet_to_suv(raw, tags=tags, already_suv=bool(params.get("suv_already", True)))
        label = _local(storage, inputs["label"]["key"], tmp, "label.nii.gz") if "label" in inputs else None
        out = rethreshold(residual, threshold, pet=pet, label=label, out_dir=tmp / "out")
        arts = []
        for name, ctype in REPLACED.items():
            key = result_key(job.id, name)
            sha, n = storage.put_file(key, tmp / "out" / name)
            arts.append({"name": name, "storage_key": key, "sha256": sha, "bytes": n, "content_type": ctype})
        return out, arts
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
    if job.state != JobState.SUCCEEDED.value:
        raise ApiError(409, "job_not_succeeded", f"the job is {job.state}; only finished jobs can be re-thresholded")
    residual = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "residual.nii.gz")).first()
    if residual is None:
        raise ApiError(409, "no_residual", "the job has no stored residual")
    out, arts = await run_in_threadpool(_compute, ctx.storage, job, residual.storage_key, body.threshold)
    previous = previous_threshold(job.manifest)
    rows = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
    for a in arts:
        row = rows.get(a["name"])
        if row is None:
            row = Artifact(job_id=job_id, name=a["name"])
            session.add(row)
        row.storage_key, row.sha256, row.bytes, row.content_type = a["storage_key"], a["sha256"], a["bytes"], a["content_type"]
    manifest = dict(job.manifest or {})
    manifest["threshold"] = {"value": body.threshold, "source": "rethreshold", "previous": previous}
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
