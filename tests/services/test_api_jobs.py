"""API promises on SQLite + a fake publisher: 202-durable, auth, ownership, limits, validation,
PHI stripping, idempotency, cancel, delete, listing, status, results, re-threshold."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sqlalchemy import func, select

from autopaint.contracts import JobState
from autopaint.db import Job, leases
from autopaint.db import jobs as repo
from autopaint.imaging.io import write_volume
from autopaint.imaging.volume import Volume
from autopaint.settings import Settings
from autopaint.storage import store_results
from tests.imaging.badfiles import ROLE_FOR_CODE, build_bad_files, build_shifted_pair
from tests.services.apikit import PHI, Api, chunked, write_pair


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(tmp_path / "in")


def _n_jobs(api: Api) -> int:
    with api.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def finish_with_results(api: Api, job_id: str, tmp: Path, threshold: float = 0.5) -> np.ndarray:
    """Play the worker: lease, store a residual/mask/lesions, finish. Returns the residual."""
    with api.sessions() as s:
        job = leases.lease_job(s, job_id, "test-worker", 60)
        assert job is not None
    ct = nib.load(str(api.settings.storage_dir / job.inputs["ct"]["key"]))
    residual = np.zeros(ct.shape, np.float32)
    residual[2:6, 2:6, 2:5] = 0.8
    residual[12:14, 12:14, 6:8] = 0.3
    for name, data in (("residual.nii.gz", residual), ("mask.nii.gz", (residual > threshold).astype(np.uint8))):
        write_volume(Volume(data, ct.affine), tmp / name, dtype=data.dtype)
    (tmp / "lesions.csv").write_text("id,voxels,volume_ml\n1,48,0.576\n")
    arts = store_results(api.ctx.storage, job_id, tmp, ("residual.nii.gz", "mask.nii.gz", "lesions.csv"))
    manifest = {"threshold": {"value": threshold, "source": "model_card"}, "model": {"sha256": "c" * 64}}
    with api.sessions() as s:
        assert repo.finish_job(s, job_id, manifest, arts)
    return residual


def test_submit_is_durable_and_strips_phi(api: Api, pair: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r = api.submit({"ct": pair[0], "pet": pair[1]}, {"preset": "thorax", "mode": "fast"}, case_name="case-7")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and body["queue_position"] == 1 and body["case_name"] == "case-7"
    job = api.job(body["id"])
    assert api.publisher.published == [(job.id, api.settings.queue)]
    assert api.publisher.committed_when_published == [True]  # row committed before publishing
    for role in ("ct", "pet"):
        info = job.inputs[role]
        assert info["key"] == f"jobs/{job.id}/inputs/{role}.nii.gz"  # never the client filename
        stored = api.settings.storage_dir / info["key"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == info["sha256"] == body["inputs"][role]["sha256"]
        img = nib.load(str(stored))
        assert img.header["descrip"].tobytes().strip(b"\x00") == b"" and not img.header.extensions
        assert img.header["aux_file"].tobytes().strip(b"\x00") == b""
        orig = nib.load(str(pair[0] if role == "ct" else pair[1]))
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(orig.dataobj))
        np.testing.assert_allclose(img.affine, orig.affine, atol=1e-4)
    assert PHI.encode() not in b"".join(p.read_bytes() for p in api.stored_files())
    assert not any("upload" in p.name for p in api.stored_files())
    assert "-upload.nii.gz" not in caplog.text  # client filenames are never logged
    assert not list((api.settings.state_dir / "uploads").iterdir())  # temp files removed


def test_key_checked_before_body(api: Api, pair: tuple[Path, Path]) -> None:
    pulled = [0]
    body = b"x" * (1024 * 1024)
    r = api.client.post("/v1/jobs", content=chunked(body, 16 * 1024, pulled),
                        headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert pulled[0] <= 2  # the 64-chunk body was not read
    bad = api.client.get("/v1/jobs", headers={"Authorization": "Bearer ap_nope"})
    assert bad.status_code == 401
    assert _n_jobs(api) == 0


def test_other_keys_job_is_404(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    jid = api.submit({"ct": pair[0], "pet": pair[1]}).json()["id"]
    c = api.client
    for method, url in (("get", f"/v1/jobs/{jid}"), ("get", f"/v1/jobs/{jid}/results"),
                        ("get", f"/v1/jobs/{jid}/results/mask.nii.gz"), ("post", f"/v1/jobs/{jid}/cancel"),
                        ("delete", f"/v1/jobs/{jid}")):
        r = c.request(method, url, headers=api.h("b"))
        assert r.status_code == 404 and r.json()["code"] == "not_found", (method, url)
    assert c.post(f"/v1/jobs/{jid}/threshold", json={"threshold": 0.2}, headers=api.h("b")).status_code == 404
    assert c.get("/v1/jobs", headers=api.h("b")).json()["total"] == 0
    assert api.job(jid).state == JobState.QUEUED  # b's cancel/delete did nothing
    cid = c.post("/v1/cohorts", json={"name": "c"}, headers=api.h("a")).json()["id"]
    assert c.get(f"/v1/cohorts/{cid}", headers=api.h("b")).status_code == 404
    r = api.submit({"ct": pair[0], "pet": pair[1]}, who="b", cohort_id=cid)  # b cannot add to a's cohort
    assert r.status_code == 404 and _n_jobs(api) == 1


def test_idempotency_key_returns_same_job(api: Api, pair: tuple[Path, Path]) -> None:
    first = api.submit({"ct": pair[0], "pet": pair[1]}, headers={"Idempotency-Key": "abc-1"})
    again = api.submit({"ct": pair[0], "pet": pair[1]}, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = api.submit({"ct": pair[0], "pet": pair[1]}, who="b", headers={"Idempotency-Key": "abc-1"})
    assert other.json()["id"] != first.json()["id"]  # keys are per owner
    assert _n_jobs(api) == 2 and len(api.publisher.published) == 2


def test_oversize_upload_413_leaves_nothing(api: Api, tmp_path: Path) -> None:
    big = tmp_path / "big.nii.gz"
    big.write_bytes(np.random.default_rng(0).bytes(api.settings.max_upload_bytes + 1))
    r = api.submit({"ct": big})  # Content-Length known: rejected before reading
    assert r.status_code == 413 and r.json()["code"] == "upload_too_large"
    # no Content-Length (chunked): counted on the stream, stops as soon as the cap is passed
    boundary = "b0undary"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"ct\"; filename=\"x.nii.gz\"\r\n\r\n".encode()
               + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    pulled = [0]
    r = api.client.post("/v1/jobs", content=chunked(payload, 64 * 1024, pulled),
                        headers=api.h(**{"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    assert r.status_code == 413
    assert pulled[0] <= api.settings.max_upload_bytes // (64 * 1024) + 2
    assert _n_jobs(api) == 0 and api.stored_files() == []
    assert not list((api.settings.state_dir / "uploads").iterdir())


def _bad_cases(tmp: Path) -> list[tuple[str, str, Path]]:
    files = build_bad_files(tmp)
    role = {"ct": "ct", "pet": "pet", "mask": "label"}
    return [(code, role[ROLE_FOR_CODE.get(code, "ct")], p) for code, p in files.items()]


def test_each_bad_nifti_class_is_422_with_its_code(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    cases = _bad_cases(tmp_path / "bad")
    assert len(cases) >= 15
    for code, role, path in cases:
        files = {"ct": pair[0], "pet": pair[1]}
        files[role] = path
        r = api.submit(files)
        assert r.status_code == 422, (code, r.text)
        assert r.json()["code"] == code, (code, r.json())
    ct, pet = build_shifted_pair(tmp_path / "shift", shift_mm=1000.0)
    r = api.submit({"ct": ct, "pet": pet})
    assert r.status_code == 422 and r.json()["code"] == "pet_ct_no_overlap"
    assert _n_jobs(api) == 0 and api.stored_files() == [] and api.publisher.published == []


@pytest.mark.parametrize(
    ("params", "fields", "code"),
    [
        ({"preset": "lungs"}, {}, "invalid_params"),
        ({"threshold": 2.0}, {}, "invalid_params"),
        ({"model": "../../etc/passwd"}, {}, "unknown_model"),
        ({"modality": "petct"}, {"drop": "pet"}, "missing_input"),
        ({"suv_already": False}, {}, "missing_suv_info"),
        ({}, {"extra_field": "1"}, "unknown_field"),
    ],
)
def test_bad_requests_422(api: Api, pair: tuple[Path, Path], params: dict, fields: dict, code: str) -> None:
    files = {"ct": pair[0], "pet": pair[1]}
    if fields.pop("drop", None):
        files.pop("pet")
    r = api.submit(files, params, **fields)
    assert r.status_code == 422 and r.json()["code"] == code, r.text
    assert _n_jobs(api) == 0


def test_broker_down_503_and_no_queued_row(sqlite_settings: Settings, pair: tuple[Path, Path]) -> None:
    api = Api(sqlite_settings)
    api.publisher.fail = True
    try:
        r = api.submit({"ct": pair[0], "pet": pair[1]})
        assert r.status_code == 503 and r.json()["code"] == "broker_unavailable"
        with api.sessions() as s:
            states = s.scalars(select(Job.state)).all()
        assert states == [JobState.FAILED.value]
        assert api.client.get("/readyz").status_code == 503
    finally:
        api.close()


def test_cancel_delete_list_status(api: Api, pair: tuple[Path, Path]) -> None:
    ids = [api.submit({"ct": pair[0], "pet": pair[1]}).json()["id"] for _ in range(3)]
    st = api.client.get(f"/v1/jobs/{ids[2]}", headers=api.h()).json()
    assert st["queue_position"] == 3 and st["progress"]["stage"] == "queued"
    r = api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=api.h())
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    with api.sessions() as s:
        assert leases.lease_job(s, ids[0], "w", 60) is None  # a cancelled job never starts
        assert leases.lease_job(s, ids[1], "w", 60) is not None
        repo.set_progress(s, ids[1], "searching", 3, 10, "slices", circles_done=40, circles_total=200)
    run = api.client.get(f"/v1/jobs/{ids[1]}", headers=api.h()).json()
    assert run["progress"] == {"stage": "searching", "done": 3, "total": 10, "unit": "slices",
                               "circles_done": 40, "circles_total": 200, "fraction": 0.3}
    assert api.client.get(f"/v1/jobs/{ids[2]}", headers=api.h()).json()["queue_position"] == 1
    page = api.client.get("/v1/jobs?limit=2", headers=api.h()).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next_offset"] == 2
    page2 = api.client.get("/v1/jobs?limit=2&offset=2", headers=api.h()).json()
    assert len(page2["items"]) == 1 and page2["next_offset"] is None
    assert {i["id"] for i in page["items"] + page2["items"]} == set(ids)
    q = api.client.get("/v1/jobs?state=queued&state=running", headers=api.h()).json()
    assert {i["id"] for i in q["items"]} == {ids[1], ids[2]}
    assert api.client.delete(f"/v1/jobs/{ids[1]}", headers=api.h()).status_code == 409  # running
    assert api.job(ids[1]).cancel_requested
    assert api.client.delete(f"/v1/jobs/{ids[2]}", headers=api.h()).status_code == 204
    assert api.client.get(f"/v1/jobs/{ids[2]}", headers=api.h()).status_code == 404
    assert not (api.settings.storage_dir / "jobs" / ids[2]).exists()


def test_eta_from_recent_durations(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    done, queued = (api.submit({"ct": pair[0], "pet": pair[1]}).json()["id"] for _ in range(2))
    finish_with_results(api, done, tmp_path)
    with api.sessions() as s:
        job = s.get(Job, done)
        assert job is not None and job.finished_at is not None
        job.started_at = job.finished_at.replace(microsecond=0) - __import__("datetime").timedelta(seconds=40)
        s.commit()
    st = api.client.get(f"/v1/jobs/{queued}", headers=api.h()).json()
    assert st["queue_position"] == 1 and st["eta_s"] == pytest.approx(40.0, abs=1.5)


def test_results_download_and_rethreshold(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    jid = api.submit({"ct": pair[0], "pet": pair[1]}).json()["id"]
    residual = finish_with_results(api, jid, tmp_path)
    res = api.client.get(f"/v1/jobs/{jid}/results", headers=api.h()).json()
    assert {a["name"] for a in res["artifacts"]} == {"residual.nii.gz", "mask.nii.gz", "lesions.csv"}
    mask = api.client.get(f"/v1/jobs/{jid}/results/mask.nii.gz", headers=api.h())
    assert mask.status_code == 200 and hashlib.sha256(mask.content).hexdigest() == mask.headers["x-content-sha256"]
    assert api.client.get(f"/v1/jobs/{jid}/results/report.json", headers=api.h()).status_code == 404
    r = api.client.post(f"/v1/jobs/{jid}/threshold", json={"threshold": 0.2}, headers=api.h())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["previous_threshold"] == 0.5 and len(out["lesions"]) == 2  # the 0.3 blob now counts
    assert out["lesions"][0]["suv_max"] is not None  # SUV statistics from the stored PET
    new = api.client.get(f"/v1/jobs/{jid}/results/mask.nii.gz", headers=api.h())
    (tmp_path / "new.nii.gz").write_bytes(new.content)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "new.nii.gz")).dataobj), residual > 0.2)
    assert api.job(jid).manifest["threshold"]["value"] == 0.2
    queued = api.submit({"ct": pair[0], "pet": pair[1]}).json()["id"]
    assert api.client.post(f"/v1/jobs/{queued}/threshold", json={"threshold": 0.2}, headers=api.h()).status_code == 409


def test_cohort_progress_and_csv(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    cid = api.client.post("/v1/cohorts", json={"name": "sarcoma"}, headers=api.h()).json()["id"]
    a, b = (api.submit({"ct": pair[0], "pet": pair[1]}, cohort_id=cid, case_name=f"c{i}").json()["id"] for i in range(2))
    finish_with_results(api, a, tmp_path)
    c = api.client.get(f"/v1/cohorts/{cid}", headers=api.h()).json()
    assert c["counts"] == {"succeeded": 1, "queued": 1} and c["progress"] == 0.5
    assert [x["case_name"] for x in c["cases"]] == ["c0", "c1"]
    csv = api.client.get(f"/v1/cohorts/{cid}/lesions.csv", headers=api.h()).text.splitlines()
    assert csv[0] == "job_id,case_name,id,voxels,volume_ml" and csv[1].startswith(f"{a},c0,1,48")
    metrics = api.client.get(f"/v1/cohorts/{cid}/metrics.csv", headers=api.h()).text.splitlines()
    assert len(metrics) == 3 and metrics[1].startswith(f"{a},c0,succeeded,,1,0.576")
    assert api.client.get(f"/v1/jobs?cohort_id={cid}", headers=api.h()).json()["total"] == 2
    assert b in {x["job_id"] for x in c["cases"]}


def test_models_metrics_openapi(api: Api, pair: tuple[Path, Path], tmp_path: Path) -> None:
    mdir = tmp_path / "models" / "thorax-petct-gconvlap-128"
    mdir.mkdir(parents=True)
    (mdir / "card.json").write_text(json.dumps({"name": "thorax-petct-gconvlap-128", "modality": "petct", "size": 128}))
    api.settings.models_dir = tmp_path / "models"
    models = api.client.get("/v1/models", headers=api.h()).json()
    assert models[0]["name"] == "thorax-petct-gconvlap-128" and models[0]["default"] and not models[0]["has_weights"]
    r = api.submit({"ct": pair[0], "pet": pair[1]}, {"model": "thorax-petct-gconvlap-128"})
    assert r.status_code == 422 and r.json()["code"] == "model_unavailable"  # listed, but no weights
    (mdir / "model.pt").write_bytes(b"weights")
    r = api.submit({"ct": pair[0], "pet": pair[1]}, {"model": "thorax-petct-gconvlap-128"})
    assert r.status_code == 202
    text = api.client.get("/metrics").text
    assert 'autopaint_jobs{state="queued"} 1.0' in text and "autopaint_queue_depth 1.0" in text
    sent = [ln for ln in text.splitlines() if ln.startswith("autopaint_upload_bytes_total")]
    assert sent and float(sent[0].split()[-1]) > pair[0].stat().st_size
    spec = api.client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results", "/v1/jobs/{job_id}/results/{name}",
                 "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/threshold", "/v1/cohorts", "/v1/cohorts/{cohort_id}",
                 "/v1/cohorts/{cohort_id}/lesions.csv", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    post = spec["paths"]["/v1/jobs"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"] and {"202", "413", "422", "503"} <= set(post["responses"])
    assert "examples" in spec["components"]["schemas"]["JobOut"]


def test_api_process_never_imports_torch(sqlite_settings: Settings, tmp_path: Path) -> None:
    """Build the app, submit, re-threshold and scrape in a fresh interpreter: torch stays out."""
    script = f"""
