"""imaging.io: nibabel <-> SimpleITK round trips, header hygiene, dtype casts, atomic writes, DICOM."""

from __future__ import annotations

import datetime
import gzip
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autopaint.errors import InvalidInput
from autopaint.imaging.io import from_sitk, read_dicom_series, read_volume, to_sitk, write_volume
from autopaint.imaging.volume import Volume
from autopaint.paths import data_dir

DICOM_DIR = data_dir() / "totalseg-ct" / "example_ct_dicom"


def _rot(ax: float, az: float) -> np.ndarray:
    a, b = np.deg2rad(az), np.deg2rad(ax)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(m: np.ndarray, t: tuple[float, float, float]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = m, t
    return aff


AFFINES = {
    "ras_axis_aligned": _affine(np.diag([0.8, 0.9, 2.5]), (-100.0, -80.5, 30.0)),
    "flipped_lps_like": _affine(np.diag([-0.977, -0.977, 3.27]), (23.44, 86.91, -881.32)),
    "flipped_z": _affine(np.diag([1.5, 1.5, -2.0]), (10.0, 20.0, 300.0)),
    "oblique": _affine(_rot(17.0, 31.0) @ np.diag([1.1, 0.7, 2.2]), (-12.3, 45.6, -78.9)),
    "oblique_flipped": _affine(_rot(-25.0, 140.0) @ np.diag([-1.3, 0.9, -3.0]), (250.0, -4.0, 12.0)),
    "axes_permuted": _affine(np.array([[0, 0, 2.0], [-1.2, 0, 0], [0, 1.2, 0]]), (5.0, 6.0, 7.0)),
}


def _volume(affine: np.ndarray, dtype: Any = np.float32) -> Volume:
    rng = np.random.default_rng(0)
    data = rng.normal(0, 300, (9, 7, 5)).astype(dtype) if np.dtype(dtype).kind == "f" else \
        rng.integers(-1024, 3000, (9, 7, 5)).astype(dtype)
    return Volume(data, affine)


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("writer,reader", [("nibabel", "sitk"), ("sitk", "nibabel"), ("nibabel", "nibabel"),
                                           ("sitk", "sitk")])
@pytest.mark.parametrize("dtype,suffix", [(np.float32, ".nii.gz"), (np.int16, ".nii")])
def test_round_trip_preserves_data_and_affine(tmp_path: Path, name: str, writer: str, reader: str,
                                              dtype: Any, suffix: str) -> None:
    vol = _volume(AFFINES[name], dtype)
    path = write_volume(vol, tmp_path / f"v{suffix}", dtype=dtype, backend=writer)  # type: ignore[arg-type]
    back = read_volume(path, backend=reader, dtype=None)  # type: ignore[arg-type]
    assert back.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


@pytest.mark.parametrize("name", list(AFFINES))
def test_to_sitk_world_positions(name: str) -> None:
    vol = _volume(AFFINES[name])
    img = to_sitk(vol)
    assert img.GetSize() == vol.shape
    ijk = np.array([[0, 0, 0], [8, 0, 0], [0, 6, 0], [0, 0, 4], [3, 2, 1]])
    ras = vol.index_to_world(ijk)
    for (i, j, k), p in zip(ijk, ras, strict=True):
        lps = img.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        np.testing.assert_allclose(lps, [-p[0], -p[1], p[2]], atol=1e-9)
        assert img[int(i), int(j), int(k)] == pytest.approx(float(vol.data[i, j, k]))
    again = from_sitk(img)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-9)
    np.testing.assert_array_equal(again.data, vol.data)


def test_shear_is_rejected_by_sitk() -> None:
    sheared = _affine(np.array([[1.0, 0.5, 0], [0, 1.0, 0], [0, 0, 1.0]]), (0, 0, 0))
    with pytest.raises(InvalidInput) as exc:
        to_sitk(_volume(sheared))
    assert exc.value.code == "bad_affine"


@pytest.mark.parametrize("backend", ["nibabel", "sitk"])
def test_written_header_drops_free_text_and_extensions(tmp_path: Path, backend: str) -> None:
    aff = AFFINES["oblique"]
    src = nib.Nifti1Image(_volume(aff).data, aff)
    src.header["descrip"] = b"Patient: Jane Doe, DOB 1960-01-01"
    src.header["aux_file"] = b"MRN-12345"
    src.header["intent_name"] = b"secret"
    src.header["db_name"] = b"hospital-db"
    src.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PHI: Jane Doe"))
    src.set_sform(aff, code=2)
    src.set_qform(aff, code=0)
    src.to_filename(tmp_path / "in.nii.gz")
    reread: Any = nib.load(tmp_path / "in.nii.gz")
    assert len(reread.header.extensions) == 1
    vol = read_volume(tmp_path / "in.nii.gz")
    out = write_volume(vol, tmp_path / "out.nii.gz", backend=backend)  # type: ignore[arg-type]
    loaded: Any = nib.load(out)
    hdr = loaded.header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(hdr.get_sform(), hdr.get_qform(), atol=1e-4)
    for key in ("descrip", "aux_file", "intent_name", "db_name"):
        assert hdr[key].item() == b"", key
    assert len(hdr.extensions) == 0
    with gzip.open(out) as fh:
        head = fh.read(int(hdr["vox_offset"]))
    assert b"Jane" not in head and b"MRN" not in head and b"hospital" not in head
    np.testing.assert_allclose(loaded.affine, aff, atol=1e-4)


