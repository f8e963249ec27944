"""autopaint.db: SQLAlchemy 2.0 models, engine/session factory and the job-state repository."""

from autopaint.db.models import ApiKey, Artifact, Base, CallbackDelivery, Cohort, Job, new_id, utcnow
from autopaint.db.session import make_engine, make_session_factory, normalize_url

__all__ = [
    "ApiKey",
    "Artifact",
    "Base",
    "CallbackDelivery",
    "Cohort",
    "Job",
    "make_engine",
    "make_session_factory",
    "new_id",
    "normalize_url",
    "utcnow",
]