import sys
from tests.services.apikit import Api, write_pair
from autopaint.settings import Settings
from pathlib import Path
api = Api(Settings(state_dir=Path({str(sqlite_settings.state_dir)!r}), database_url={sqlite_settings.database_url!r},
                   broker_url="memory://", max_voxels=4_000_000))
ct, pet = write_pair(Path({str(tmp_path)!r}))
assert api.submit({{"ct": ct, "pet": pet}}).status_code == 202
api.client.get("/metrics"); api.client.get("/v1/models", headers=api.h())
import services.api.routes_threshold as rt, autopaint.segment.outputs
import autopaint.imaging.dicom_export, autopaint.imaging.dicom_zip  # DICOM in (ingest) and out (re-threshold)
assert "torch" not in sys.modules, "torch imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_contract_details_zone_allow_bounds_and_finished_progress(api: Api, pair: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """UTC timestamps carry their zone; a 405 names the allowed methods; an offset too large for the
    database is a 422, not a 500; a finished job reports 100 %."""
    jid = api.submit({"ct": pair[0], "pet": pair[1]}).json()["id"]
    finish_with_results(api, jid, tmp_path)
    body = api.client.get(f"/v1/jobs/{jid}", headers=api.h()).json()
    assert body["created_at"].endswith(("Z", "+00:00")) and body["finished_at"].endswith(("Z", "+00:00"))
    assert body["progress"]["fraction"] == 1.0 and body["progress"]["done"] == body["progress"]["total"]
    r = api.client.put(f"/v1/jobs/{jid}", headers=api.h())
    assert r.status_code == 405 and "GET" in r.headers.get("allow", "") and r.json()["code"] == "method_not_allowed"
    r = api.client.get("/v1/jobs", params={"offset": 200334157366262988800}, headers=api.h())
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
