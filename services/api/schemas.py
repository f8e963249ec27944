"""Response and request bodies of the API (pydantic), with OpenAPI examples."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from autopaint.contracts import JobState
from autopaint.progress import Stage

JOB_ID_EXAMPLE = "3f2a9c1e5b7d4e8f9a0b1c2d3e4f5a6b"


def _utc(value: datetime) -> datetime:
    """The database keeps naive UTC; the API says so (ISO 8601 with its zone, RFC 3339 date-time)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: RFC 9457 (was 7807) problem details plus our stable ``code``.

    ``code`` and ``detail`` are always there; ``type``, ``title`` and ``status`` are the RFC's
    optional members (``type`` defaults to ``about:blank``: the HTTP status says it all)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"type": "about:blank", "title": "Unprocessable Content", "status": 422,
                                         "code": "too_many_voxels",
                                         "detail": "declared 900000000 voxels, limit 314572800"}]}
    )

    type: str = Field("about:blank", description="URI of the problem type (RFC 9457)")
    title: str | None = Field(None, description="short summary of the HTTP status", examples=["Unauthorized"])
    status: int | None = Field(None, ge=100, le=599, description="the HTTP status code", examples=[422])
    code: str = Field(description="stable machine-readable error code", examples=["too_many_voxels"])
    detail: str = Field(description="what went wrong, for a person",
                        examples=["declared 900000000 voxels, limit 314572800"])


class InputOut(BaseModel):
    sha256: str
    bytes: int = Field(ge=0)


class ProgressOut(BaseModel):
    stage: Stage = Field(examples=["searching"])
    done: int = Field(ge=0, description="units done in this stage", examples=[37])
    total: int = Field(ge=0, description="units in this stage (0 = unknown)", examples=[120])
    unit: str = Field(examples=["slices"])
    circles_done: int = Field(ge=0, examples=[5400])
    circles_total: int = Field(ge=0, examples=[17000])
    fraction: float | None = Field(ge=0.0, description="done / total of the current stage", examples=[0.31])


CALLBACK_URL_DESCRIPTION = (
    "POSTed (signed JSON, see README \"Callbacks\") when it finishes; http(s), no credentials, at most 2048 "
    "characters, its host resolving to public addresses only (unless the operator allows more)")


class CallbackOut(BaseModel):
    """One callback of a job or cohort and how its delivery went (the outbox row)."""

    id: str = Field(description="the delivery id (X-Autopaint-Delivery; the same on every retry)")
    event: str = Field(examples=["job.succeeded"])
    url: str
    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending: an attempt is due or running; delivered: a 2xx was received; failed: gave up")
    attempts: int = Field(ge=0)
    last_status_code: int | None = Field(None, description="HTTP status of the last attempt (none: no answer)")
    last_error: str | None = None
    last_attempt_at: UtcDatetime | None = None
    next_attempt_at: UtcDatetime | None = None
    delivered_at: UtcDatetime | None = None
    created_at: UtcDatetime


class CallbackSecretOut(BaseModel):
    """The secret that signs your key's callbacks (HMAC-SHA256; ``autopaint.webhooks.verify``)."""

    secret: str = Field(description="64 hex characters; the HMAC key is this string as UTF-8")
    rotated_at: UtcDatetime | None = None
    previous_valid_until: UtcDatetime | None = Field(
        None, description="until then callbacks also carry a signature made with the previous secret")


