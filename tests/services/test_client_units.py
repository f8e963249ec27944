"""The client side of DICOM input and PET units: ``Client.submit`` with DICOM folders (zipped on the
fly, temp file deleted) against the in-process API, ``autopaint submit`` / ``cohort submit`` options
mapped to JobParams by the rule of ``autopaint segment`` (a NIfTI PET must state its units)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autopaint.client import ApiError, Client
from autopaint.client_cohort import discover_cases, run_cohort
from autopaint.contracts import JobParams
from autopaint.paths import data_dir
from services.cli import app
from tests.services.apikit import Api

DICOM = data_dir() / "ibsi-sts-dicom" / "STS_001"
NIFTI = data_dir() / "ibsi-sts" / "STS_001"
pytestmark = pytest.mark.skipif(not (DICOM / "CT" / "image").is_dir() or not NIFTI.is_dir(),
                                reason="IBSI STS data not available")




def _client(api: Api) -> Client:
    # the in-process app through the TestClient's own transport (no server, no socket)
    return Client("http://testserver", api.key_a, transport=api.client._transport)  # type: ignore[attr-defined]


def test_submit_dicom_folders_zips_them_and_cleans_up(api: Api, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with _client(api) as c:
        job = c.submit(ct=DICOM / "CT" / "image", pet=DICOM / "PET" / "image")  # no units: the headers say
        assert job["state"] == "queued"
        row = api.job(job["id"])
        assert row.inputs["ct"]["format"] == row.inputs["pet"]["format"] == "dicom"
        assert list(scratch.iterdir()) == []  # the on-the-fly zips are gone
        with pytest.raises(ApiError) as err:  # a NIfTI PET must state its units
            c.submit(ct=DICOM / "CT" / "image", pet=NIFTI / "PET_image.nii.gz")
        assert err.value.status == 422 and err.value.code == "missing_suv_info"
        job = c.submit(ct=DICOM / "CT" / "image", pet=NIFTI / "PET_image.nii.gz", params={"suv_already": True})
        assert api.job(job["id"]).inputs["pet"]["format"] == "nifti"
        with pytest.raises(Exception, match="NIfTI file"):
            c.submit(ct=NIFTI / "CT_image.nii.gz", label=DICOM / "CT" / "image")
    assert list(scratch.iterdir()) == []


def _submit_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, list[dict[str, Any]]]:
    """Run ``autopaint submit`` with ``Client.submit`` recorded instead of uploading."""
    sent: list[dict[str, Any]] = []

    def fake_submit(self: Client, **kw: Any) -> dict[str, Any]:
        sent.append(kw["params"])
        return {"id": "j1", "state": "queued"}

    monkeypatch.setattr(Client, "submit", fake_submit)
    result = CliRunner().invoke(app, ["submit", *argv, "--url", "http://127.0.0.1:9"])
    return result.exit_code, result.output, sent


def test_submit_options_map_to_job_params(monkeypatch: pytest.MonkeyPatch) -> None:
    ct, pet_dir, pet_nii = str(DICOM / "CT" / "image"), str(DICOM / "PET" / "image"), str(NIFTI / "PET_image.nii.gz")
    code, out, sent = _submit_cli(["--ct", ct, "--pet", pet_nii], monkeypatch)
    assert code == 2 and "[missing_suv_info]" in out and sent == []  # refused before any upload
    code, out, sent = _submit_cli(["--ct", ct, "--pet", pet_nii, "--suv-already", "--weight-kg", "70"], monkeypatch)
    assert code == 2 and "[bad_arguments]" in out and sent == []
    cases = {
        ("--pet", pet_dir, "--ct-series-uid", "1.2.3"): {"check_units": True, "ct_series_uid": "1.2.3"},
        ("--pet", pet_nii, "--suv-already", "--allow-implausible-units"): {"suv_already": True, "check_units": False},
        ("--pet", pet_nii, "--weight-kg", "75", "--injected-dose-bq", "3.7e8", "--delay-s", "3600",
         "--half-life-s", "6586.2"): {"suv_already": False, "weight_kg": 75.0, "injected_dose_bq": 3.7e8,
                                      "delay_s": 3600.0, "half_life_s": 6586.2, "check_units": True},
    }
    for argv, want in cases.items():
        code, out, sent = _submit_cli(["--ct", ct, *argv, "--mode", "fast"], monkeypatch)
        assert code == 0, out
        assert sent == [{"mode": "fast", **want}]
        JobParams.model_validate(sent[0])  # exactly JobParams fields


def test_submit_help_lists_dicom_and_units_options() -> None:
    result = CliRunner().invoke(app, ["submit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for opt in ("--ct", "--pet", "--suv-already", "--weight-kg", "--injected-dose-bq", "--delay-s",
                "--half-life-s", "--allow-implausible-units", "--ct-series-uid", "--pet-series-uid"):
        assert opt in result.output, opt
    result = CliRunner().invoke(app, ["cohort", "submit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--suv-already" in result.output and "--weight-kg" in result.output


def test_cohort_dicom_cases_and_a_refused_case(api: Api, tmp_path: Path) -> None:
    """Cases may hold DICOM folders ct/ and pet/; a case the server refuses is a failed row with its
    code (the cohort goes on), never an exception."""
    cohort = tmp_path / "cohort"
    (cohort / "a_dicom").mkdir(parents=True)
    (cohort / "a_dicom" / "ct").symlink_to(DICOM / "CT" / "image")
    (cohort / "a_dicom" / "pet").symlink_to(DICOM / "PET" / "image")
    (cohort / "b_nifti").mkdir()
    (cohort / "b_nifti" / "ct.nii.gz").symlink_to(NIFTI / "CT_image.nii.gz")
    (cohort / "b_nifti" / "pet.nii.gz").symlink_to(NIFTI / "PET_image.nii.gz")
    cases = discover_cases(cohort)
    assert [(c.name, sorted(c.files)) for c in cases] == [("a_dicom", ["ct", "pet"]), ("b_nifti", ["ct", "pet"])]
    assert cases[0].files["pet"].is_dir() and cases[1].files["pet"].is_file()
    (cohort / "a_dicom" / "pet").unlink()  # keep only the refused case runnable without a worker
    (cohort / "a_dicom" / "ct").unlink()
    with _client(api) as c:
        summary = run_cohort(c, cohort, tmp_path / "out", params={}, poll_s=0.05)
    assert summary.failed == 1 and summary.rows[0]["error_code"] == "missing_suv_info"
