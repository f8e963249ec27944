"""DICOM in and out through the service, and PET units that cannot silently be wrong (issue #13).

Real data (IBSI soft-tissue sarcoma, ``../shared/data``): STS_001 as DICOM series uploaded as zips
(told by content: the parts are even named ``*.nii.gz``), STS_001/STS_003 as NIfTI. In process
(SQLite, fake publisher): what is accepted and stored, each refusal with its code and nothing left
behind, the re-threshold rewriting the DICOM SEG / RTSTRUCT. End to end (embedded service, a real
worker, the ``ibsi-petct-gconvlap-128`` model): zips with no SUV field -> SEG + RTSTRUCT results,
the PET's units from its headers.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from autopaint.client import Client, zip_dicom_folder
from autopaint.db import Artifact, Job, leases
from autopaint.db import jobs as repo
from autopaint.imaging.dicom_export import read_seg_mask
from autopaint.imaging.io import read_dicom_series, read_volume, write_volume
from autopaint.imaging.suv import pet_in_suv
from autopaint.imaging.volume import Volume
from autopaint.paths import data_dir, models_dir
from autopaint.segment.outputs import write_dicom_results
from autopaint.storage import store_results
from services.embedded import EmbeddedService
from tests.pet_units import DELAY, DOSE, WEIGHT, write_bqml_pet
from tests.services.apikit import Api
from tests.services.workerkit import api_key, free_port, make_settings

DICOM = data_dir() / "ibsi-sts-dicom"
NIFTI = data_dir() / "ibsi-sts"
CT_DIR, PET_DIR = DICOM / "STS_001" / "CT" / "image", DICOM / "STS_001" / "PET" / "image"
MODEL = "ibsi-petct-gconvlap-128"
pytestmark = pytest.mark.skipif(not CT_DIR.is_dir() or not (NIFTI / "STS_003").is_dir(),
                                reason="IBSI STS data not available")




@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The STS_001 CT and PET series as upload zips, plus crafted bad ones."""
    tmp = tmp_path_factory.mktemp("zips")
    out = {"ct": zip_dicom_folder(CT_DIR, tmp / "ct.zip"), "pet": zip_dicom_folder(PET_DIR, tmp / "pet.zip")}
    with zipfile.ZipFile(out["ct"]) as src, zipfile.ZipFile(tmp / "ct-extra.zip", "w") as dst:
        for info in src.infolist():  # the series in a sub-folder, with a non-DICOM file beside it
            dst.writestr(f"study/{info.filename}", src.read(info))
        dst.writestr("README.txt", "not DICOM")
    out["ct_extra"] = tmp / "ct-extra.zip"
    with zipfile.ZipFile(tmp / "both.zip", "w") as zf:  # two series in one zip
        for role, folder in (("ct", CT_DIR), ("pet", PET_DIR)):
            for f in sorted(folder.iterdir()):
                zf.write(f, f"{role}/{f.name}")
    out["both"] = tmp / "both.zip"
    with zipfile.ZipFile(tmp / "traversal.zip", "w") as zf:
        zf.writestr("ok/00001.dcm", (next(iter(sorted(CT_DIR.iterdir())))).read_bytes())
        zf.writestr("../../escape.dcm", b"x" * 100)
    out["traversal"] = tmp / "traversal.zip"
    with zipfile.ZipFile(tmp / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slice.dcm", b"\0" * (16 << 20))  # 16 MiB of zeros deflate ~1000x
    out["bomb"] = tmp / "bomb.zip"
    return out


@pytest.fixture(scope="module")
def bqml_pet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """STS_003's SUV PET as Bq/mL (a realistic factor), as tests/segment/test_cli_dicom_units.py."""
    return write_bqml_pet(NIFTI / "STS_003" / "PET_image.nii.gz", tmp_path_factory.mktemp("bqml") / "pet_bqml.nii.gz")


def _n_jobs(api: Api) -> int:
    with api.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _refused(api: Api, files: dict[str, Path], code: str, params: dict | None = None, **kw: bool) -> str:
    r = api.submit(files, params, **kw)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code, r.json()
    return str(r.json()["detail"])


def test_dicom_zips_accepted_and_stored_as_the_series(api: Api, zips: dict[str, Path]) -> None:
    r = api.submit({"ct": zips["ct_extra"], "pet": zips["pet"]}, suv=False)  # no SUV field at all
    assert r.status_code == 202, r.text
    job = api.job(r.json()["id"])
    ct, pet = job.inputs["ct"], job.inputs["pet"]
    assert ct["format"] == pet["format"] == "dicom" and ct["modality"] == "CT" and pet["modality"] == "PT"
    assert ct["key"] == f"jobs/{job.id}/inputs/ct.dicom.zip"
    _, tags = read_dicom_series(CT_DIR)
    assert ct["series_instance_uid"] == tags["series_instance_uid"]
    stored = api.settings.storage_dir / ct["key"]  # type: ignore[operator]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == ct["sha256"]
    with zipfile.ZipFile(stored) as zf:  # exactly the series' files, in slice order, README dropped
        names = zf.namelist()
        assert names == [f"{i:05d}.dcm" for i in range(1, len(tags["files"]) + 1)]
        assert [zf.read(n) for n in names] == [Path(f).read_bytes() for f in tags["files"]]
    assert job.params["suv_already"] is None and job.params["check_units"] is True
    # the same series always stores the same bytes; a NIfTI input stays a re-written NIfTI
    again = api.job(api.submit({"ct": zips["ct"], "pet": zips["pet"]}, suv=False).json()["id"])
    assert again.inputs["ct"]["sha256"] == ct["sha256"]
    mixed = api.submit({"ct": zips["ct"], "pet": NIFTI / "STS_001" / "PET_image.nii.gz"})
    assert mixed.status_code == 202, mixed.text
    assert api.job(mixed.json()["id"]).inputs["pet"]["format"] == "nifti"
    assert len(api.publisher.published) == 3


def test_refusals_are_422_with_their_code_and_leave_nothing(api: Api, zips: dict[str, Path],
                                                            bqml_pet: Path) -> None:
    dicom = {"ct": zips["ct"], "pet": zips["pet"]}
    _refused(api, {**dicom, "ct": zips["traversal"]}, "bad_zip", suv=False)
    _refused(api, {**dicom, "pet": zips["bomb"]}, "zip_too_large", suv=False)
    detail = _refused(api, {**dicom, "ct": zips["both"]}, "multiple_series", suv=False)
    ct_uid = read_dicom_series(CT_DIR)[1]["series_instance_uid"]
    assert ct_uid in detail and "PT" in detail  # the message lists the series
    _refused(api, {**dicom, "pet": zips["ct"]}, "modality_mismatch", suv=False)
    _refused(api, {"ct": zips["ct"], "pet": NIFTI / "STS_001" / "PET_image.nii.gz"}, "missing_suv_info",
             suv=False)
    _refused(api, dicom, "series_not_found", {"ct_series_uid": "1.2.3"}, suv=False)
    _refused(api, {"ct": NIFTI / "STS_001" / "CT_image.nii.gz", "pet": zips["pet"]}, "invalid_params",
             {"ct_series_uid": ct_uid}, suv=False)  # a series UID for a NIfTI input
    ct3 = NIFTI / "STS_003" / "CT_image.nii.gz"
    _refused(api, {"ct": ct3, "pet": bqml_pet}, "missing_suv_info", suv=False)
    _refused(api, {"ct": ct3, "pet": bqml_pet}, "pet_units_implausible", {"suv_already": True})
    assert _n_jobs(api) == 0 and api.stored_files() == [] and api.publisher.published == []
    # the two-series zip with the CT picked; the Bq/mL PET with its conversion stated; the guard off
    assert api.submit({**dicom, "ct": zips["both"]}, {"ct_series_uid": ct_uid}, suv=False).status_code == 202
    bq = {"suv_already": False, "weight_kg": WEIGHT, "injected_dose_bq": DOSE, "delay_s": DELAY}
    assert api.submit({"ct": ct3, "pet": bqml_pet}, bq).status_code == 202
    r = api.submit({"ct": ct3, "pet": bqml_pet}, {"suv_already": True, "check_units": False})
    assert r.status_code == 202 and api.job(r.json()["id"]).params["check_units"] is False


def _finish_on_ct_series(api: Api, job_id: str, tmp: Path) -> np.ndarray:
    """Play the worker for a DICOM job: a residual on the CT series' grid, its mask at 0.5, the
    lesion tables, SEG and RTSTRUCT, the PET calibration in the manifest. Returns the residual."""
    ct, ct_tags = read_dicom_series(CT_DIR)
    pet, pet_tags = read_dicom_series(PET_DIR)
    residual = np.zeros(ct.shape, np.float32)
    residual[60:70, 60:70, 20:26] = 0.8
    residual[120:124, 120:124, 40:43] = 0.3
    mask = Volume((residual > 0.5).astype(np.uint8), ct.affine)
    write_volume(Volume(residual, ct.affine), tmp / "residual.nii.gz", dtype=np.float32)
    write_volume(mask, tmp / "mask.nii.gz", dtype=np.uint8)
    write_dicom_results(mask, ct_tags["files"], tmp)
    arts = store_results(api.ctx.storage, job_id, tmp, ("residual.nii.gz", "mask.nii.gz", "mask.seg.dcm",
                                                          "mask.rtstruct.dcm"))
    cal = pet_in_suv(pet, pet_tags).meta["suv_calibration"]
    with api.sessions() as s:
        assert leases.lease_job(s, job_id, "test-worker", 60) is not None
        assert repo.finish_job(s, job_id, {"threshold": {"value": 0.5, "source": "model_card"}, "pet_units": cal},
                               arts)
    return residual


def test_rethreshold_rewrites_the_dicom_seg_and_rtstruct(api: Api, zips: dict[str, Path], tmp_path: Path) -> None:
    jid = api.submit({"ct": zips["ct"], "pet": zips["pet"]}, suv=False).json()["id"]
    residual = _finish_on_ct_series(api, jid, tmp_path / "run")
    before = {a["name"]: a["sha256"] for a in api.client.get(f"/v1/jobs/{jid}/results", headers=api.h()).json()["artifacts"]}
    r = api.client.post(f"/v1/jobs/{jid}/threshold", json={"threshold": 0.2}, headers=api.h())
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["lesions"]) == 2 and out["lesions"][0]["suv_max"] > 0  # SUV from the stored DICOM PET
    new = {a["name"]: a for a in out["artifacts"]}
    assert {"mask.nii.gz", "mask.seg.dcm", "mask.rtstruct.dcm"} <= set(new)
    assert new["mask.seg.dcm"]["sha256"] != before["mask.seg.dcm"]
    seg = api.client.get(f"/v1/jobs/{jid}/results/mask.seg.dcm", headers=api.h())
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"
    (tmp_path / "new.seg.dcm").write_bytes(seg.content)
    back = read_seg_mask(tmp_path / "new.seg.dcm", read_dicom_series(CT_DIR)[1]["files"])
    np.testing.assert_array_equal(back.data > 0, residual > 0.2)
    assert int(back.data.max()) == 2  # one segment per lesion, numbered as in lesions.csv


