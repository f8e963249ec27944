"""SQLAlchemy 2.0 models: jobs, artifacts, cohorts, api_keys, callback_deliveries (the callback outbox).

Times are naive UTC (``utcnow()``) so that SQLite and PostgreSQL compare them the same way.
Ids are uuid4 hex strings. The schema is created by the Alembic migrations in ``migrations/``;
``Base.metadata`` is their ``target_metadata``.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import (
    Enum as SAEnum,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from autopaint.contracts import JobState
from autopaint.progress import Stage

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _str_enum(enum: type[StrEnum]) -> SAEnum:
    """A string enum stored as its value in a VARCHAR(16) (no database enum type, no CHECK), read
    back as the enum member."""
    return SAEnum(enum, native_enum=False, create_constraint=False, length=16,
                  values_callable=lambda e: [m.value for m in e], validate_strings=True)


def utcnow() -> datetime:
    """Current time, naive UTC (the database convention of this package)."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


def new_secret() -> str:
    """A callback signing secret: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(32)


URL_MAX = 2048  # the longest callback URL accepted (services.api.urlguard)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ApiKey(Base):
    """An API key; only the sha256 of the token is stored, plus a short prefix to recognise it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # signs this key's callbacks (autopaint.webhooks); kept in clear, as a signing key must be. After
    # a rotation the previous secret also signs until settings.callback_secret_grace_s has passed
    callback_secret: Mapped[str] = mapped_column(String(64), default=new_secret)
    callback_secret_previous: Mapped[str | None] = mapped_column(String(64), nullable=True)
    callback_secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Cohort(Base):
    __tablename__ = "cohorts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_key_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    callback_url: Mapped[str | None] = mapped_column(String(URL_MAX), nullable=True)  # cohort.completed
    expected_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)  # complete only with this many

    jobs: Mapped[list[Job]] = relationship(back_populates="cohort", passive_deletes=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_key_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_state_created", "state", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_key_id: Mapped[str] = mapped_column(String(32), index=True)
    cohort_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("cohorts.id", ondelete="SET NULL"), nullable=True, index=True
    )
    case_name: Mapped[str | None] = mapped_column(String(200), nullable=True)  # a label only
    state: Mapped[JobState] = mapped_column(_str_enum(JobState), default=JobState.QUEUED)
    stage: Mapped[Stage] = mapped_column(_str_enum(Stage), default=Stage.queued)
    stage_started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_unit: Mapped[str] = mapped_column(String(16), default="")
    circles_done: Mapped[int] = mapped_column(Integer, default=0)
    circles_total: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    queue: Mapped[str] = mapped_column(String(64), default="gpu")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {role: {key, sha256, bytes}}
    model_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {stage: seconds}
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(String(URL_MAX), nullable=True)  # job.<terminal state>

    cohort: Mapped[Cohort | None] = relationship(back_populates="jobs")
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    storage_key: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class CallbackDelivery(Base):
    """The callback outbox: one row per event to POST, inserted in the transaction that makes it
    true (``autopaint.db.callbacks``), delivered by the API's dispatcher (``services.api.callbacks``).

    ``next_attempt_at`` is when the next attempt is due; NULL once the row is done (``delivered_at``
    set, or given up after the last attempt). While an attempt runs it is pushed ahead by the claim
    lease and ``claimed_by`` names the claim, so two API processes never send one row at once.
    ``job_id``/``cohort_id`` become NULL when the job/cohort is deleted; the row stays sendable
    (``owner_key_id`` picks the signing secret). One row per (job, event) and (cohort, event)."""

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "event", name="uq_callback_deliveries_job_event"),
        UniqueConstraint("cohort_id", "event", name="uq_callback_deliveries_cohort_event"),
        Index("ix_callback_deliveries_due", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_key_id: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    cohort_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("cohorts.id", ondelete="SET NULL"), nullable=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(URL_MAX))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # the last attempts
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def status(self) -> Literal["pending", "delivered", "failed"]:
        """``delivered``, ``pending`` (an attempt is due or running) or ``failed`` (gave up)."""
        if self.delivered_at is not None:
            return "delivered"
        return "pending" if self.next_attempt_at is not None else "failed"
