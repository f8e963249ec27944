"""``autopaint cohort submit DIR --concurrency N``: 20 small phantom cases, 2 workers, resumable.

The CLI runs as a real subprocess against the embedded service (SQLite + sqla broker) with two
worker processes running the TEST-ONLY injected pipeline. It is SIGKILLed mid-cohort and started
again: the restart must skip finished cases, follow running ones and never submit a case twice.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopaint.client import Client
from autopaint.client_cohort import STATE_FILE, discover_cases
from autopaint.db import Job, make_engine, make_session_factory
from services.embedded import EmbeddedService
from tests.services.workerkit import FAKE_ENV, api_key, free_port, make_settings

ROOT = Path(__file__).resolve().parents[2]
N_CASES = 20


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 case folders from 2 generated small thorax phantoms (generation costs ~5 s a case)."""
    from autopaint.data.phantom import write_cohort

    src = tmp_path_factory.mktemp("phantoms")
    write_cohort("thorax", 2, 0, src, "small", 0.0)
    made = sorted(p for p in src.iterdir() if p.is_dir())
    out = tmp_path_factory.mktemp("cohort")
    for i in range(N_CASES):
        shutil.copytree(made[i % len(made)], out / f"case{i:02d}")
    return out


def _cli(url: str, key: str, cohort: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUTOPAINT_API_KEY": key, "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "services.cli", "cohort", "submit", str(cohort), "--concurrency", "4",
           "--out", str(out), "--url", url, "--suv-already"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _state(out: Path) -> dict:
    path = out / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"cases": {}}


def test_cohort_of_20_with_2_workers_resumes(request: pytest.FixtureRequest, tmp_path: Path,
                                             cohort_dir: Path) -> None:
    assert len(discover_cases(cohort_dir)) == N_CASES
    settings = make_settings("embedded", tmp_path, request)
    service = EmbeddedService(settings, port=free_port(), workers=2, log_dir=tmp_path / "logs",
                              worker_env={**FAKE_ENV, "AUTOPAINT_TEST_SLOW_S": "0.4"})
    out, log = tmp_path / "results", tmp_path / "cli.log"
    with service.running():
        key = api_key(settings)
        client = Client(service.url, key)
        client.wait_ready()
        first = _cli(service.url, key, cohort_dir, out, log)
        try:
            # let some cases finish and others run, then kill the CLI mid-cohort
            deadline = time.monotonic() + 120
            running_seen = False
            while sum(c.get("downloaded", False) for c in _state(out)["cases"].values()) < 5:
                assert first.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                cohort_id = _state(out).get("cohort_id")
                if cohort_id:  # per-case progress is visible on the server while the CLI runs
                    cases = client.cohort(cohort_id)["cases"]
                    running_seen |= any(c["state"] == "running" and c["stage"] for c in cases)
                time.sleep(0.3)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert running_seen
        before = _state(out)
        done_before = {n for n, c in before["cases"].items() if c.get("downloaded")}
        assert 5 <= len(done_before) < N_CASES

        second = _cli(service.url, key, cohort_dir, out, log)
        assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
        client.close()

    after = _state(out)
    assert all(c["state"] == "succeeded" and c["downloaded"] for c in after["cases"].values())
    assert len(after["cases"]) == N_CASES
    # no case was submitted twice: one job row per case, same job ids for the finished ones
    assert all(c["submissions"] == 1 for c in after["cases"].values())
    assert all(after["cases"][n]["job_id"] == before["cases"][n]["job_id"] for n in done_before)
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as s:
        jobs = list(s.query(Job))
    engine.dispose()
    assert len(jobs) == N_CASES
    assert {j.case_name for j in jobs} == {f"case{i:02d}" for i in range(N_CASES)}
    assert len({j.cohort_id for j in jobs}) == 1
    assert {j.attempts for j in jobs} == {1}
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_CASES and all(r["state"] == "succeeded" for r in rows)
    assert all((out / r["case"] / "mask.nii.gz").is_file() for r in rows)
    text = log.read_text()
    assert f"{N_CASES - len(done_before)} succeeded, 0 failed, {len(done_before)} already done" in text
    worker_logs = [p.read_text() for p in sorted((tmp_path / "logs").glob("worker-*.log"))]
    assert len(worker_logs) == 2 and all("'succeeded'" in w for w in worker_logs)