def test_integer_dtypes_round_and_clip(tmp_path: Path) -> None:
    data = np.array([-2000.4, -3.6, 0.49, 12.6, 40000.0, np.nan], dtype=np.float32).reshape(6, 1, 1)
    vol = Volume(data, np.eye(4))
    ct = read_volume(write_volume(vol, tmp_path / "ct.nii.gz", dtype=np.int16), dtype=None)
    assert ct.data.dtype == np.int16
    assert ct.data.ravel().tolist() == [-2000, -4, 0, 13, 32767, 0]
    mask = read_volume(write_volume(vol, tmp_path / "m.nii.gz", dtype=np.uint8, backend="sitk"), dtype=None)
    assert mask.data.dtype == np.uint8 and mask.data.ravel().tolist() == [0, 0, 0, 13, 255, 0]
    f = read_volume(write_volume(vol.with_data(data[:, :, :]), tmp_path / "f.nii"))
    assert f.data.dtype == np.float32 and np.isnan(f.data[5, 0, 0])


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    vol = _volume(AFFINES["ras_axis_aligned"])
    target = tmp_path / "sub" / "x.nii.gz"
    write_volume(vol, target)
    first = target.read_bytes()
    write_volume(vol.with_data(vol.data + 1), target)  # overwrite replaces whole file
    assert target.read_bytes() != first
    with pytest.raises(ValueError):
        write_volume(vol, tmp_path / "sub" / "y.nii.gz", backend="bogus")  # type: ignore[arg-type]
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.nii.gz"]
    with pytest.raises(InvalidInput):
        write_volume(vol, tmp_path / "x.png")


def test_read_volume_4d_singleton_and_bad_suffix(tmp_path: Path) -> None:
    aff = AFFINES["flipped_z"]
    data = _volume(aff).data
    nib.Nifti1Image(data[..., None], aff).to_filename(tmp_path / "4d.nii.gz")
    for backend in ("nibabel", "sitk"):
        vol = read_volume(tmp_path / "4d.nii.gz", backend=backend)  # type: ignore[arg-type]
        assert vol.shape == data.shape
        np.testing.assert_allclose(vol.affine, aff, atol=1e-4)
    with pytest.raises(InvalidInput):
        read_volume(tmp_path / "file.txt")


@pytest.mark.skipif(not DICOM_DIR.is_dir(), reason="real data folder missing")
def test_dicom_series_geometry_matches_tags() -> None:
    vol, tags = read_dicom_series(DICOM_DIR)
    assert vol.shape == (512, 512, 20)
    np.testing.assert_allclose(vol.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    # ImagePositionPatient of every file (LPS) must be the RAS centre of voxel (0, 0, k) of its slice
    ipp = []
    for f in sorted(DICOM_DIR.iterdir()):
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.ReadImageInformation()
        ipp.append([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
    ipp_arr = np.array(sorted(ipp, key=lambda p: p[2]))
    ras_first = vol.index_to_world([[0, 0, 0]])[0]
    np.testing.assert_allclose([-ras_first[0], -ras_first[1], ras_first[2]], ipp_arr[0], atol=1e-4)
    ras_last = vol.index_to_world([[0, 0, 19]])[0]
    np.testing.assert_allclose([-ras_last[0], -ras_last[1], ras_last[2]], ipp_arr[-1], atol=1e-4)
    assert vol.data.min() >= -1100 and vol.data.max() < 4000  # rescaled to HU
    assert tags["modality"] == "CT" and tags["weight_kg"] == 79.0
    assert tags["injected_dose_bq"] is None and "injected_dose_bq" in tags["missing"]


@pytest.mark.skipif(not DICOM_DIR.is_dir(), reason="real data folder missing")
def test_dicom_pet_suv_tags(tmp_path: Path) -> None:
    """A PET series made from three real slices, with the SUV tags (incl. the radiopharmaceutical
    sequence that SimpleITK cannot expose) set by pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    for f in sorted(DICOM_DIR.iterdir())[:3]:
        ds = pydicom.dcmread(f)
        ds.Modality = "PT"
        ds.PatientWeight = "72.5"
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.SeriesDate, ds.SeriesTime = "20221208", "101500"
        item = Dataset()
        item.RadionuclideTotalDose = "350000000"
        item.RadionuclideHalfLife = "6586.2"
        item.RadiopharmaceuticalStartTime = "091000.00"
        ds.RadiopharmaceuticalInformationSequence = Sequence([item])
        ds.save_as(tmp_path / f.name)
    vol, tags = read_dicom_series(tmp_path)
    assert vol.shape == (512, 512, 3)
    assert tags["weight_kg"] == 72.5 and tags["units"] == "BQML"
    assert tags["injected_dose_bq"] == 350e6 and tags["half_life_s"] == 6586.2
    assert tags["delay_s"] == 65 * 60.0 and tags["delay_reference"] == "series"
    assert tags["missing"] == []
    # injection before midnight, scan after: the delay wraps to the previous day
    for f in tmp_path.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesTime = "001000"
        ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "233000"
        ds.save_as(f)
    assert read_dicom_series(tmp_path)[1]["delay_s"] == datetime.timedelta(minutes=40).total_seconds()


def test_dicom_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as exc:
        read_dicom_series(tmp_path)
    assert exc.value.code == "not_dicom"
    shutil.copy(__file__, tmp_path / "notdicom.dcm")
    with pytest.raises(InvalidInput):
        read_dicom_series(tmp_path)
