"""Alembic migrations: upgrade -> downgrade -> upgrade on SQLite and PostgreSQL, and the
migrated schema matches the SQLAlchemy models (no pending autogenerate diff)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from autopaint.db import Base, make_engine
from autopaint.db.migrate import downgrade, head_revision, upgrade

TABLES = {"jobs", "cohorts", "artifacts", "api_keys", "callback_deliveries"}


def _legacy_threshold_rows(url: str, engine: Engine) -> None:
    """At revision 0001 a finished job's manifest threshold was a float: 0002 makes it a record."""
    upgrade(url, "0001")
    with engine.begin() as conn:
        for jid, manifest in (("a", {"threshold": 0.2, "lesions": 1}),
                              ("b", {"threshold": {"value": 0.3, "source": "rethreshold", "previous": 0.2}})):
            conn.execute(text("INSERT INTO jobs (id, owner_key_id, state, stage, progress_done, progress_total, "
                              "progress_unit, circles_done, circles_total, attempts, max_attempts, queue, params, "
                              "inputs, cancel_requested, created_at, timings, manifest) VALUES (:id, 'o', "
                              "'succeeded', 'done', 0, 0, '', 0, 0, 1, 3, 'gpu', '{}', '{}', false, "
                              "CURRENT_TIMESTAMP, '{}', :m)"), {"id": jid, "m": json.dumps(manifest)})
    upgrade(url)
    with engine.connect() as conn:
        got = {r[0]: json.loads(r[1]) if isinstance(r[1], str) else r[1]
               for r in conn.execute(text("SELECT id, manifest FROM jobs"))}
    assert got["a"] == {"threshold": {"value": 0.2, "source": "run"}, "lesions": 1}
    assert got["b"]["threshold"] == {"value": 0.3, "source": "rethreshold", "previous": 0.2}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))


def _keys_get_secrets(url: str, engine: Engine) -> None:
    """At revision 0002 keys had no callback secret: 0003 gives each its own (64 hex, NOT NULL);
    a downgrade to 0002 keeps the keys and their jobs' artifacts (no table re-created under them)."""
    downgrade(url, "0002")
    with engine.begin() as conn:
        for kid in ("k1", "k2"):
            conn.execute(text("INSERT INTO api_keys (id, name, key_hash, prefix, created_at, revoked) VALUES "
                              "(:id, :id, :h, 'ap_x', CURRENT_TIMESTAMP, false)"), {"id": kid, "h": kid * 32})
        conn.execute(text("INSERT INTO jobs (id, owner_key_id, state, stage, progress_done, progress_total, "
                          "progress_unit, circles_done, circles_total, attempts, max_attempts, queue, params, "
                          "inputs, cancel_requested, created_at, timings) VALUES ('j', 'k1', 'succeeded', 'done', "
                          "0, 0, '', 0, 0, 1, 3, 'gpu', '{}', '{}', false, CURRENT_TIMESTAMP, '{}')"))
        conn.execute(text("INSERT INTO artifacts (job_id, name, storage_key, sha256, bytes, content_type, "
                          "created_at) VALUES ('j', 'mask.nii.gz', 'k', :s, 1, 'x', CURRENT_TIMESTAMP)"),
                     {"s": "0" * 64})
    upgrade(url, "0003")
    with engine.connect() as conn:
        secrets = dict(conn.execute(text("SELECT id, callback_secret FROM api_keys")).all())
        nullable = {c["name"]: c["nullable"] for c in inspect(conn).get_columns("api_keys")}
    assert set(secrets) == {"k1", "k2"} and secrets["k1"] != secrets["k2"]
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in secrets.values())
    assert nullable["callback_secret"] is False
    downgrade(url, "0002")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM artifacts")).scalar() == 1
        assert "callback_secret" not in {c["name"] for c in inspect(conn).get_columns("api_keys")}
        for table in ("artifacts", "jobs", "api_keys"):
            conn.execute(text(f"DELETE FROM {table}"))


def _roundtrip(url: str) -> None:
    engine = make_engine(url)
    try:
        _legacy_threshold_rows(url, engine)
        _keys_get_secrets(url, engine)
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
            assert {"lease_expires_at", "idempotency_key", "cancel_requested", "manifest", "callback_url"} <= cols
    finally:
        engine.dispose()


def test_migrations_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.services
def test_migrations_postgresql(make_pg_database: Callable[[], str]) -> None:
    _roundtrip(make_pg_database())
