"""Fixtures for the service tests (API, DB, migrations, worker, end to end).

- ``sqlite_settings``: Settings with a SQLite database, the in-memory kombu broker and local
  storage, all under ``tmp_path`` (no servers needed).
- ``pg_server_url`` / ``make_pg_database``: the local PostgreSQL (127.0.0.1:5432, user postgres,
  trust auth); each call of the factory creates a uniquely named database, dropped at teardown.
- ``pg_url``: one migrated database per test session.
- ``redis_url``, ``run_id``: the local Redis (a db number + a unique key prefix / queue name
  per test run). ``services_settings``: PostgreSQL + Redis + local storage.
- ``api``: the API in process; ``cb_api``: the same with loopback callbacks allowed and a fast
  backoff; ``receiver``: a loopback callback receiver (the callback tests).
Tests that need Redis or PostgreSQL are marked ``@pytest.mark.services`` and skip cleanly when
the servers are not reachable.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from autopaint.settings import Settings

if TYPE_CHECKING:
    from tests.services.apikit import Api
    from tests.services.receiver import Receiver

PG_HOST = os.environ.get("AUTOPAINT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("AUTOPAINT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("AUTOPAINT_TEST_PG_USER", "postgres")
REDIS_HOST = os.environ.get("AUTOPAINT_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("AUTOPAINT_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("AUTOPAINT_TEST_REDIS_DB", "11"))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def closed_port() -> int:
    """A loopback TCP port with nothing listening (for 'broker down' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def run_id() -> str:
    """Unique per test session: use it in queue names, Redis key prefixes, database names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Embedded-style settings: SQLite (migrated) + in-memory broker + local storage in tmp_path."""
    from autopaint.db.migrate import upgrade

    state = tmp_path / "state"
    state.mkdir()
    s = Settings(
        state_dir=state,
        database_url=f"sqlite:///{state / 'autopaint.db'}",
        broker_url="memory://",
        storage_dir=state / "storage",
        api_key_required=True,
        max_upload_bytes=8 * 1024 * 1024,
        max_voxels=4_000_000,
        _env_file=None,  # type: ignore[call-arg]
    )
    s.ensure_dirs()
    upgrade(s.database_url)
    return s


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    if not _port_open(PG_HOST, PG_PORT):
        pytest.skip(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT}")
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}"


@pytest.fixture(scope="session")
def make_pg_database(pg_server_url: str, run_id: str) -> Iterator[Callable[[], str]]:
    """Factory: create a fresh, uniquely named database and return its URL (dropped at the end)."""
    import psycopg

    created: list[str] = []
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"

    def make() -> str:
        name = f"autopaint_test_{run_id}_{len(created)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{pg_server_url}/{name}"

    yield make
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(make_pg_database: Callable[[], str]) -> str:
    """A migrated PostgreSQL database shared by the session's tests (use unique ids in rows)."""
    from autopaint.db.migrate import upgrade

    url = make_pg_database()
    upgrade(url)
    return url


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(run_id: str) -> Iterator[str]:
    if not _port_open(REDIS_HOST, REDIS_PORT):
        pytest.skip(f"Redis not reachable on {REDIS_HOST}:{REDIS_PORT}")
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"autopaint-test-{run_id}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def services_settings(tmp_path: Path, pg_url: str, redis_url: str, run_id: str) -> Settings:
    """Production-style settings: PostgreSQL + Redis (unique prefix and queue) + local storage."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    s = Settings(
        state_dir=state,
        database_url=pg_url,
        broker_url=redis_url,
        broker_key_prefix=f"autopaint-test-{run_id}:",
        queue=f"autopaint-test-{run_id}-gpu",
        cpu_queue=f"autopaint-test-{run_id}-cpu",
        storage_dir=state / "storage",
        max_upload_bytes=8 * 1024 * 1024,
        max_voxels=4_000_000,
        _env_file=None,  # type: ignore[call-arg]
    )
    s.ensure_dirs()
    return s


# --- worker / end-to-end / cohort tests (F2) ---------------------------------------------------


@pytest.fixture
def embedded_settings(sqlite_settings: Settings) -> Settings:
    """``sqlite_settings`` with the embedded broker: kombu ``sqla+sqlite://`` in the state folder
    (a real broker shared by processes, unlike ``memory://``)."""
    return sqlite_settings.model_copy(
        update={"broker_url": f"sqla+sqlite:///{sqlite_settings.state_dir / 'broker.db'}"}
    )


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis", marks=pytest.mark.services)])
def worker_kit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A :class:`tests.services.workerkit.Kit` with two running worker processes (TEST-ONLY
    ``auto`` fake pipeline), on the embedded path (SQLite + sqla broker) and on PostgreSQL + Redis;
    a unique queue, a 2 s DB lease, progress on every circle; workers killed at module end."""
    from tests.services.workerkit import Kit, make_settings

    tmp = tmp_path_factory.mktemp(f"workers-{request.param}")
    settings = make_settings(request.param, tmp, request)
    kit = Kit(settings, tmp)
    try:
        kit.start_worker()
        kit.start_worker()
        yield kit
    finally:
        kit.close()


@pytest.fixture
def api(sqlite_settings: Settings) -> Iterator[Api]:
    """The API in process on the test's own SQLite state (:class:`tests.services.apikit.Api`)."""
    from tests.services.apikit import Api

    a = Api(sqlite_settings)
    yield a
    a.close()


CALLBACKS_FAST = {"callback_allow": "127.0.0.1/32", "callback_backoff_s": 0.05, "callback_backoff_max_s": 0.2,
                  "callback_max_attempts": 3, "callback_timeout_s": 3.0, "callback_poll_s": 0.05}


@pytest.fixture
def cb_api(sqlite_settings: Settings) -> Iterator[Api]:
    """The API with loopback callbacks allowed and a fast backoff (the callback tests)."""
    from tests.services.apikit import Api

    a = Api(sqlite_settings.model_copy(update=CALLBACKS_FAST))
    yield a
    a.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback HTTP receiver of callbacks (:class:`tests.services.receiver.Receiver`)."""
    from tests.services.receiver import Receiver

    with Receiver() as r:
        yield r
