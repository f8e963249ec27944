"""The only coupling between the API and the worker: task names, queues, job states, payloads.

Messages carry ids only (``args=[job_id]``); everything else lives in the database row.
This module imports pydantic and the standard library only (no torch, no web or queue code).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TASK_RUN_JOB = "autopaint.run_job"
"""Celery task name of the job runner; its single argument is the job id (str)."""

QUEUE_GPU = "gpu"
QUEUE_CPU = "cpu"

INPUT_ROLES: tuple[str, ...] = ("ct", "pet", "organ_mask", "label")
"""Multipart field names of the inputs (storage keys are ``jobs/<id>/inputs/<role>.nii.gz``)."""

RESULT_NAMES: tuple[str, ...] = (
    "mask.nii.gz",
    "residual.nii.gz",
    "inpainted_ct.nii.gz",
    "inpainted_pet.nii.gz",
    "lesions.csv",
    "lesions.json",
    "report.json",
    "preview.png",
)
"""Files a finished job may expose under ``/v1/jobs/{id}/results/{name}``."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


class Stage(StrEnum):
    queued = "queued"
    loading = "loading"
    preprocessing = "preprocessing"
    searching = "searching"
    refining = "refining"
    thresholding = "thresholding"
    writing = "writing"
    done = "done"


class JobParams(BaseModel):
    """User-facing parameters of one segmentation job (the ``params`` JSON form field).

    SUV fields are used only when ``suv_already`` is False (PET given in Bq/mL): body weight in kg,
    injected dose in Bq, delay between injection and scan start in s, tracer half-life in s.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["thorax", "headneck", "custom"] | None = Field(
        default=None, description="Organ-of-interest preset (thorax: lungs, headneck, custom: body); "
        "None = the model's own preset"
    )
    modality: Literal["ct", "pet", "petct"] | None = Field(
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
    suv_already: bool = True
    weight_kg: float | None = Field(default=None, gt=0)
    injected_dose_bq: float | None = Field(default=None, gt=0)
    delay_s: float | None = Field(default=None, ge=0)
    half_life_s: float | None = Field(default=None, gt=0)
