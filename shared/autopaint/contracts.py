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
"""Multipart field names of the inputs (storage keys are ``jobs/<id>/inputs/<role>.nii.gz``)."""

RESULTS: dict[str, str] = {
    "mask.nii.gz": "application/gzip",
    "residual.nii.gz": "application/gzip",
    "inpainted_ct.nii.gz": "application/gzip",
    "inpainted_pet.nii.gz": "application/gzip",
    "lesions.csv": "text/csv",
    "lesions.json": "application/json",
    "report.json": "application/json",
    "preview.png": "image/png",
}
"""Files a finished job may expose under ``/v1/jobs/{id}/results/{name}``, with their content types."""
RESULT_NAMES: tuple[str, ...] = tuple(RESULTS)
RETHRESHOLD_RESULTS: tuple[str, ...] = ("mask.nii.gz", "lesions.csv", "lesions.json")
"""The results a re-threshold replaces."""


class StoredInput(TypedDict):
    """One uploaded input as the job row keeps it (``Job.inputs[role]``)."""

    key: str
    sha256: str
    bytes: int


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
    half-life in s). The one home of the SUV tags built from them (CLI, API, worker, re-threshold)."""

    model_config = ConfigDict(extra="forbid")

    suv_already: bool = True
    weight_kg: float | None = Field(default=None, gt=0)
    injected_dose_bq: float | None = Field(default=None, gt=0)
    delay_s: float | None = Field(default=None, ge=0)
    half_life_s: float | None = Field(default=None, gt=0)

    def require_complete(self) -> SuvInputs:
        """Raise ``InvalidInput(code="missing_suv_info")`` when the PET is not SUV and the Bq/mL
        conversion inputs are incomplete (``missing_suv_info``, the same code everywhere)."""
        missing = [k for k in ("weight_kg", "injected_dose_bq", "delay_s") if getattr(self, k) is None]
        if not self.suv_already and missing:
            raise InvalidInput("the PET is not SUV (suv_already false) and the Bq/mL -> SUV conversion "
                               f"lacks {', '.join(missing)}", code="missing_suv_info")
        return self

    def suv_tags(self) -> dict[str, Any] | None:
        """The Bq/mL -> SUV tags of :func:`autopaint.imaging.suv.pet_to_suv` (None when the PET is
        SUV already)."""
        if self.suv_already:
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
