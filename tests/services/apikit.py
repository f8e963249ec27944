"""Helpers for the API tests: tiny valid NIfTI inputs, a fake publisher, an API client wrapper."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from autopaint.db import Job, make_engine, make_session_factory
from autopaint.settings import Settings
from services.api.app import create_app
from services.api.auth import create_api_key
from services.api.queue import BrokerUnavailable
from tests.imaging.badfiles import build_shifted_pair

PHI = "PATIENT^JOHN DOE 1957"


def write_pair(folder: Path, with_phi: bool = True) -> tuple[Path, Path]:
    """A valid overlapping CT (HU, int16-ish) + PET (SUV) pair, gzipped; the CT carries PHI in
    ``descrip``/``aux_file`` and a comment extension when ``with_phi``."""
    ct_raw, pet_raw = build_shifted_pair(folder / "raw", shift_mm=0.0)
    out = []
    for raw, name in ((ct_raw, "ct.nii.gz"), (pet_raw, "pet.nii.gz")):
        img = nib.load(str(raw))
        data = np.asarray(img.dataobj)
        new = nib.Nifti1Image(data, img.affine)
        if with_phi:
            new.header["descrip"] = PHI.encode()
            new.header["aux_file"] = b"SMITH"
            new.header.extensions.append(nib.nifti1.Nifti1Extension(6, PHI.encode()))
        path = folder / name
        nib.save(new, str(path))
        out.append(path)
    return out[0], out[1]


@dataclass
class FakePublisher:
    """Records publishes; checks the job row is already committed (visible to another session)."""

    sessions: sessionmaker[Session] | None = None
    fail: bool = False
    published: list[tuple[str, str]] = field(default_factory=list)
    committed_when_published: list[bool] = field(default_factory=list)

    def publish(self, job_id: str, queue: str) -> None:
        if self.fail:
            raise BrokerUnavailable("connection refused")
        if self.sessions is not None:
            with self.sessions() as s:
                row = s.get(Job, job_id)
                self.committed_when_published.append(row is not None and bool(row.inputs))
        self.published.append((job_id, queue))

    def ping(self) -> bool:
        return not self.fail

    def queue_length(self, queue: str) -> int | None:
        return len([q for _, q in self.published if q == queue])


class Api:
    """A TestClient with two API keys (``a`` and ``b``) and the app's context."""

    def __init__(self, settings: Settings, publisher: Any = None) -> None:
        self.settings = settings
        engine = make_engine(settings.database_url)
        self.sessions = make_session_factory(engine)
        self.publisher = publisher if publisher is not None else FakePublisher(self.sessions)
        self.app = create_app(settings, publisher=self.publisher)
        self.ctx = self.app.state.ctx
        self.client = TestClient(self.app)
        with self.sessions() as s:
            self.key_a = create_api_key(s, "alice")[1]
            self.key_b = create_api_key(s, "bob")[1]

    def h(self, who: str = "a", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key_a if who == 'a' else self.key_b}", **extra}

    def submit(self, files: dict[str, Path], params: dict[str, Any] | None = None, who: str = "a",
               headers: dict[str, str] | None = None, suv: bool = True, **fields: str) -> Any:
        """POST /v1/jobs. ``suv``: state that a NIfTI PET is SUV (``suv_already: true``, the test
        pairs' PET is) unless ``params`` state the units themselves."""
        parts: list[Any] = [(role, (f"{role}-upload.nii.gz", p.read_bytes(), "application/gzip"))
                            for role, p in files.items()]
        params = dict(params or {})
        if suv and "pet" in files and not {"suv_already", "weight_kg"} & set(params):
            params["suv_already"] = True
        data = {"params": json.dumps(params), **fields}
        return self.client.post("/v1/jobs", files=parts, data=data, headers=self.h(who, **(headers or {})))

    def job(self, job_id: str) -> Job:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def stored_files(self) -> list[Path]:
        root = self.settings.storage_dir
        assert root is not None
        return [p for p in root.rglob("*") if p.is_file()]

    def close(self) -> None:
        self.client.close()
        self.ctx.engine.dispose()


def chunked(data: bytes, size: int = 64 * 1024, counter: list[int] | None = None) -> Iterator[bytes]:
    """Yield ``data`` in chunks, counting how many chunks the server pulled."""
    for i in range(0, len(data), size):
        if counter is not None:
            counter[0] += 1
        yield data[i : i + size]
