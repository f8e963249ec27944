"""Hostile NIfTI headers through ``POST /v1/jobs`` of a live API (issue #15): ``autopaint serve`` as a
subprocess (SQLite, one worker running the TEST-ONLY fake pipeline), the hypothesis specs of
``tests.imaging.test_fuzz_headers`` as the CT, the PET or the label of an otherwise valid upload.

Per request: never a 5xx; every 4xx is our JSON error body (``code``, ``detail``); a file the
library refuses is refused (never 202); a 202 only for a file the library accepts. Throughout: the
API process's peak RSS (``VmHWM`` of the serve process: API + supervisor + reconciler) stays under
300 MB. At the end: no upload temp folder left, one job row and one stored input folder per 202, and
each stored (re-written) input validates again with the same shape. Derandomized, bounded deadline.
The crafted ``HEADER_VARIANTS`` go through the same route first, each answered 422 with its code.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopaint.imaging.validate import inspect_nifti
from tests.faults.harness import Serve
from tests.imaging.badfiles import HEADER_VARIANTS, hostile_nifti
from tests.imaging.test_fuzz_headers import hostile_specs

EXAMPLES = int(os.environ.get("AUTOPAINT_FUZZ_EXAMPLES", "300"))  # more: dig deeper locally
RSS_LIMIT_MB = 300.0
ROLE_RULES = {"ct": "ct", "pet": "pet", "label": "mask"}
PARAMS = json.dumps({"suv_already": True})

pytestmark = [pytest.mark.timeout(300)]


class Live:
    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.http = httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {serve.key}"},
                                 timeout=60)
        self.ct, _ = hostile_nifti({"gzip": True})  # the valid base: overlapping partners
        self.pet, _ = hostile_nifti({"gzip": True, "values": "ones"})
        self.statuses: Counter[str] = Counter()
        self.accepted: list[str] = []
        self.worst_rss = 0.0
        self.examples = 0

    def post(self, role: str, blob: bytes, gz: bool) -> httpx.Response:
        files = {"ct": ("ct.nii.gz", self.ct), "pet": ("pet.nii.gz", self.pet)}
        files[role] = (f"{role}.nii{'.gz' if gz else ''}", blob)
        r = self.http.post("/v1/jobs", files=files, data={"params": PARAMS})
        self.worst_rss = max(self.worst_rss, self.serve.peak_rss_mb())
        return r


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    serve = Serve(tmp / "state", workers=1, slow_s=0.1,
                  env={"AUTOPAINT_MAX_ACTIVE_JOBS_PER_KEY": "100000"})
    try:
        serve.start()
        lv = Live(serve)
        yield lv
        lv.http.close()
    finally:
        serve.stop()


def _check(live: Live, role: str, blob: bytes, gz: bool, tmp: Path, spec: object = None) -> tuple[int, str]:
    r = live.post(role, blob, gz)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    code = "accepted"
    if r.status_code != 202:
        assert r.headers.get("content-type", "").startswith("application/"), r.headers
        body = r.json()
        assert isinstance(body.get("code"), str) and body.get("detail"), body
        assert "Traceback" not in r.text
        code = body["code"]
    path = tmp / f"{role}.nii{'.gz' if gz else ''}"
    path.write_bytes(blob)
    lib = inspect_nifti(path, ROLE_RULES[role])  # type: ignore[arg-type]
    if not lib.ok:  # the library refuses it: so does the API (the same code, or a streamed-check one)
        assert r.status_code == 422, (lib.code, r.status_code, r.text[:300])
    # the net under the validation (io.load_nifti): never needed; if it is, say which header and why
    assert code != "unreadable_nifti", (spec, r.text[:400], lib)
    if r.status_code == 202:
        assert lib.ok
        live.accepted.append(r.json()["id"])
    live.statuses[f"{r.status_code} {code}"] += 1
    live.examples += 1
    return r.status_code, code


def test_crafted_variants_rejected_with_their_code(live: Live, tmp_path: Path) -> None:
    for name, code, spec in HEADER_VARIANTS:
        blob, gz = hostile_nifti(spec)
        status, got = _check(live, "ct", blob, gz, tmp_path)
        assert (status, got) == (422, code), name


@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=timedelta(seconds=20),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(spec=hostile_specs(), role=st.sampled_from(["ct", "ct", "pet", "label"]))
def test_hostile_uploads_never_5xx(live: Live, tmp_path: Path, spec: dict[str, Any], role: str) -> None:
    blob, gz = hostile_nifti(spec)
    _check(live, role, blob, gz, tmp_path, spec)


def test_fuzz_leaves_nothing_and_bounded_rss(live: Live) -> None:
    """After the fuzz (file order): the counts, the leftovers and the worst RSS."""
    from autopaint.imaging.validate import validate_nifti
    from tests.faults.probes import all_jobs

    if live.examples < EXAMPLES:
        pytest.skip("the fuzz did not run in this session")
    serve = live.serve
    rss = max(live.worst_rss, serve.peak_rss_mb())
    print(f"\nPOST /v1/jobs fuzz: {live.examples} requests, worst API RSS {rss:.0f} MiB; "
          f"{dict(sorted(live.statuses.items()))}")
    assert rss < RSS_LIMIT_MB
    assert not [p for p in (serve.state / "uploads").iterdir()], "upload temp folders left"
    assert sorted(j.id for j in all_jobs(serve.state)) == sorted(live.accepted)
    stored = serve.state / "storage" / "jobs"
    assert sorted(p.name for p in stored.iterdir()) == sorted(live.accepted)
    for job_id in live.accepted:
        for f in (stored / job_id / "inputs").glob("*.nii.gz"):
            role = f.name.split(".", 1)[0]
            validate_nifti(f, ROLE_RULES.get(role, "mask"))  # type: ignore[arg-type]
    assert len(live.accepted) >= 10 and sum(n for k, n in live.statuses.items() if k.startswith("422")) >= 100
