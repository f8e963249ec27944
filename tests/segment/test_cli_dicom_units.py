"""DICOM in and out through `autopaint segment` / `validate`, and one rule for the PET's units.

Real data (IBSI soft-tissue sarcoma, `../shared/data`): STS_001 as DICOM (units from its headers,
SEG + RTSTRUCT back on its CT series) and STS_003 as NIfTI, re-scaled to Bq/mL to play a PET whose
units are not SUV: refused unless stated, then the same lesions as the SUV file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autopaint.cli import main
from autopaint.imaging.dicom_export import read_rtstruct_mask, read_seg_mask
from autopaint.imaging.io import read_dicom_series, read_volume
from autopaint.paths import data_dir, models_dir
from autopaint.segment.metrics import dice
from tests.pet_units import DELAY, DOSE, WEIGHT, write_bqml_pet

DICOM = data_dir() / "ibsi-sts-dicom"
NIFTI = data_dir() / "ibsi-sts"
MODEL = "ibsi-petct-gconvlap-128"
pytestmark = [
    pytest.mark.skipif(not (DICOM / "STS_001" / "CT" / "image").is_dir() or not (NIFTI / "STS_003").is_dir(),
                       reason="IBSI STS data not available"),
    pytest.mark.skipif(not (models_dir() / MODEL / "model.pt").is_file(), reason=f"{MODEL} not shipped"),
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as ex:
        code = int(ex.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def bqml_pet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bqml_pet(NIFTI / "STS_003" / "PET_image.nii.gz", tmp_path_factory.mktemp("bqml") / "pet_bqml.nii.gz")


def test_dicom_series_in_seg_and_rtstruct_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct_dir, pet_dir = DICOM / "STS_001" / "CT" / "image", DICOM / "STS_001" / "PET" / "image"
    code, out, err = _run(["segment", "--ct", str(ct_dir), "--pet", str(pet_dir), "--model", MODEL,
                           "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    assert "PET units: dicom-gml" in out and "mask.seg.dcm" in out
    rep = json.loads((tmp_path / "report.json").read_text())
    units = rep["inputs"]["pet_units"]
    assert rep["inputs"]["format"] == {"ct": "dicom", "pet": "dicom"} and units["source"] == "dicom-gml"
    # the factor equals the one implied by the NIfTI copy of the same PET (within 1 %)
    raw, _ = read_dicom_series(pet_dir)
    suv = read_volume(NIFTI / "STS_001" / "PET_image.nii.gz").data
    body = raw.data > np.percentile(raw.data, 50)
    implied = float(np.median(suv[body] / raw.data[body]))
    assert units["factor"] == pytest.approx(implied, rel=0.01)
    # SEG identical to mask.nii.gz, RTSTRUCT within Dice 0.99, lesions numbered as in lesions.csv
    mask = read_volume(tmp_path / "mask.nii.gz").data > 0
    files = [str(p) for p in read_dicom_series(ct_dir)[1]["files"]]
    seg = read_seg_mask(tmp_path / "mask.seg.dcm", files)
    assert np.array_equal(seg.data > 0, mask)
    n_lesions = len(json.loads((tmp_path / "lesions.json").read_text()))
    assert int(seg.data.max()) == n_lesions
    rt = read_rtstruct_mask(tmp_path / "mask.rtstruct.dcm", files)
    assert dice(rt.data > 0, mask) >= 0.99
    assert set(rep["outputs"]) >= {"mask.seg.dcm", "mask.rtstruct.dcm"}


def test_two_series_in_one_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(DICOM / "STS_001" / "CT" / "image", mixed)
    for f in sorted((DICOM / "STS_001" / "PET" / "image").iterdir()):
        shutil.copy(f, mixed / f"pet-{f.name}")
    code, _, err = _run(["segment", "--ct", str(mixed), "--pet", str(DICOM / "STS_001" / "PET" / "image"),
                         "--model", MODEL, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2 and "[multiple_series]" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bqml_nifti_refused_unless_stated_then_same_lesions(bqml_pet: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ct = NIFTI / "STS_003" / "CT_image.nii.gz"
    code, _, err = _run(["validate", "--pet", str(bqml_pet)], capsys)
    assert code == 2 and "[missing_suv_info]" in err
    code, _, err = _run(["validate", "--pet", str(bqml_pet), "--suv-already"], capsys)
    assert code == 2 and "[pet_units_implausible]" in err
    code, _, err = _run(["segment", "--ct", str(ct), "--pet", str(bqml_pet), "--model", MODEL,
                         "--out", str(tmp_path / "x"), "--quiet"], capsys)
    assert code == 2 and "[missing_suv_info]" in err and err.count("\n") == 1
    code, _, err = _run(["segment", "--ct", str(ct), "--pet", str(bqml_pet), "--suv-already", "--model", MODEL,
                         "--out", str(tmp_path / "x"), "--quiet"], capsys)
    assert code == 2 and "[pet_units_implausible]" in err
    bq = ["--weight-kg", str(WEIGHT), "--injected-dose-bq", str(DOSE), "--delay-s", str(DELAY)]
    assert _run(["validate", "--ct", str(ct), "--pet", str(bqml_pet), *bq], capsys)[0] == 0
    code, _, err = _run(["segment", "--ct", str(ct), "--pet", str(bqml_pet), *bq, "--model", MODEL,
                         "--out", str(tmp_path / "bq"), "--quiet"], capsys)
    assert code == 0, err
    code, _, err = _run(["segment", "--ct", str(ct), "--pet", str(NIFTI / "STS_003" / "PET_image.nii.gz"),
                         "--suv-already", "--model", MODEL, "--out", str(tmp_path / "suv"), "--quiet"], capsys)
    assert code == 0, err
    a = json.loads((tmp_path / "bq" / "lesions.json").read_text())
    b = json.loads((tmp_path / "suv" / "lesions.json").read_text())
    assert [r["voxels"] for r in a] == [r["voxels"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["suv_max"] == pytest.approx(rb["suv_max"], rel=1e-3)
    assert not (tmp_path / "x").exists()
