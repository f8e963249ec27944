"""``POST /v1/jobs/{id}/threshold``: re-binarise the stored residual on the CPU (no model, no GPU).

Uses ``autopaint.segment.outputs.rethreshold`` — numpy/cc3d/SimpleITK only, torch-free (a test
checks ``torch`` stays out of ``sys.modules``); the import-linter contract allows this one edge.
The job's ``RETHRESHOLD_RESULTS`` (mask, lesion tables) are replaced (new sha256 recorded) and the
manifest's ``threshold`` (:class:`autopaint.contracts.ThresholdRecord`) records the new value and
the previous one. A job whose CT was a DICOM series also has its DICOM SEG and RTSTRUCT written again
on that series (``segment.outputs.write_dicom_results``); were that impossible, they are deleted
(rows and objects) rather than left describing the old mask. A DICOM PET is read from its stored
series and put in SUV with the run's own calibration (``manifest["pet_units"]``).
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
from autopaint.errors import InvalidInput
from autopaint.storage import Storage, fetch_local, store_results
from services.api.deps import Ctx, DbSession, Owner
from services.api.errors import ApiError, not_found
from services.api.schemas import ArtifactOut, ErrorOut, ThresholdIn, ThresholdOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def previous_threshold(manifest: dict[str, Any] | None) -> float | None:
    value = ((manifest or {}).get("threshold") or {}).get("value")
    return float(value) if isinstance(value, int | float) else None


DICOM_RESULTS = ("mask.seg.dcm", "mask.rtstruct.dcm")
"""The results written on the CT's DICOM series (when the CT was one)."""


def _dicom_folder(storage: Storage, stored: dict[str, Any], role: str, tmp: Path) -> Path:
    """The folder a stored DICOM input (a zip of our own making: ``00001.dcm``... in slice order)
    unpacks to under ``tmp``."""
    from autopaint.imaging.dicom_zip import extract_series_zip

    archive = fetch_local(storage, stored["key"], tmp / f"{role}.dicom.zip")
    return extract_series_zip(archive, tmp, max(4 * int(stored.get("bytes") or 0), 1 << 30), 100_000,
                              name=f"{role}-dicom")


def _pet_suv(storage: Storage, job: Job, tmp: Path) -> Any:
    """The job's PET in SUV: the stored NIfTI or DICOM series with the run's own calibration
    (``manifest["pet_units"]``: DICOM headers or the caller's statement), else the params' statement."""
    from autopaint.imaging.io import read_dicom_series, read_volume
    from autopaint.imaging.suv import SuvCalibration, apply_calibration, pet_to_suv

    stored = (job.inputs or {})["pet"]
    tags = None
    if stored.get("format") == "dicom":
        raw, tags = read_dicom_series(_dicom_folder(storage, stored, "pet", tmp))
    else:
        raw = read_volume(fetch_local(storage, stored["key"], tmp / "pet.nii.gz"))
    units = (job.manifest or {}).get("pet_units")
    if units:
        return apply_calibration(raw, SuvCalibration(**{**units, "notes": tuple(units.get("notes") or ())}))
    params = JobParams.model_validate(job.params or {})
    return pet_to_suv(raw, tags=tags or params.suv_tags(), already_suv=bool(params.suv_already))


def _dicom_results(storage: Storage, job: Job, mask_path: Path, tmp: Path) -> bool:
    """Write the SEG and RTSTRUCT of the new mask on the job's CT series into ``mask_path``'s folder;
    False when that is impossible (then the old ones must go)."""
    from autopaint.imaging.io import read_volume
    from autopaint.segment.outputs import write_dicom_results

    stored = (job.inputs or {}).get("ct") or {}
    if stored.get("format") != "dicom":
        return False
    try:
        ct_files = sorted(str(p) for p in _dicom_folder(storage, stored, "ct", tmp).glob("*.dcm"))
        write_dicom_results(read_volume(mask_path), ct_files, mask_path.parent)
    except InvalidInput as exc:
        log.warning("job %s: DICOM results not rewritten after the re-threshold (%s): %s", job.id, exc.code, exc)
        return False
    return True


def _compute(storage: Storage, job: Job, residual_key: str, threshold: float, dicom: bool
             ) -> tuple[dict[str, Any], list[ArtifactRecord], bool]:
    """Re-binarise the stored residual (the library's ``rethreshold``: lesion SUV statistics from
    the job's PET in SUV, metrics with its label) and store the replaced results; with ``dicom``
    (the job has DICOM results) the SEG and RTSTRUCT too. The flag returned: those were replaced."""
    from autopaint.segment.outputs import rethreshold

    tmp = Path(tempfile.mkdtemp(prefix="autopaint-thr-"))
    try:
        inputs = job.inputs or {}
        residual = fetch_local(storage, residual_key, tmp / "residual.nii.gz")
        pet = _pet_suv(storage, job, tmp) if "pet" in inputs else None
        label = fetch_local(storage, inputs["label"]["key"], tmp / "label.nii.gz") if "label" in inputs else None
        out = rethreshold(residual, threshold, pet=pet, label=label, out_dir=tmp / "out")
        rewritten = dicom and _dicom_results(storage, job, tmp / "out" / "mask.nii.gz", tmp)
        names = RETHRESHOLD_RESULTS + (DICOM_RESULTS if rewritten else ())
        return out, store_results(storage, job.id, tmp / "out", names), rewritten
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _drop_artifacts(session: DbSession, storage: Storage, job_id: str, names: tuple[str, ...]) -> None:
    """Delete result rows (not committed) and their objects: nothing stale stays downloadable."""
    for art in session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name.in_(names))).all():
        storage.delete_prefix(art.storage_key)
        session.delete(art)


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
    has_dicom = session.scalars(select(Artifact.name).where(Artifact.job_id == job_id,
                                                            Artifact.name.in_(DICOM_RESULTS))).first() is not None
    out, arts, rewritten = await run_in_threadpool(_compute, ctx.storage, job, residual.storage_key, body.threshold,
                                                   has_dicom)
    previous = previous_threshold(job.manifest)
    repo.replace_artifacts(session, job_id, arts)
    if has_dicom and not rewritten:
        _drop_artifacts(session, ctx.storage, job_id, DICOM_RESULTS)
    manifest = dict(job.manifest or {})
    manifest["threshold"] = ThresholdRecord(value=body.threshold, source="rethreshold", previous=previous)
    manifest["lesions"] = len(out["lesions"])
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
