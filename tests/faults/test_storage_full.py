"""(i) Storage full, on real size-capped file systems: ``autopaint serve`` (SQLite, one worker) whose
storage folder (``AUTOPAINT_STORAGE_DIR``) is an 8 MiB ``tmpfs`` and whose upload spool
(``<state>/uploads``) is a 1 MiB ``tmpfs`` (mounted by the test, unmounted in teardown; skipped
with the reason where mounting is not permitted). The in-process version with a fake ``OSError`` is
``tests/services/test_storage_faults.py``; here the kernel says ENOSPC.

- storage full at upload: 507 ``storage_full`` (JSON, ``Retry-After``), ``/readyz`` 503 with
  ``storage: false``; no job row, no input object, no upload temp folder; once space is back,
  ``/readyz`` is ready again and the same upload is accepted and runs;
- upload spool full (an upload bigger than the spool): 507 ``storage_full``, nothing left;
- storage full when the worker stores the results: the job FAILS once with ``storage_full`` (one
  attempt, the pipeline ran once: not re-run three times), no result object left in storage, no
  artifact row; once space is back a new job succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.faults.harness import Serve, Tmpfs
from tests.faults.probes import all_jobs, artifacts, inputs, wait_for, wait_running, wait_terminal
from tests.imaging.badfiles import ct_array, nifti_bytes

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


class Rig:
    def __init__(self, serve: Serve, storage: Tmpfs, spool: Tmpfs, case: Path) -> None:
        self.serve, self.storage, self.spool, self.case = serve, storage, spool, case

    def post(self, ct: bytes | None = None) -> httpx.Response:
        files = {"ct": ("ct.nii.gz", ct if ct is not None else (self.case / "ct.nii.gz").read_bytes()),
                 "pet": ("pet.nii.gz", (self.case / "pet.nii.gz").read_bytes())}
        return httpx.post(f"{self.serve.url}/v1/jobs", files=files, data={"params": '{"suv_already": true}'},
                          headers={"Authorization": f"Bearer {self.serve.key}"}, timeout=60)

    def leftovers(self) -> list[str]:
        """Input / result objects and upload temp folders not belonging to a job row."""
        jobs = {j.id for j in all_jobs(self.serve.state)}
        objs = [str(p) for p in self.storage.files() if not (p.parts[0] == "jobs" and p.parts[1] in jobs)]
        return objs + [str(p) for p in (self.serve.state / "uploads").iterdir() if p.name != Tmpfs.FILLER]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("storage-full")
    reason = Tmpfs.unavailable(tmp)
    if reason:
        pytest.skip(reason)
    storage = Tmpfs(tmp / "storage", 8 * 1024)
    spool = Tmpfs(tmp / "state" / "uploads", 1024)
    serve = Serve(tmp / "state", workers=1, slow_s=4.0, env={"AUTOPAINT_STORAGE_DIR": str(storage.path)})
    case = tmp / "case"
    inputs(case)
    try:
        storage.mount()
        spool.mount()
        serve.start()
        yield Rig(serve, storage, spool, case)
    finally:
        serve.stop()
        spool.umount()
        storage.umount()


def test_i1_storage_full_at_upload_507(rig: Rig) -> None:
    serve = rig.serve
    n_jobs = len(all_jobs(serve.state))
    filled = rig.storage.fill()
    wait_for(lambda: serve.readyz()[0] == 503, 20, "readyz to see the full storage")
    assert serve.readyz()[1].get("storage") is False
    r = rig.post()
    print(f"\n(i1) storage full ({filled} filler bytes) at upload: {r.status_code} {r.json()}")
    assert r.status_code == 507 and r.json()["code"] == "storage_full", r.text
    assert r.headers.get("retry-after") and r.headers["content-type"].startswith("application/")
    assert len(all_jobs(serve.state)) == n_jobs and rig.leftovers() == []
    rig.storage.free()
    t0 = time.monotonic()
    wait_for(lambda: serve.readyz()[0] == 200, 30, "readyz after the space came back")
    r = rig.post()
    assert r.status_code == 202, r.text
    job = wait_terminal(serve, r.json()["id"], timeout=120)
    print(f"(i1) space back: readyz 200 and the upload accepted after {time.monotonic() - t0:.1f} s "
          f"(job {job.state.value})")
    assert job.state == "succeeded"


def test_i2_upload_spool_full_507(rig: Rig) -> None:
    serve = rig.serve
    n_jobs = len(all_jobs(serve.state))
    big = nifti_bytes(ct_array((128, 128, 24)))  # 1.5 MiB uncompressed: more than the 1 MiB spool
    assert len(big) > 1024 * 1024
    r = rig.post(big)
    print(f"\n(i2) upload spool full: {r.status_code} {r.json()}")
    assert r.status_code == 507 and r.json()["code"] == "storage_full", r.text
    assert len(all_jobs(serve.state)) == n_jobs and rig.leftovers() == []
    assert rig.spool.files() == []
    r = rig.post()  # a small upload still fits: nothing of the failed one holds the space
    assert r.status_code == 202, r.text
    assert wait_terminal(serve, r.json()["id"], timeout=120).state == "succeeded"


def test_i3_storage_full_at_result_writing_fails_once(rig: Rig) -> None:
    serve = rig.serve
    job_id = serve.submit(rig.case)
    wait_running(serve, job_id, circles=2)
    rig.storage.fill()
    t_fault = time.monotonic()
    job = wait_terminal(serve, job_id, timeout=120)
    failed_after = time.monotonic() - t_fault
    time.sleep(3.0)  # nothing re-runs it
    job = serve.job(job_id)
    results = [p for p in rig.storage.files() if p.parts[:3] == ("jobs", job_id, "results")]
    print(f"\n(i3) storage full at result writing: {job.state.value} {job.error_code} after {failed_after:.1f} s, "
          f"attempts {job.attempts}, pipeline runs {serve.runs(job_id)}, result objects {results}, "
          f"artifact rows {artifacts(serve, job_id)}")
    assert job.state == "failed" and job.error_code == "storage_full", (job.error_code, job.error_message)
    assert job.attempts == 1 and serve.runs(job_id) == ["start", "end"]
    assert results == [] and artifacts(serve, job_id) == []
    rig.storage.free()
    t0 = time.monotonic()
    wait_for(lambda: serve.readyz()[0] == 200, 30, "readyz after the space came back")
    after = wait_terminal(serve, serve.submit(rig.case), timeout=120)
    print(f"(i3) space back: a new job {after.state.value} {time.monotonic() - t0:.1f} s later")
    assert after.state == "succeeded"
    assert not [j.id for j in all_jobs(serve.state) if not j.state.terminal]
    assert np.isfinite(serve.peak_rss_mb())
