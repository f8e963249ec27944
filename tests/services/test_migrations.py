"""Alembic migrations: upgrade -> downgrade -> upgrade on SQLite and PostgreSQL, and the
migrated schema matches the SQLAlchemy models (no pending autogenerate diff)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from autopaint.db import Base, make_engine
from autopaint.db.migrate import downgrade, head_revision, upgrade

TABLES = {"jobs", "cohorts", "artifacts", "api_keys", "models"}


def _roundtrip(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(url)
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], diff
        downgrade(url, "base")
        with engine.connect() as conn:
            assert not TABLES & set(inspect(conn).get_table_names())
        upgrade(url)
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            cols = {c["name"] for c in inspect(conn).get_columns("jobs")}
            assert {"lease_expires_at", "idempotency_key", "cancel_requested", "manifest"} <= cols
    finally:
        engine.dispose()


def test_migrations_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.services
def test_migrations_postgresql(make_pg_database: Callable[[], str]) -> None:
    _roundtrip(make_pg_database())
