"""End to end over HTTP: client -> API -> broker -> real worker process -> storage -> client.

Runs the embedded service (SQLite + kombu sqla broker, ``services.embedded.EmbeddedService``) and
the production wiring (PostgreSQL + Redis, ``services`` marker). The plumbing tests use the
TEST-ONLY injected pipeline; ``test_real_pipeline_matches_cli_segment`` runs the real pipeline
with a shipped model and compares the mask byte for byte with ``autopaint segment``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autopaint.client import ApiError, Client
from services.embedded import EmbeddedService
from tests.services.workerkit import FAKE_ENV, api_key, free_port, make_settings, write_random_model

ROOT = Path(__file__).resolve().parents[2]
SUV = {"suv_already": True}  # the phantom PET is SUV; a NIfTI PET must say its units


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autopaint.data.phantom import write_cohort

    out = tmp_path_factory.mktemp("phantom")
    write_cohort("thorax", 1, 0, out, "small", 0.0)
    return next(p for p in sorted(out.iterdir()) if p.is_dir())


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis", marks=pytest.mark.services)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp = tmp_path_factory.mktemp(f"live-{request.param}")
    settings = make_settings(request.param, tmp, request)
    service = EmbeddedService(settings, port=free_port(), workers=1, log_dir=tmp / "logs",
                              worker_env={**FAKE_ENV, "AUTOPAINT_TEST_SLOW_S": "1.0"})
    with service.running(), Client(service.url, api_key(settings)) as client:
        client.wait_ready(timeout=30)
        client.second_key = api_key(settings)  # type: ignore[attr-defined]
        yield client


def test_upload_run_download_roundtrip(live: Client, phantom_dir: Path, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    job = live.submit(ct=phantom_dir / "ct.nii.gz", pet=phantom_dir / "pet.nii.gz",
                      params={"preset": "thorax", "suv_already": True}, case_name="case-1")
    assert job["state"] == "queued"
    job = live.wait(job["id"], on_progress=seen.append, poll_s=0.1, timeout=60)
    assert job["state"] == "succeeded", job
    running = [j for j in seen if j["state"] == "running"]
    assert running, "no progress was visible while the job ran"
    assert any(j["progress"]["circles_total"] == 20 and j["progress"]["circles_done"] > 0 for j in running)
    files = live.download(job["id"], tmp_path / "out")
    assert sorted(p.name for p in files) == ["mask.nii.gz", "report.json"]
    # the fake pipeline copies the stored (sanitized) CT: its sha256 is the job's input sha256
    mask_sha = hashlib.sha256((tmp_path / "out" / "mask.nii.gz").read_bytes()).hexdigest()
    assert mask_sha == job["inputs"]["ct"]["sha256"] == job["manifest"]["inputs"]["ct"]
    assert job["attempts"] == 1


def test_idempotent_submit_returns_same_job(live: Client, phantom_dir: Path) -> None:
    a = live.submit(ct=phantom_dir / "ct.nii.gz", pet=phantom_dir / "pet.nii.gz", params=SUV, idempotency_key="same-key")
    b = live.submit(ct=phantom_dir / "ct.nii.gz", pet=phantom_dir / "pet.nii.gz", params=SUV, idempotency_key="same-key")
    assert a["id"] == b["id"]
    assert live.wait(a["id"], poll_s=0.2, timeout=60)["state"] == "succeeded"


def test_other_key_gets_404(live: Client, phantom_dir: Path) -> None:
    job = live.submit(ct=phantom_dir / "ct.nii.gz", pet=phantom_dir / "pet.nii.gz", params=SUV)
    with Client(str(live.http.base_url), live.second_key) as other:  # type: ignore[attr-defined]
        with pytest.raises(ApiError) as err:
            other.job(job["id"])
        assert err.value.status == 404
        with pytest.raises(ApiError) as err:
            other.results(job["id"])
        assert err.value.status == 404
    live.wait(job["id"], poll_s=0.2, timeout=60)


@pytest.mark.slow
def test_real_pipeline_matches_cli_segment(request: pytest.FixtureRequest, tmp_path: Path,
                                           phantom_dir: Path) -> None:
    """Upload a phantom case -> job (real pipeline, real worker) -> mask and residual
    byte-identical to ``autopaint segment`` on the same inputs. Uses the shipped default model
    when present, else a tiny random model (the comparison is about the service, not quality)."""
    from autopaint.model_cards import DEFAULT_MODEL
    from autopaint.paths import models_dir

    if (models_dir() / DEFAULT_MODEL / "model.pt").is_file():
        mdir, model = models_dir(), DEFAULT_MODEL
    else:
        mdir = tmp_path / "models"
        model = write_random_model(mdir).name
    settings = make_settings("embedded", tmp_path, request, device="cpu", models_dir=mdir,
                             default_model=model)
    service = EmbeddedService(settings, port=free_port(), workers=1, log_dir=tmp_path / "logs",
                              worker_env={"AUTOPAINT_MODELS_DIR": str(mdir)})
    ct, pet = phantom_dir / "ct.nii.gz", phantom_dir / "pet.nii.gz"
    with service.running(), Client(service.url, api_key(settings)) as client:
        client.wait_ready(timeout=30)
        job = client.submit(ct=ct, pet=pet, params={"preset": "thorax", "mode": "fast", **SUV})
        job = client.wait(job["id"], poll_s=0.5, timeout=1200)
        assert job["state"] == "succeeded", (job, service.worker_procs)
        client.download(job["id"], tmp_path / "service")
    cli_out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "autopaint.cli", "segment", "--ct", str(ct), "--pet", str(pet),
                    "--suv-already", "--preset", "thorax", "--mode", "fast", "--model", model,
                    "--device", "cpu", "--out", str(cli_out), "--quiet"],
                   check=True, cwd=ROOT, env={**os.environ, "AUTOPAINT_MODELS_DIR": str(mdir)},
                   timeout=1200)
    for name in ("mask.nii.gz", "residual.nii.gz"):
        assert (tmp_path / "service" / name).read_bytes() == (cli_out / name).read_bytes(), name
    assert job["manifest"]["model"]["sha256"] == json.loads((cli_out / "report.json").read_text())["model"]["sha256"]
