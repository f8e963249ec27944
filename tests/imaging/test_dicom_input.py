"""DICOM input: series selection and geometry checks of read_dicom_series on the real IBSI STS
series (and small variants crafted from them with pydicom), and the safe zip extraction."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autopaint.errors import InvalidInput
from autopaint.imaging.dicom_headers import list_dicom_series
from autopaint.imaging.dicom_zip import extract_series_zip, is_zip
from autopaint.imaging.io import read_dicom_series
from autopaint.paths import data_dir

pydicom = pytest.importorskip("pydicom")
STS = data_dir() / "ibsi-sts-dicom" / "STS_001"
pytestmark = pytest.mark.skipif(not (STS / "PET" / "image").is_dir(), reason="real data folder missing")
Edit = Callable[[Any, int], None]


def _pet_files(n: int = 5) -> list[Path]:
    return sorted((STS / "PET" / "image").glob("*.dcm"))[20:20 + n]


def _craft(folder: Path, edit: Edit | None = None, n: int = 5, names: Callable[[int], str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(_pet_files(n)):
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(ds, i)
        ds.save_as(folder / (names(i) if names else f.name))
    return folder


def _err(fn: Callable[[], object]) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        fn()
    return exc.value


def _lps_to_ras(p: np.ndarray) -> np.ndarray:
    return np.array([-p[0], -p[1], p[2]])


# --- series selection -------------------------------------------------------------------------------

def test_study_folder_lists_series_and_reads_the_chosen_one() -> None:
    err = _err(lambda: read_dicom_series(STS))  # CT + PT image series + two RTSTRUCT files
    assert err.code == "multiple_series"
    series = {s["modality"]: s for s in list_dicom_series(STS)}
    assert sorted(series) == ["CT", "PT"] and series["PT"]["n_files"] == 59
    for s in series.values():
        assert s["series_instance_uid"] in str(err) and f"({s['modality']}, 59 files)" in str(err)
    vol, tags = read_dicom_series(STS, series_uid=series["PT"]["series_instance_uid"])
    assert vol.shape == (41, 43, 59) and tags["modality"] == "PT" and tags["n_series_in_folder"] == 2
    assert tags["series_instance_uid"] == series["PT"]["series_instance_uid"]
    ct_vol, ct_tags = read_dicom_series(STS / "CT")  # image/ + mask/ (RTSTRUCT ignored)
    assert ct_vol.shape == (198, 202, 59) and ct_tags["n_series_in_folder"] == 1
    assert ct_tags["frame_of_reference_uid"] == tags["frame_of_reference_uid"] is not None
    assert ct_tags["study_instance_uid"] == tags["study_instance_uid"] is not None
    assert _err(lambda: read_dicom_series(STS, series_uid="1.2.3")).code == "series_not_found"


def test_files_sorted_along_the_normal_and_geometry_from_headers(tmp_path: Path) -> None:
    # file names in reverse slice order, a non-DICOM file and an RTSTRUCT beside them
    folder = _craft(tmp_path / "s", names=lambda i: f"{9 - i:02d}.dcm")
    (folder / "notes.txt").write_text("not dicom")
    (folder / "RS.dcm").write_bytes((STS / "PET" / "mask" / "RS.dcm").read_bytes())
    vol, tags = read_dicom_series(folder)
    assert vol.shape == (41, 43, 5) and len(tags["files"]) == 5
    ipp = [np.array([float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient])
           for f in tags["files"]]
    assert [p[2] for p in ipp] == sorted(p[2] for p in ipp)
    for k in (0, 4):
        np.testing.assert_allclose(vol.index_to_world([[0, 0, k]])[0], _lps_to_ras(ipp[k]), atol=1e-4)
    np.testing.assert_allclose(vol.spacing, [4.6875, 4.6875, 3.27], atol=1e-6)
    # voxel (i, j) = column i, row j of the slice, rescaled
    ds = pydicom.dcmread(tags["files"][2])
    expected = ds.pixel_array.astype(np.float64).T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(vol.data[:, :, 2], expected, rtol=1e-5, atol=1e-6)


def test_copied_file_counts_once(tmp_path: Path) -> None:
    folder = _craft(tmp_path / "s")
    (folder / "copy.dcm").write_bytes(next(folder.glob("0*.dcm")).read_bytes())
    assert read_dicom_series(folder)[0].shape[2] == 5


# --- geometry faults ----------------------------------------------------------------------------

def _shift(i_target: int, dz: float = 0.0, dx: float = 0.0) -> Edit:
    def edit(ds: Any, i: int) -> None:
        if i == i_target:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [f"{x + dx:.6f}", f"{y:.6f}", f"{z + dz:.6f}"]
    return edit


def _tilt(ds: Any, i: int) -> None:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [f"{x + 2.0 * i:.6f}", f"{y:.6f}", f"{z:.6f}"]


def _rotate(ds: Any, i: int) -> None:
    if i == 3:
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.996194698", "0.087155743"]  # 5 degrees


def _smaller(ds: Any, i: int) -> None:
    if i == 1:
        arr = ds.pixel_array[:40, :40].copy()
        ds.Rows, ds.Columns, ds.PixelData = 40, 40, arr.tobytes()


def _new_instance(ds: Any, i: int) -> None:
    ds.SOPInstanceUID = pydicom.uid.generate_uid()


def _same_position(ds: Any, i: int) -> None:
    if i == 2:
        ds.ImagePositionPatient = pydicom.dcmread(_pet_files()[1], stop_before_pixels=True).ImagePositionPatient


@pytest.mark.parametrize(("edit", "drop", "needle"), [
    (None, 2, "missing slice"),
    (_shift(2, dz=0.5), None, "uneven slice spacing"),
    (_shift(3, dz=-0.04), None, "uneven slice spacing"),
    (_rotate, None, "different orientations"),
    (_smaller, None, "different sizes"),
    (_same_position, None, "share a position"),
    (_tilt, None, "drift"),
], ids=["gap", "uneven", "uneven_small", "orientation", "rows_cols", "same_position", "tilt"])
def test_geometry_faults(tmp_path: Path, edit: Edit | None, drop: int | None, needle: str) -> None:
    folder = _craft(tmp_path / "s", edit, n=5)
    if drop is not None:
        sorted(folder.iterdir())[drop].unlink()
    err = _err(lambda: read_dicom_series(folder))
    assert err.code == "dicom_geometry" and needle in str(err), str(err)


def test_spacing_within_tolerance_is_accepted(tmp_path: Path) -> None:
    folder = _craft(tmp_path / "s", _shift(2, dz=0.02))  # 0.6 % of 3.27 mm
    assert read_dicom_series(folder)[0].shape == (41, 43, 5)


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    folder = _craft(tmp_path / "s", n=3)
    uid = pydicom.uid.generate_uid()

    def other(ds: Any, i: int) -> None:
        ds.SeriesInstanceUID = uid
        _new_instance(ds, i)
    _craft(folder, other, n=3, names=lambda i: f"b{i}.dcm")
    err = _err(lambda: read_dicom_series(folder))
    assert err.code == "multiple_series" and uid in str(err) and "(PT, 3 files)" in str(err)
    assert read_dicom_series(folder, series_uid=uid)[0].shape == (41, 43, 3)


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_text("hello")
    assert _err(lambda: read_dicom_series(tmp_path)).code == "not_dicom"
    assert _err(lambda: read_dicom_series(tmp_path / "absent")).code == "not_dicom"


# --- zip -------------------------------------------------------------------------------------------

def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _left(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_zip_round_trip(tmp_path: Path) -> None:
    members = {f"study/PET/{f.name}": f.read_bytes() for f in _pet_files(4)}
    members["study/PET/mask/RS.dcm"] = (STS / "PET" / "mask" / "RS.dcm").read_bytes()
    members["__MACOSX/study/._x"] = b"apple double"
    archive = _zip(tmp_path / "upload.zip", members)
    assert is_zip(archive) and not is_zip(STS / "PET" / "mask" / "RS.dcm") and not is_zip(tmp_path / "nope")
    out = extract_series_zip(archive, tmp_path / "job", max_total_bytes=10**7, max_members=10)
    assert out == tmp_path / "job" / "dicom" and _left(tmp_path / "job") == ["dicom"]
    assert sorted(p.name for p in (out / "study" / "PET").iterdir()) == sorted([*(f.name for f in _pet_files(4)), "mask"])
    vol, tags = read_dicom_series(out)
    assert vol.shape == (41, 43, 4) and tags["modality"] == "PT"
    with pytest.raises(FileExistsError):
        extract_series_zip(archive, tmp_path / "job")


@pytest.mark.parametrize("name", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm", "..\\evil.dcm"])
def test_zip_path_traversal_refused(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"ok.dcm": b"x", name: b"evil"})
    assert _err(lambda: extract_series_zip(archive, tmp_path / "job")).code == "bad_zip"
    assert _left(tmp_path / "job") == [] and not (tmp_path / "evil.dcm").exists()


def test_zip_symlink_and_garbage_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "link.zip", {"ok.dcm": b"x"}, symlink="link.dcm")
    assert _err(lambda: extract_series_zip(archive, tmp_path / "job")).code == "bad_zip"
    (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert _err(lambda: extract_series_zip(tmp_path / "fake.zip", tmp_path / "job")).code == "bad_zip"
    assert _left(tmp_path / "job") == []


def test_zip_bomb_and_limits(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"a.dcm": b"x", "zeros.dcm": bytes(8 << 20)})  # ~1000x
    assert _err(lambda: extract_series_zip(bomb, tmp_path / "job")).code == "zip_too_large"
    rnd = np.random.default_rng(0).bytes(300_000)
    big = _zip(tmp_path / "big.zip", {"a.dcm": rnd, "b.dcm": rnd})
    err = _err(lambda: extract_series_zip(big, tmp_path / "job", max_total_bytes=500_000))
    assert err.code == "zip_too_large"
    many = _zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(11)})
    assert _err(lambda: extract_series_zip(many, tmp_path / "job", max_members=10)).code == "zip_too_large"
    assert _err(lambda: extract_series_zip(many, tmp_path / "job", max_members=2)).code == "zip_too_large"
    lots = _zip(tmp_path / "lots.zip", {f"{i}.dcm": b"" for i in range(130)})  # refused before parsing
    err = _err(lambda: extract_series_zip(lots, tmp_path / "job", max_members=10))
    assert err.code == "zip_too_large" and "declares 130 entries" in str(err)
    assert _left(tmp_path / "job") == []


def test_zip_corrupt_member_leaves_nothing(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.dcm", b"A" * 1000)
        zf.writestr("b.dcm", b"B" * 1000)
    data = bytearray(buf.getvalue())
    data[data.index(b"B" * 1000) + 500] = ord("C")  # breaks b.dcm's CRC, after a.dcm was written
    (tmp_path / "crc.zip").write_bytes(bytes(data))
    assert _err(lambda: extract_series_zip(tmp_path / "crc.zip", tmp_path / "job")).code == "bad_zip"
    assert _left(tmp_path / "job") == []
