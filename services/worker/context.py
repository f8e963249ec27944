"""Per-process resources of a worker: settings, database sessions and storage.

Engines are created lazily and per process id: a prefork child never reuses a connection pool
inherited from its parent.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autopaint.db import make_engine, make_session_factory
from autopaint.db.leases import lease_owner_id
from autopaint.settings import Settings
from autopaint.storage import Storage, make_storage


class WorkerContext:
    """Lazily built database session factory and storage for the current process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Any = None
        self._sessions: sessionmaker[Session] | None = None
        self._storage: Storage | None = None

    def _ensure(self) -> None:
        pid = os.getpid()
        with self._lock:
            if self._pid != pid:
                # a forked child: drop the parent's pool without closing its sockets
                if self._engine is not None:
                    self._engine.dispose(close=False)
                self._engine = make_engine(self.settings.database_url)
                self._sessions = make_session_factory(self._engine)
                self._storage = make_storage(self.settings)
                self._pid = pid

    def session(self) -> Session:
        self._ensure()
        assert self._sessions is not None
        return self._sessions()

    @property
    def storage(self) -> Storage:
        self._ensure()
        assert self._storage is not None
        return self._storage

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine, self._sessions, self._storage, self._pid = None, None, None, None


def worker_id() -> str:
    """``host@pidns:pid`` of this process: the lease owner written on the job row
    (``autopaint.db.leases.lease_owner_id``)."""
    return lease_owner_id()