def test_rethreshold_drops_dicom_results_it_cannot_rewrite(api: Api, zips: dict[str, Path], tmp_path: Path) -> None:
    """A job whose CT is NIfTI cannot have its SEG rewritten: stale DICOM results are deleted."""
    jid = api.submit({"ct": NIFTI / "STS_001" / "CT_image.nii.gz", "pet": zips["pet"]}, suv=False).json()["id"]
    _finish_on_ct_series(api, jid, tmp_path / "run")
    r = api.client.post(f"/v1/jobs/{jid}/threshold", json={"threshold": 0.2}, headers=api.h())
    assert r.status_code == 200, r.text
    with api.sessions() as s:
        names = set(s.scalars(select(Artifact.name).where(Artifact.job_id == jid)))
    assert names == {"residual.nii.gz", "mask.nii.gz", "lesions.csv", "lesions.json"}
    assert api.client.get(f"/v1/jobs/{jid}/results/mask.seg.dcm", headers=api.h()).status_code == 404
    assert not any(p.name.endswith(".dcm") for p in api.stored_files())


@pytest.mark.skipif(not (models_dir() / MODEL / "model.pt").is_file(), reason=f"{MODEL} not shipped")
def test_dicom_end_to_end_seg_rtstruct_and_units_from_headers(request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    """Client (folders zipped on the fly) -> API -> real worker: no SUV field, units from the PET's
    headers (dicom-gml, the factor the NIfTI copy implies), SEG equal to mask.nii.gz."""
    settings = make_settings("embedded", tmp_path, request, device="cpu", models_dir=models_dir(),
                             default_model=MODEL, lease_s=30)
    service = EmbeddedService(settings, port=free_port(), workers=1, log_dir=tmp_path / "logs",
                              worker_env={"AUTOPAINT_MODELS_DIR": str(models_dir())})
    out = tmp_path / "out"
    with service.running(), Client(service.url, api_key(settings)) as client:
        client.wait_ready(timeout=30)
        job = client.submit(ct=CT_DIR, pet=PET_DIR, params={"model": MODEL})
        job = client.wait(job["id"], poll_s=0.5, timeout=600)
        assert job["state"] == "succeeded", (job, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*")])
        names = {a["name"] for a in client.results(job["id"])}
        assert {"mask.seg.dcm", "mask.rtstruct.dcm", "mask.nii.gz", "report.json"} <= names
        client.download(job["id"], out)
        # the re-threshold writes the SEG again on the CT series
        thr = client.rethreshold(job["id"], 0.05)
        assert {"mask.seg.dcm", "mask.rtstruct.dcm"} <= {a["name"] for a in thr["artifacts"]}
        client.download(job["id"], tmp_path / "thr", names=["mask.nii.gz", "mask.seg.dcm"])
    ct_files = read_dicom_series(CT_DIR)[1]["files"]
    thr_seg = read_seg_mask(tmp_path / "thr" / "mask.seg.dcm", ct_files)
    np.testing.assert_array_equal(thr_seg.data > 0, read_volume(tmp_path / "thr" / "mask.nii.gz").data > 0)
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["format"] == {"ct": "dicom", "pet": "dicom"}
    units = rep["inputs"]["pet_units"]
    assert units["source"] == "dicom-gml" and job["manifest"]["pet_units"]["factor"] == units["factor"]
    raw, _ = read_dicom_series(PET_DIR)
    suv = read_volume(NIFTI / "STS_001" / "PET_image.nii.gz").data
    body = raw.data > np.percentile(raw.data, 50)
    assert units["factor"] == pytest.approx(float(np.median(suv[body] / raw.data[body])), rel=0.01)
    mask = read_volume(out / "mask.nii.gz").data > 0
    seg = read_seg_mask(out / "mask.seg.dcm", ct_files)
    np.testing.assert_array_equal(seg.data > 0, mask)
    assert rep["inputs"]["dicom_series"]["ct"]["n_files"] == len(list(CT_DIR.iterdir()))


def test_a_mask_is_never_a_zip(api: Api, zips: dict[str, Path]) -> None:
    """Only CT and PET may be DICOM zips: a zip as the label gets the NIfTI header check's code."""
    r = api.submit({"ct": zips["ct"], "pet": zips["pet"], "label": zips["ct"]}, suv=False)
    assert r.status_code == 422 and r.json()["code"] == "not_nifti", r.text