class ProgressEventOut(BaseModel):
    """The data of a ``progress`` server-sent event (``GET /v1/jobs/{id}/events``)."""

    state: JobState
    stage: Stage
    done: int = Field(ge=0)
    total: int = Field(ge=0)
    unit: str
    fraction: float | None = Field(None, ge=0.0)
    circles_done: int = Field(ge=0)
    circles_total: int = Field(ge=0)
    queue_position: int | None = Field(None, ge=1)
    eta_s: float | None = Field(None, ge=0.0)


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": JOB_ID_EXAMPLE,
                    "state": "running",
                    "progress": {"stage": "searching", "done": 37, "total": 120, "unit": "slices",
                                 "circles_done": 5400, "circles_total": 17000, "fraction": 0.31},
                    "queue_position": None,
                    "eta_s": 42.5,
                    "attempts": 1,
                    "max_attempts": 3,
                    "params": {"preset": "thorax", "mode": "fast", "threshold": None},
                    "inputs": {"ct": {"sha256": "9b1c...", "bytes": 1048576}},
                }
            ]
        }
    )

    id: str
    state: JobState
    cohort_id: str | None = None
    case_name: str | None = None
    progress: ProgressOut
    queue_position: int | None = Field(None, ge=1, description="1 = next to run; only while queued")
    eta_s: float | None = Field(None, ge=0.0, description="estimated seconds until finished, from recent jobs")
    attempts: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    params: dict[str, Any]
    inputs: dict[str, InputOut]
    model_name: str | None = None
    model_sha256: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    cancel_requested: bool = False
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    manifest: dict[str, Any] | None = None
    results_url: str | None = None
    callback_url: str | None = None
    callbacks: list[CallbackOut] = Field(default_factory=list, description="the job's callbacks and their delivery")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int = Field(ge=0, description="jobs matching the filters")
    offset: int = Field(ge=0)
    limit: int = Field(ge=1)
    next_offset: int | None = Field(None, ge=0)


class ArtifactOut(BaseModel):
    name: str = Field(examples=["mask.nii.gz"])
    bytes: int = Field(ge=0)
    sha256: str
    content_type: str
    url: str = Field(examples=[f"/v1/jobs/{JOB_ID_EXAMPLE}/results/mask.nii.gz"])


class ResultsOut(BaseModel):
    job_id: str
    state: JobState
    artifacts: list[ArtifactOut]


class ThresholdIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"threshold": 0.3}]})

    threshold: float = Field(ge=0.0, le=1.0, description="new residual threshold in [0, 1]")


class ThresholdOut(BaseModel):
    job_id: str
    threshold: float
    previous_threshold: float | None
    lesions: list[dict[str, Any]]
    metrics: dict[str, Any] | None = Field(None, description="Dice etc. when the job had a label")
    artifacts: list[ArtifactOut]


class CohortIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "sarcoma-2024"},
        {"name": "sarcoma-2024", "callback_url": "https://hooks.example.org/autopaint", "expected_jobs": 20}]})

    name: str = Field(min_length=1, max_length=200)
    callback_url: str | None = Field(None, max_length=2048, description="one cohort.completed POST when all "
                                     "its jobs have finished; " + CALLBACK_URL_DESCRIPTION)
    expected_jobs: int | None = Field(None, ge=1, le=1_000_000, description="the cohort is complete only once it "
                                      "holds this many jobs (set it when jobs are submitted over time)")


class CohortCase(BaseModel):
    job_id: str
    case_name: str | None
    state: JobState
    stage: Stage
    fraction: float | None = Field(ge=0.0)
    error_code: str | None = None


class CohortOut(BaseModel):
    id: str
    name: str
    created_at: UtcDatetime
    counts: dict[str, int] = Field(description="jobs per state", examples=[{"succeeded": 18, "running": 2}])
    progress: float = Field(ge=0.0, le=1.0, description="finished cases / all cases", examples=[0.9])
    cases: list[CohortCase]
    lesions_csv_url: str
    metrics_csv_url: str
    callback_url: str | None = None
    expected_jobs: int | None = Field(None, ge=1)
    callbacks: list[CallbackOut] = Field(default_factory=list)


class ModelOut(BaseModel):
    name: str = Field(examples=["thorax-petct-gconvlap-128"])
    modality: str | None = None
    size: int | None = Field(None, ge=1, description="input slice size in pixels", examples=[128])
    arch: str | None = Field(None, examples=["gconvlap"])
    default_threshold: float | None = Field(None, ge=0.0, le=1.0)
    has_weights: bool
    weights_bytes: int | None = Field(None, ge=0)
    default: bool = False
    card: dict[str, Any]


class ReadyOut(BaseModel):
    ready: bool
    database: bool
    broker: bool
    workers: int | None = Field(None, ge=0)  # worker processes alive (embedded service only; omitted otherwise)
    storage: bool | None = None
