"""The only coupling between the API and the worker: task names, queues, job states, payloads.

Messages carry ids only (``args=[job_id]``); everything else lives in the database row.
This module imports pydantic and the standard library only (no torch, no web or queue code).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from autopaint.errors import InvalidInput
from autopaint.imaging.modality import Modality

TASK_RUN_JOB = "autopaint.run_job"
"""Celery task name of the job runner; its single argument is the job id (str)."""

QUEUE_GPU = "gpu"
QUEUE_CPU = "cpu"

INPUT_ROLES: tuple[str, ...] = ("ct", "pet", "organ_mask", "label")
"""Multipart field names of the inputs (storage keys ``jobs/<id>/inputs/<role>.nii.gz``, or
``<role>.dicom.zip`` for a DICOM CT/PET: see :class:`StoredInput`)."""

RESULTS: dict[str, str] = {
    "mask.nii.gz": "application/gzip",
    "residual.nii.gz": "application/gzip",
    "inpainted_ct.nii.gz": "application/gzip",
    "inpainted_pet.nii.gz": "application/gzip",
    "lesions.csv": "text/csv",
    "lesions.json": "application/json",
    "report.json": "application/json",
    "preview.png": "image/png",
    "mask.seg.dcm": "application/dicom",
    "mask.rtstruct.dcm": "application/dicom",
}
"""Files a finished job may expose under ``/v1/jobs/{id}/results/{name}``, with their content types
(the DICOM SEG and RTSTRUCT when the CT was a DICOM series)."""
RESULT_NAMES: tuple[str, ...] = tuple(RESULTS)
RETHRESHOLD_RESULTS: tuple[str, ...] = ("mask.nii.gz", "lesions.csv", "lesions.json")
"""The results a re-threshold replaces."""


class StoredInput(TypedDict):
    """One uploaded input as the job row keeps it (``Job.inputs[role]``): its storage key, the sha256
    and size of the stored object and its ``format`` — ``nifti`` (a re-written ``<role>.nii.gz``;
    rows written before DICOM input have no ``format``: read them as nifti) or ``dicom`` (CT/PET: a
    fresh zip ``<role>.dicom.zip`` of exactly the validated series' files, named ``00001.dcm``... in
    slice order; ``series_instance_uid`` and ``modality`` say which series)."""

    key: str
    sha256: str
    bytes: int
    format: NotRequired[Literal["nifti", "dicom"]]
    series_instance_uid: NotRequired[str]
    modality: NotRequired[str]
    view_key: NotRequired[str]
    """A viewable NIfTI of a CT/PET input when the stored object is not one (a DICOM zip) or not in
    SUV (a Bq/mL PET): CT in HU, PET in SUV, fresh header (``GET /v1/jobs/{id}/inputs/{role}``)."""
    view_sha256: NotRequired[str]
    view_bytes: NotRequired[int]


class ArtifactRecord(TypedDict):
    """One stored result file (``Artifact`` row, API ``ArtifactOut``)."""

    name: str
    storage_key: str
    sha256: str
    bytes: int
    content_type: str


class ThresholdRecord(TypedDict):
    """``manifest["threshold"]``: the residual threshold the job's mask uses, where it came from
    (the report's source after a run, ``rethreshold`` after ``POST .../threshold``) and the value
    it replaced."""

    value: float
    source: str
    previous: NotRequired[float | None]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class SuvInputs(BaseModel):
    """How the caller states the PET's units: SUV already, or Bq/mL with the conversion inputs
    (body weight in kg, injected dose in Bq, delay between injection and scan start in s, tracer
    half-life in s). The one home of the SUV tags built from them (CLI, API, worker, re-threshold).
    A DICOM PET needs none of this (its headers say); a NIfTI PET must state one or the other."""

    # allow_inf_nan=False: 1e400 (inf), NaN, Infinity are refused (invalid_params at submit), never
    # accepted and stored as null
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    suv_already: bool | None = Field(
        default=None, description="true: the PET voxels are SUV (body weight); false: Bq/mL, converted "
        "with weight_kg, injected_dose_bq, delay_s (half_life_s default F-18); null: not stated — "
        "accepted only for a DICOM PET, whose headers give the units")
    check_units: bool = Field(
        default=True, description="refuse a PET whose values cannot be SUV (pet_units_implausible); "
        "false only when you know the values are right")
    weight_kg: float | None = Field(default=None, gt=0)
    injected_dose_bq: float | None = Field(default=None, gt=0)
    delay_s: float | None = Field(default=None, ge=0)
    half_life_s: float | None = Field(default=None, gt=0)

    def require_complete(self, pet_is_dicom: bool = False) -> SuvInputs:
        """Raise ``InvalidInput(code="missing_suv_info")`` (the same code on every path) when a NIfTI
        PET's units are not stated, or stated as Bq/mL without the conversion inputs."""
        missing = [k for k in ("weight_kg", "injected_dose_bq", "delay_s") if getattr(self, k) is None]
        if self.suv_already is None and not pet_is_dicom:
            raise InvalidInput("the PET NIfTI does not say its units: state suv_already true (SUV), or false "
                               "with weight_kg, injected_dose_bq and delay_s (Bq/mL)", code="missing_suv_info")
        if self.suv_already is False and missing:
            raise InvalidInput("the PET is in Bq/mL (suv_already false) and the SUV conversion "
                               f"lacks {', '.join(missing)}", code="missing_suv_info")
        return self

    def suv_tags(self) -> dict[str, Any] | None:
        """The Bq/mL -> SUV tags of :func:`autopaint.imaging.suv.pet_to_suv` (None unless the caller
        stated Bq/mL)."""
        if self.suv_already is not False:
            return None
        tags: dict[str, Any] = {"weight_kg": self.weight_kg, "injected_dose_bq": self.injected_dose_bq,
                                "delay_s": self.delay_s, "units": "BQML"}
        if self.half_life_s is not None:
            tags["half_life_s"] = self.half_life_s
        return tags


class JobParams(SuvInputs):
    """User-facing parameters of one segmentation job (the ``params`` JSON form field)."""

    preset: Literal["thorax", "headneck", "custom"] | None = Field(
        default=None, description="Organ-of-interest preset (thorax: lungs, headneck, custom: body); "
        "None = the model's own preset"
    )
    modality: Modality | None = Field(
        default=None, description="Input channels; None = the model's modality"
    )
    model: str | None = Field(default=None, description="Model name; None = the server default")
    mode: Literal["fast", "exact"] = "fast"
    profile: Literal["default", "paper"] = Field(
        default="default", description="default: the model card's measured accuracy configuration "
        "(hot-spot candidates, gating, delineation); paper: the paper's organ-wide search"
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Residual threshold; None = the model's default"
    )
    ct_series_uid: str | None = Field(
        default=None, pattern=r"^[0-9][0-9.]{0,63}$", description="SeriesInstanceUID of the CT series "
        "when the CT zip holds several (multiple_series lists them); only for a DICOM CT")
    pet_series_uid: str | None = Field(
        default=None, pattern=r"^[0-9][0-9.]{0,63}$", description="SeriesInstanceUID of the PET series "
        "when the PET zip holds several; only for a DICOM PET")
    callback_url: str | None = Field(
        default=None, max_length=2048, description="POSTed (signed JSON: job.succeeded, job.failed or "
        "job.cancelled) when the job ends; http(s), no credentials, its host resolving to public addresses "
        "only unless the server allows more. Kept on the job (JobOut.callback_url), not in its params")

    def series_uids(self) -> dict[str, str]:
        """``{role: SeriesInstanceUID}`` of the series the caller picked (``load_inputs(series_uids=)``)."""
        return {r: u for r, u in (("ct", self.ct_series_uid), ("pet", self.pet_series_uid)) if u}
