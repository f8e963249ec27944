"""SUV from real DICOM headers (IBSI STS_001-003 PET, Units GML) and variants crafted from them with
pydicom (BQML START/ADMIN, midnight, QIBA scan time, missing tags, Philips CNTS), plus the
plausibility guard measured on the IBSI PET NIfTI files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autopaint.errors import InvalidInput
from autopaint.imaging.io import read_dicom_series
from autopaint.imaging.suv import (
    SuvCalibration,
    calibration_from_tags,
    check_suv_plausible,
    pet_to_suv,
    suv_body_stats,
)
from autopaint.imaging.volume import Volume
from autopaint.paths import data_dir

pydicom = pytest.importorskip("pydicom")
STS_DICOM = data_dir() / "ibsi-sts-dicom"
STS_NIFTI = data_dir() / "ibsi-sts"
needs_dicom = pytest.mark.skipif(not (STS_DICOM / "STS_001" / "PET").is_dir(), reason="real data folder missing")
needs_nifti = pytest.mark.skipif(not (STS_NIFTI / "STS_001").is_dir(), reason="real data folder missing")

# Hand-read from the headers: weight kg, dose Bq, half-life s, scan (SeriesTime) - injection (StartTime), s.
HEADERS = {
    "STS_001": (71.0, 388777472.0, 6588.0, (11 * 3600 + 20 * 60 + 11) - (10 * 3600 + 35 * 60)),
    "STS_002": (99.0, 433344096.0, 6588.0, (14 * 3600 + 57 * 60 + 59) - (13 * 3600 + 51 * 60)),
    "STS_003": (80.0, 359884960.0, 6588.0, (11 * 3600 + 21 * 60 + 48) - (10 * 3600 + 21 * 60)),
}
Edit = Callable[[Any, int], None]


def _hand_factor(patient: str, decay: str = "START") -> float:
    weight, dose, half, delay = HEADERS[patient]
    decayed = dose * 0.5 ** (delay / half) if decay == "START" else dose
    return weight * 1000.0 / decayed


def _craft(tmp_path: Path, edit: Edit | None = None, patient: str = "STS_001", n: int = 5) -> Path:
    """Copy ``n`` real PET slices of ``patient`` into a new folder, editing each with ``edit(ds, i)``."""
    files = sorted((STS_DICOM / patient / "PET" / "image").glob("*.dcm"))
    out = tmp_path / f"{patient}-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    for i, f in enumerate(files[20:20 + n]):
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(ds, i)
        ds.save_as(out / f.name)
    return out


def _bqml(factor: float, decay: str = "START") -> Edit:
    """Units BQML: the stored values become SUV / factor (through the rescale slope)."""
    def edit(ds: Any, i: int) -> None:
        ds.Units, ds.DecayCorrection = "BQML", decay
        ds.RescaleSlope = f"{float(ds.RescaleSlope) / factor:.10g}"
    return edit


def _both(*edits: Edit) -> Edit:
    def edit(ds: Any, i: int) -> None:
        for e in edits:
            e(ds, i)
    return edit


def _code(fn: Callable[[], object]) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        fn()
    return exc.value


# --- real headers ----------------------------------------------------------------------------------

@needs_dicom
@pytest.mark.parametrize("patient", sorted(HEADERS))
def test_real_gml_series_pass_through(patient: str) -> None:
    vol, tags = read_dicom_series(STS_DICOM / patient / "PET")
    assert tags["units"] == "GML" and tags["decay_correction"] == "ADMIN" and tags["modality"] == "PT"
    weight, dose, half, delay = HEADERS[patient]
    assert (tags["weight_kg"], tags["injected_dose_bq"], tags["half_life_s"], tags["delay_s"]) == (
        weight, dose, half, float(delay))
    cal = calibration_from_tags(tags)
    assert isinstance(cal, SuvCalibration) and cal.factor == 1.0 and cal.source == "dicom-gml"
    suv = pet_to_suv(vol, tags)
    assert np.array_equal(suv.data, vol.data) and suv.meta["suv_source"] == "passthrough"
    assert suv.meta["suv_calibration"]["source"] == "dicom-gml"
    # STS_002's start date/time is a day after the scan (date-shifted): the time of day is used, noted
    assert bool(tags["suv_notes"]) == (patient == "STS_002")
    check_suv_plausible(suv)
    bqml = suv.data / np.float32(_hand_factor(patient))  # the same PET in Bq/ml
    assert _code(lambda: check_suv_plausible(bqml)).code == "pet_units_implausible"


@needs_dicom
@needs_nifti
def test_dicom_suv_matches_nifti_copy() -> None:
    vol, tags = read_dicom_series(STS_DICOM / "STS_001" / "PET")
    suv = pet_to_suv(vol, tags)
    nii = nib.load(STS_NIFTI / "STS_001" / "PET_image.nii.gz")
    ref = np.asarray(nii.dataobj, dtype=np.float32)
    assert ref.shape == suv.shape
    np.testing.assert_allclose(suv.affine, nii.affine, atol=1e-3)
    body = ref > 0.1 * ref.max()
    implied = float(np.median(suv.data[body] / ref[body]))
    assert implied == pytest.approx(1.0, rel=0.01)


# --- crafted BQML ---------------------------------------------------------------------------------

@needs_dicom
@pytest.mark.parametrize("patient", sorted(HEADERS))
@pytest.mark.parametrize("decay", ["START", "ADMIN"])
def test_bqml_variant_recovers_suv(tmp_path: Path, patient: str, decay: str) -> None:
    original, _ = read_dicom_series(_craft(tmp_path, patient=patient))
    factor = _hand_factor(patient, decay)
    vol, tags = read_dicom_series(_craft(tmp_path, _bqml(factor, decay), patient=patient))
    assert np.nanmax(vol.data) > 100 * np.nanmax(original.data)  # really Bq/ml now
    suv = pet_to_suv(vol, tags)
    cal = suv.meta["suv_calibration"]
    assert cal["source"] == f"dicom-bqml-{decay.lower()}"
    assert cal["factor"] == pytest.approx(factor, rel=1e-9)
    np.testing.assert_allclose(suv.data, original.data, rtol=1e-3, atol=1e-6 * float(original.data.max()))
    if decay == "START":
        assert cal["delay_s"] == HEADERS[patient][3] and cal["reference"] == "series"
    check_suv_plausible(suv)


@needs_dicom
@pytest.mark.parametrize("with_datetime", [False, True])
def test_midnight_crossing(tmp_path: Path, with_datetime: bool) -> None:
    def edit(ds: Any, i: int) -> None:
        ds.SeriesDate = ds.AcquisitionDate = "20000908"
        ds.SeriesTime = ds.AcquisitionTime = "001500"
        item = ds.RadiopharmaceuticalInformationSequence[0]
        item.RadiopharmaceuticalStartTime = "233000"
        if with_datetime:
            item.RadiopharmaceuticalStartDateTime = "20000907233000"
    _, tags = read_dicom_series(_craft(tmp_path, _both(_bqml(1.0), edit)))
    assert tags["delay_s"] == 45 * 60.0 and tags["injection_time"] == "2000-09-07T23:30:00"
    assert calibration_from_tags(tags).delay_s == 2700.0 and tags["suv_notes"] == []


@needs_dicom
def test_qiba_scan_time_earliest_acquisition_when_series_time_is_later(tmp_path: Path) -> None:
    def edit(ds: Any, i: int) -> None:  # a post-processed series: SeriesTime reset after the scan
        ds.SeriesTime = "153000"
        ds.AcquisitionTime = f"1120{11 + 30 * (4 - i):02d}" if i > 2 else f"11{21 + i:02d}00"
    _, tags = read_dicom_series(_craft(tmp_path, _both(_bqml(1.0), edit)))
    assert tags["delay_reference"] == "acquisition"
    assert tags["reference_time"] == "2000-09-07T11:20:11"  # the earliest of the slices
    assert tags["delay_s"] == HEADERS["STS_001"][3]


# --- refusals -------------------------------------------------------------------------------------

def _del(keyword: str, in_sequence: bool = False) -> Edit:
    def edit(ds: Any, i: int) -> None:
        target = ds.RadiopharmaceuticalInformationSequence[0] if in_sequence else ds
        if keyword in target:
            delattr(target, keyword)
    return edit


MISSING = {
    "PatientWeight": (_del("PatientWeight"), "PatientWeight (0010,1030)"),
    "dose": (_del("RadionuclideTotalDose", True), "RadionuclideTotalDose (0018,1074)"),
    "half_life": (_del("RadionuclideHalfLife", True), "RadionuclideHalfLife (0018,1075)"),
    "start_time": (_del("RadiopharmaceuticalStartTime", True), "RadiopharmaceuticalStartTime (0018,1072)"),
    "sequence": (_del("RadiopharmaceuticalInformationSequence"), "RadionuclideTotalDose (0018,1074)"),
    "scan_time": (_both(_del("SeriesTime"), _del("AcquisitionTime")), "SeriesTime (0008,0031)"),
    "decay_correction": (_del("DecayCorrection"), "DecayCorrection (0054,1102)"),
    "units": (_del("Units"), "Units (0054,1001)"),
}


@needs_dicom
@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_tag_is_named(tmp_path: Path, case: str) -> None:
    edit, named = MISSING[case]
    vol, tags = read_dicom_series(_craft(tmp_path, _both(_bqml(1.0), edit), n=2))
    err = _code(lambda: pet_to_suv(vol, tags))
    assert err.code == "missing_suv_info" and named in str(err), str(err)


@needs_dicom
def test_philips_counts(tmp_path: Path) -> None:
    def counts(ds: Any, i: int) -> None:
        ds.Units = "CNTS"

    def private(offset: int, value: str) -> Edit:
        def edit(ds: Any, i: int) -> None:
            ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(offset, "DS", value)
        return edit

    vol, tags = read_dicom_series(_craft(tmp_path, counts, n=2))
    err = _code(lambda: pet_to_suv(vol, tags))
    assert err.code == "missing_suv_info" and "(7053,1000)" in str(err)
    vol, tags = read_dicom_series(_craft(tmp_path, _both(counts, private(0x00, "0.000250")), n=2))
    suv = pet_to_suv(vol, tags)
    assert suv.meta["suv_calibration"]["source"] == "dicom-cnts-philips"
    np.testing.assert_allclose(suv.data, vol.data * np.float32(0.00025), rtol=1e-6)
    _, tags = read_dicom_series(_craft(tmp_path, _both(counts, private(0x09, "2.5")), n=2))
    cal = calibration_from_tags(dict(tags, decay_correction="START"))
    assert cal.source == "dicom-cnts-philips-bqml-start"
    assert cal.factor == pytest.approx(2.5 * _hand_factor("STS_001"), rel=1e-9)


def _set(**values: str) -> Edit:
    def edit(ds: Any, i: int) -> None:
        for k, v in values.items():
            setattr(ds, k, v)
    return edit


@needs_dicom
@pytest.mark.parametrize(("edit", "code"), [
    (_set(Units="PROPCPS"), "pet_units_unsupported"),
    (_set(Units="BQML", DecayCorrection="NONE"), "pet_units_unsupported"),
    (_set(SUVType="LBM"), "pet_units_unsupported"),
    (_set(CorrectedImage="ATTN"), "pet_units_unsupported"),
    (_set(Units="BQML", DecayCorrection="START", SeriesTime="100000"), "suv_info_inconsistent"),
    (_set(Units="BQML", PatientWeight="71000"), "suv_info_inconsistent"),
], ids=["units", "decay_none", "suv_lbm", "not_decay_corrected", "injected_after_scan", "weight_in_grams"])
def test_refused_headers(tmp_path: Path, edit: Edit, code: str) -> None:
    vol, tags = read_dicom_series(_craft(tmp_path, edit, n=2))
    assert _code(lambda: pet_to_suv(vol, tags)).code == code


@needs_dicom
def test_injection_after_scan_without_start_time_is_refused(tmp_path: Path) -> None:
    def edit(ds: Any, i: int) -> None:
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalStartTime
        item.RadiopharmaceuticalStartDateTime = "20000907120000"
    vol, tags = read_dicom_series(_craft(tmp_path, _both(_bqml(1.0), edit), n=2))
    assert _code(lambda: pet_to_suv(vol, tags)).code == "suv_info_inconsistent"


def test_caller_dicts() -> None:
    pet = Volume(np.full((2, 2, 2), 5000.0, np.float32), np.eye(4))
    out = pet_to_suv(pet, {"weight_kg": 70, "injected_dose_bq": 370e6, "delay_s": 3600})
    cal = out.meta["suv_calibration"]
    assert cal["source"] == "caller-bqml-start" and cal["half_life_s"] == 6586.2 and cal["notes"]
    assert out.data[0, 0, 0] == pytest.approx(5000 * 70000 / (370e6 * 0.5 ** (3600 / 6586.2)), rel=1e-5)
    same = pet_to_suv(pet, already_suv=True)
    assert same.meta["suv_calibration"]["source"] == "caller-suv" and np.array_equal(same.data, pet.data)
    err = _code(lambda: pet_to_suv(pet, {"origin": "dicom", "units": "BQML"}, already_suv=True))
    assert err.code == "suv_info_inconsistent"
    err = _code(lambda: pet_to_suv(pet, {"units": "CNTS"}))
    assert err.code == "pet_units_unsupported"
    err = _code(lambda: pet_to_suv(pet, {"weight_kg": 70, "injected_dose_bq": 370e6}))
    assert err.code == "missing_suv_info" and "delay_s" in str(err)


# --- plausibility ---------------------------------------------------------------------------------

@needs_nifti
def test_plausibility_separates_suv_from_activity() -> None:
    """Every IBSI PET NIfTI (SUV) passes; the same in Bq/ml (smallest multiplier of a realistic FDG
    scan, x770), MBq/ml and x1e-3 all fail."""
    paths = sorted(STS_NIFTI.glob("STS_*/PET_image.nii.gz"))
    assert paths
    for path in paths:
        suv = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        check_suv_plausible(suv)
        for scale in (770.0, 8000.0, 8e-3, 1e-3):
            with pytest.raises(InvalidInput) as exc:
                check_suv_plausible(suv * np.float32(scale))
            assert exc.value.code == "pet_units_implausible"


def test_plausibility_edge_cases_and_speed() -> None:
    rng = np.random.default_rng(0)
    big = np.zeros((512, 512, 300), np.float32)
    big[100:400, 120:380, 20:280] = np.tile(rng.gamma(2.0, 0.4, (60, 52, 52)).astype(np.float32), (5, 5, 5))
    start = time.perf_counter()
    check_suv_plausible(Volume(big, np.eye(4)))
    assert time.perf_counter() - start < 1.0
    del big
    small = np.zeros((64, 64, 64), np.float32)
    small[16:48, 16:48, 16:48] = rng.gamma(2.0, 0.4, (32, 32, 32))
    mask = (small > 0).astype(np.uint8)
    assert suv_body_stats(small, mask)["median"] == pytest.approx(0.67, abs=0.05)
    check_suv_plausible(small, body_mask=mask)
    assert _code(lambda: check_suv_plausible(small * np.float32(3000.0), mask)).code == "pet_units_implausible"
    assert _code(lambda: check_suv_plausible(np.zeros((8, 8, 8)))).code == "pet_units_implausible"
    nan = np.full((8, 8, 8), np.nan, np.float32)
    assert _code(lambda: check_suv_plausible(nan)).code == "pet_units_implausible"
