"""Service settings (API, worker, admin CLI), read from the environment with prefix ``AUTOPAINT_``.

Build one ``Settings()`` at process start and pass it down (``create_app(settings)``,
``create_celery_app(settings)``); there is deliberately no module-level instance. Unset URLs and
folders are derived from ``state_dir`` (env ``AUTOPAINT_STATE_DIR``): the embedded default is a
SQLite database, the kombu ``sqla+sqlite://`` broker and local-disk storage under that folder.
(``AUTOPAINT_DATA_DIR`` is taken: it names the read-only real data sets, see ``autopaint.paths``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autopaint.contracts import QUEUE_CPU, QUEUE_GPU
from autopaint.model_cards import DEFAULT_MODEL

DICOM_UNPACK_FACTOR = 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOPAINT_", extra="ignore")

    state_dir: Path = Field(default_factory=lambda: Path.home() / ".autopaint")
    database_url: str = ""  # default: sqlite:///<state_dir>/autopaint.db
    broker_url: str = ""  # default: sqla+sqlite:///<state_dir>/broker.db
    broker_key_prefix: str = ""  # Redis only: prefix of every broker key (isolates test runs)
    storage_backend: Literal["local"] = "local"
    storage_dir: Path | None = None  # default: <state_dir>/storage (a shared volume in production)

    queue: str = QUEUE_GPU  # where the API publishes jobs
    cpu_queue: str = QUEUE_CPU
    publish_timeout_s: float = 5.0

    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)  # per request, counted on the stream
    max_voxels: int = Field(default=512 * 512 * 1200, gt=0)  # per input volume (declared in header)
    # a DICOM zip (CT/PET): at most this many files, unpacking to at most DICOM_UNPACK_FACTOR x
    # max_upload_bytes (real DICOM deflates 1-2x; see autopaint.imaging.dicom_zip)
    max_dicom_files: int = Field(default=5000, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    soft_time_limit_s: int = Field(default=3600, gt=0)
    hard_time_limit_s: int = Field(default=3900, gt=0)
    visibility_timeout_s: int = Field(default=7200, gt=0)
    # DB lease of a running job, renewed by the worker's heartbeat every lease_s / 3: a job whose
    # worker died is re-run at the latest about one lease later (docs/RELIABILITY.md)
    lease_s: int = Field(default=30, gt=0)
    # the reconciler (in the API process): every reconcile_s seconds (default lease_s / 2; 0 = off)
    # it re-queues RUNNING jobs whose lease expired and re-publishes QUEUED jobs no message will
    # deliver (queued for more than stale_queued_s, default 2 x lease_s, with the queue empty)
    reconcile_s: float | None = Field(default=None, ge=0)
    stale_queued_s: float | None = Field(default=None, gt=0)
    reconcile_batch: int = Field(default=100, gt=0)  # jobs re-published per pass at most
    progress_every_circles: int = Field(default=50, gt=0)
    default_model: str = DEFAULT_MODEL
    models_dir: Path | None = None  # default: autopaint.paths.models_dir()
    device: str = "auto"
    api_key_required: bool = True
    page_size_max: int = Field(default=200, gt=0)
    # API limits (docs/RELIABILITY.md "Storage faults and API limits"): uploads validated and re-written
    # at once (the memory-heavy part; more wait up to ingest_wait_s, then 503 busy), uploads in flight
    # per key and queued + running jobs per key (429), seconds without a body byte before an upload is
    # cut (408 upload_timeout)
    max_concurrent_ingests: int = Field(default=2, gt=0)
    ingest_wait_s: float = Field(default=30.0, ge=0)
    max_uploads_per_key: int = Field(default=4, gt=0)
    max_active_jobs_per_key: int = Field(default=50, gt=0)
    upload_idle_timeout_s: float = Field(default=30.0, gt=0)
    upload_janitor_age_s: float = Field(default=3600.0, ge=0)  # leftover state/uploads/* older than this
    # Callbacks (services.api.callbacks; README "Callbacks"): a job's / cohort's callback_url gets a
    # signed POST on each terminal state, from a dispatcher thread in the API process. A URL is http(s)
    # without credentials, and every address its host resolves to must be public unicast, unless
    # callback_allow (comma-separated networks "10.0.0.0/8", addresses, or exact host names) allows it;
    # checked at submit (422 callback_url_not_allowed) and again before each attempt. Attempts time out
    # after callback_timeout_s; retries wait callback_backoff_s, doubling up to callback_backoff_max_s,
    # callback_max_attempts in all. After a secret rotation the previous secret also signs for
    # callback_secret_grace_s. public_url (e.g. https://autopaint.example.org) makes the links absolute.
    callbacks_enabled: bool = True
    callback_allow: str = ""
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_max_attempts: int = Field(default=12, ge=1)
    callback_backoff_s: float = Field(default=2.0, gt=0)
    callback_backoff_max_s: float = Field(default=3600.0, gt=0)
    callback_poll_s: float = Field(default=1.0, gt=0)  # the dispatcher looks for due rows this often
    callback_concurrency: int = Field(default=4, gt=0)  # attempts in flight per API process
    callback_secret_grace_s: float = Field(default=86400.0, ge=0)
    # Each retry's wait is spread by +-callback_jitter (a fraction: 0.2 = +-20 %) so that the callbacks
    # of many jobs that failed together do not come back together. Delivered and given-up outbox rows
    # older than callback_retention_days are deleted by the dispatcher: at most callback_purge_batch
    # rows every callback_purge_every_s (sooner while there are more); 0 days keeps them forever.
    callback_jitter: float = Field(default=0.2, ge=0, lt=1)
    callback_retention_days: float = Field(default=30.0, ge=0)
    callback_purge_every_s: float = Field(default=3600.0, gt=0)
    callback_purge_batch: int = Field(default=500, gt=0)
    public_url: str = ""
    # Server-sent events (GET /v1/jobs/{id}/events): the row is read every events_poll_s, a comment is
    # sent every events_keepalive_s, a stream ends after events_max_s (the client reconnects), and a
    # key may hold max_streams_per_key streams at once (429 too_many_streams)
    events_poll_s: float = Field(default=0.5, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)
    events_max_s: float = Field(default=3600.0, gt=0)
    max_streams_per_key: int = Field(default=4, gt=0)

    @property
    def reconcile_every_s(self) -> float:
        """Seconds between two reconciler passes (0: the reconciler is off)."""
        return self.lease_s / 2.0 if self.reconcile_s is None else self.reconcile_s

    @property
    def stale_queued_after_s(self) -> float:
        """A QUEUED job older than this with an empty broker queue has lost its message."""
        return 2.0 * self.lease_s if self.stale_queued_s is None else self.stale_queued_s

    @property
    def max_dicom_bytes(self) -> int:
        """The unpacked size cap of one uploaded DICOM zip."""
        return DICOM_UNPACK_FACTOR * self.max_upload_bytes

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'autopaint.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.state_dir / 'broker.db'}"
        if self.storage_dir is None:
            self.storage_dir = self.state_dir / "storage"
        if self.hard_time_limit_s <= self.soft_time_limit_s:
            raise ValueError("hard_time_limit_s must be greater than soft_time_limit_s")
        if self.visibility_timeout_s <= self.hard_time_limit_s:
            raise ValueError(
                "visibility_timeout_s must exceed hard_time_limit_s, or the broker re-delivers "
                "a job that is still running"
            )
        if self.lease_s >= self.hard_time_limit_s:
            raise ValueError("lease_s must be shorter than hard_time_limit_s (it is renewed while a job runs)")
        return self

    def resolved_models_dir(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir
        from autopaint.paths import models_dir

        return models_dir()

    def ensure_dirs(self) -> None:
        """Create ``state_dir`` and the local storage folder (embedded default)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.storage_backend == "local" and self.storage_dir is not None:
            self.storage_dir.mkdir(parents=True, exist_ok=True)
