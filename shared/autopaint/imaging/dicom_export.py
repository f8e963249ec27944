"""DICOM output of a segmentation on its source series: DICOM SEG (highdicom) and RTSTRUCT (pydicom).

Only DICOM input has a source series to reference: results of NIfTI input are written as NIfTI only
and this module is not used for them.

Geometry. ``mask`` is a :class:`Volume` in autopaint's RAS+ ``data[i, j, k]`` convention on the grid
of the source series (as returned by :func:`autopaint.imaging.io.read_dicom_series`). Frames are
matched by geometry, not by file order: for each source file the LPS position of its pixel (r, c)
is ``ImagePositionPatient + c * PixelSpacing[1] * row_cosine + r * PixelSpacing[0] * col_cosine``
(``ImageOrientationPatient`` = row cosine, column cosine), which is mapped to a voxel of ``mask``
through its affine (RAS <-> LPS: negate x and y). Every frame must fall on a voxel plane of the mask
within :data:`GRID_TOL_MM` and the frames must cover the mask exactly once, otherwise
``InvalidInput(code="grid_mismatch")``.

Codes (SEG). Every segment: category SCT 49755003 "Morphologically Abnormal Structure", type
SCT 108369006 "Neoplasm" (pydicom ``codes.SCT``; the usual pair for tumours); algorithm
type AUTOMATIC, algorithm identification name "autopaint", version the package version, family
DCM 123110 "Artificial Intelligence" (CID 7162). Binary SEG, empty frames omitted. With
``lesion_labels`` and ``per_lesion`` each lesion label present becomes one segment, numbered 1..N in
increasing label order and labelled "Lesion <label>"; otherwise one segment "Tumour".

RTSTRUCT. One ROI per segment (same names), ROIGenerationAlgorithm AUTOMATIC. Contours are the
level-0.5 iso-lines (``skimage.measure.find_contours``) of each binary slice, CLOSED_PLANAR, in LPS mm.
They pass between pixel centres, so a contour encloses exactly the centres of its pixels. Holes are
written as separate contours inside the outer one and read with the even-odd rule (contours on the
same plane are XOR-ed), the convention of the common planning systems. The reader rasterises with
``skimage.draw.polygon`` (pixel centres inside the polygon), so write -> read returns the mask.
RTROIInterpretedType is left empty (an unreviewed automatic result; a reviewer may call it GTV).

Errors (:class:`InvalidInput` codes): ``grid_mismatch`` (mask or SEG/RTSTRUCT not on the series),
``not_dicom`` (unreadable files, not one single-frame series), ``missing_dicom_uids`` (the writers and
the SEG reader need SOP/series/study/frame-of-reference UIDs), ``roi_not_found``, ``bad_arguments``.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from pydicom.valuerep import DSfloat
from scipy import ndimage
from skimage.draw import polygon
from skimage.measure import find_contours

from autopaint import __version__
from autopaint.errors import InvalidInput
from autopaint.fsutil import atomic_path
from autopaint.imaging.volume import Volume

log = logging.getLogger(__name__)

GRID_TOL_MM = 1e-3  # largest allowed distance between a frame pixel and its mask voxel centre
SEG_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
SEG_TYPE = codes.SCT.Neoplasm  # SCT 108369006
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110
_FLIP = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                  "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")

_PALETTE = ((255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 160, 0), (200, 0, 255), (255, 255, 0))
PathLike = str | Path


def _colour(n: int) -> tuple[int, int, int]:
    return _PALETTE[(n - 1) % len(_PALETTE)]


@dataclass(frozen=True)
class _Series:
    """Header-only view of a single-frame image series, in the caller's file order."""

    headers: list[Dataset]
    rows: int
    cols: int
    row_step: np.ndarray  # LPS mm from pixel (r, c) to (r, c + 1)
    col_step: np.ndarray  # LPS mm from pixel (r, c) to (r + 1, c)
    positions: np.ndarray  # (n, 3) LPS ImagePositionPatient

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_step, self.col_step)
        return n / np.linalg.norm(n)

    def affine(self) -> np.ndarray:
        """RAS+ affine of the series as a Volume: frames sorted along the slice normal, the way
        SimpleITK/GDCM stack them (i = column, j = row, k = slice)."""
        order = np.argsort(self.positions @ self.normal)
        first, last = self.positions[order[0]], self.positions[order[-1]]
        n = len(order)
        dz = float((last - first) @ self.normal) / (n - 1) if n > 1 else float(
            self.headers[0].get("SliceThickness") or 1.0)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = self.row_step, self.col_step, self.normal * dz, first
        return np.diag([*_FLIP, 1.0]) @ lps


def _read_series(source_files: Sequence[PathLike], need_uids: bool = True) -> _Series:
    """Headers of ``source_files``; ``need_uids``: they must carry the UIDs a reference needs."""
    if not source_files:
        raise InvalidInput("no source DICOM files given", code="not_dicom")
    headers: list[Dataset] = []
    for f in source_files:
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InvalidInput(f"unreadable DICOM file {Path(f).name!r}: {exc}", code="not_dicom") from exc
    ref = headers[0]
    same = ("Rows", "Columns", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID",
            "SeriesInstanceUID", "StudyInstanceUID")
    for ds in headers:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1 or any(not ds.get(k) for k in same[:4]) \
                or not ds.get("ImagePositionPatient"):
            raise InvalidInput("source files must be single-frame images with plane geometry", code="not_dicom")
        if any(ds.get(k) != ref.get(k) for k in same):
            raise InvalidInput("source files are not one series with one geometry", code="not_dicom")
    uids = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
    if need_uids and (any(not ds.get(k) for ds in headers for k in uids)
                      or len({ds.SOPInstanceUID for ds in headers}) != len(headers)):
        raise InvalidInput("the source DICOM files lack the UIDs a DICOM reference needs (SOP class/instance, "
                           "series, study, frame of reference)", code="missing_dicom_uids")
    iop = np.array([float(v) for v in ref.ImageOrientationPatient])
    dr, dc = (float(v) for v in ref.PixelSpacing)
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    return _Series(headers, int(ref.Rows), int(ref.Columns), iop[:3] * dc, iop[3:] * dr, pos)


def _frame_indices(series: _Series, affine: np.ndarray, shape: tuple[int, int, int]) -> list[tuple[np.ndarray, ...]]:
    """For each frame, the (i, j, k) index arrays (each (rows, cols)) of its pixels in a volume of
    ``shape``/``affine``; ``grid_mismatch`` unless the frames tile the volume exactly."""
    a3 = affine[:3, :3]
    inv = np.linalg.inv(affine)

    def to_index(lps: np.ndarray, point: bool) -> np.ndarray:
        return inv[:3, :3] @ (lps * _FLIP) + (inv[:3, 3] if point else 0.0)

    def mm_error(idx: np.ndarray) -> float:
        return float(np.linalg.norm(a3 @ (idx - np.rint(idx))))

    du, dv = to_index(series.row_step, False), to_index(series.col_step, False)
    u, v = np.rint(du).astype(int), np.rint(dv).astype(int)
    axes = [int(np.flatnonzero(u)[0]) if np.abs(u).sum() == 1 else -1,
            int(np.flatnonzero(v)[0]) if np.abs(v).sum() == 1 else -2]
    bad = (axes[0] < 0 or axes[1] < 0 or axes[0] == axes[1]
           or mm_error(du) * max(series.cols - 1, 1) > GRID_TOL_MM
           or mm_error(dv) * max(series.rows - 1, 1) > GRID_TOL_MM
           or shape[axes[0]] != series.cols or shape[axes[1]] != series.rows)
    w = 3 - axes[0] - axes[1]
    out: list[tuple[np.ndarray, ...]] = []
    seen = np.zeros(shape[w] if not bad else 0, dtype=int)
    rr, cc = np.ogrid[0 : series.rows, 0 : series.cols]  # broadcast index arrays: O(rows + cols) each
    for p in series.positions if not bad else []:
        i0 = to_index(p, True)
        o = np.rint(i0).astype(int)
        far = o + u * (series.cols - 1) + v * (series.rows - 1)
        if mm_error(i0) > GRID_TOL_MM or np.any(np.minimum(o, far) < 0) or np.any(np.maximum(o, far) >= shape):
            bad = True
            break
        seen[o[w]] += 1
        out.append(tuple(o[d] + u[d] * cc if u[d] else o[d] + v[d] * rr if v[d] else np.full((1, 1), o[d])
                         for d in range(3)))
    if bad or not np.all(seen == 1):
        raise InvalidInput("the mask grid does not coincide with the source DICOM series "
                           f"(frames {series.rows}x{series.cols}x{len(series.headers)}, mask {shape})",
                           code="grid_mismatch")
    return out


def _label_map(mask: Volume, lesion_labels: np.ndarray | None, per_lesion: bool) -> tuple[np.ndarray, list[str]]:
    """Map of segment numbers 1..N (uint8, or uint16 beyond 255) on the mask grid, and the N names."""
    fg = np.asarray(mask.data) > 0
    if lesion_labels is None or not per_lesion:
        return fg.astype(np.uint8), ["Tumour"]
    labels = np.asarray(lesion_labels)
    if labels.shape != fg.shape:
        raise InvalidInput(f"lesion labels shape {labels.shape} != mask shape {fg.shape}", code="grid_mismatch")
    if np.any(fg & (labels <= 0)):
        raise InvalidInput("mask voxels without a lesion label", code="bad_arguments")
    present = np.unique(labels[fg]).astype(np.int64)
    if present.size == 0:
        return fg.astype(np.uint8), ["Tumour"]
    if present.size > 65535:
        raise InvalidInput("too many lesions for one segmentation", code="bad_arguments")
    lut = np.zeros(int(present.max()) + 1, dtype=np.uint16)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint16)
    out = np.zeros(fg.shape, dtype=np.uint16)
    out[fg] = lut[labels[fg].astype(np.int64)]
    return (out.astype(np.uint8) if present.size < 256 else out), [f"Lesion {n}" for n in present]


def _frames(idx: list[tuple[np.ndarray, ...]], volume: np.ndarray) -> np.ndarray:
    return np.stack([volume[ijk] for ijk in idx])


def write_seg(mask: Volume, lesion_labels: np.ndarray | None, source_files: Sequence[PathLike],
              out_path: PathLike, *, per_lesion: bool = True,
              series_description: str = "autopaint tumour segmentation", series_number: int = 901,
              manufacturer: str = "autopaint", manufacturer_model_name: str = "autopaint",
              device_serial_number: str = "autopaint", software_version: str = __version__) -> Path:
    """Write a binary DICOM SEG of ``mask`` on the source series (see the module doc); return the path.

    ``lesion_labels``: integer lesion ids on the mask grid (e.g. connected components); one segment
    per lesion when given and ``per_lesion``, else one "Tumour" segment. An empty mask gives one empty
    "Tumour" segment. The file is written atomically."""
    series = _read_series(source_files)
    idx = _frame_indices(series, mask.affine, mask.shape)
    labels, names = _label_map(mask, lesion_labels, per_lesion)
    algorithm = hd.AlgorithmIdentificationSequence(name="autopaint", family=ALGORITHM_FAMILY,
                                                   version=software_version)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=SEG_CATEGORY,
        segmented_property_type=SEG_TYPE, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*_colour(n)))
        for n, name in enumerate(names, start=1)]
    seg = hd.seg.Segmentation(
        source_images=series.headers, pixel_array=_frames(idx, labels),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=manufacturer, manufacturer_model_name=manufacturer_model_name,
        software_versions=software_version, device_serial_number=device_serial_number,
        series_description=series_description, content_label="AUTOPAINT",
        content_description=f"autopaint {software_version}"[:64])
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    log.info("wrote DICOM SEG with %d segment(s) on %d frames", len(names), len(idx))
    return out_path


def _empty_volume(series: _Series, dtype: type = np.uint16) -> Volume:
    shape = (series.cols, series.rows, len(series.headers))
    return Volume(np.zeros(shape, dtype=dtype), series.affine())


def read_seg_mask(seg_path: PathLike, source_files: Sequence[PathLike]) -> Volume:
    """Rasterise a DICOM SEG on its source series back to a Volume on the series grid (the affine of
    :func:`~autopaint.imaging.io.read_dicom_series`). Values are segment numbers (uint16, 0 =
    background); where segments overlap, the highest number wins."""
    series = _read_series(source_files)
    vol = _empty_volume(series)
    idx = _frame_indices(series, vol.affine, vol.shape)
    try:
        seg = hd.seg.segread(str(seg_path))
    except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
        raise InvalidInput(f"not a readable DICOM SEG: {exc}", code="not_dicom") from exc
    series_uid = series.headers[0].SeriesInstanceUID
    if not any(item.SeriesInstanceUID == series_uid for item in seg.get("ReferencedSeriesSequence", [])):
        raise InvalidInput("the SEG does not reference the given source series", code="grid_mismatch")
    frames = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series.headers], combine_segments=True, skip_overlap_checks=True,
        assert_missing_frames_are_empty=True, dtype=np.uint16)
    for ijk, frame in zip(idx, frames, strict=True):
        vol.data[ijk] = frame
    return vol


def _contours(plane: np.ndarray) -> list[np.ndarray]:
    """Closed (r, c) polygons, no repeated end point, around the pixel centres of a 2D bool plane;
    collinear points dropped (marching-squares vertices lie on the half-pixel grid: exact arithmetic)."""
    out = []
    for c in find_contours(np.pad(plane, 1).astype(np.float32), 0.5):
        c = c[:-1] - 1.0  # closed: first == last
        d_in, d_out = c - np.roll(c, 1, axis=0), np.roll(c, -1, axis=0) - c
        c = c[np.abs(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) > 1e-9]
        if len(c) >= 3:
            out.append(c)
    return out


def _ds_list(values: np.ndarray) -> list[DSfloat]:
    return [DSfloat(float(v), auto_format=True) for v in values]


def _item(**kw: object) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def write_rtstruct(mask: Volume, lesion_labels: np.ndarray | None, source_files: Sequence[PathLike],
                   out_path: PathLike, *, per_lesion: bool = True,
                   series_description: str = "autopaint tumour contours", series_number: int = 902,
                   manufacturer: str = "autopaint", manufacturer_model_name: str = "autopaint",
                   software_version: str = __version__) -> Path:
    """Write an RT Structure Set with one ROI per lesion (or one "Tumour") on the source series;
    return the path. Contours: see the module doc. The file is written atomically."""
    series = _read_series(source_files)
    idx = _frame_indices(series, mask.affine, mask.shape)
    labels, names = _label_map(mask, lesion_labels, per_lesion)
    frames = _frames(idx, labels)
    src = series.headers[0]
    for_uid = src.FrameOfReferenceUID
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    def image_ref(ds: Dataset) -> Dataset:
        return _item(ReferencedSOPClassUID=ds.SOPClassUID, ReferencedSOPInstanceUID=ds.SOPInstanceUID)

    rt = Dataset()
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    rt.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rt.SpecificCharacterSet = "ISO_IR 192"
    rt.SOPClassUID, rt.SOPInstanceUID = RTStructureSetStorage, rt.file_meta.MediaStorageSOPInstanceUID
    for key in _PATIENT_STUDY:
        setattr(rt, key, src.get(key, ""))
    rt.Modality, rt.SeriesInstanceUID, rt.SeriesNumber = "RTSTRUCT", generate_uid(), series_number
    rt.SeriesDescription, rt.OperatorsName = series_description, ""
    rt.SeriesDate, rt.SeriesTime, rt.InstanceCreationDate, rt.InstanceCreationTime = date, time, date, time
    rt.Manufacturer, rt.ManufacturerModelName = manufacturer, manufacturer_model_name
    rt.SoftwareVersions, rt.InstanceNumber = software_version, 1
    rt.FrameOfReferenceUID = for_uid
    rt.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    rt.StructureSetLabel, rt.StructureSetName = "AUTOPAINT", "autopaint"
    rt.StructureSetDate, rt.StructureSetTime = date, time
    series_ref = _item(SeriesInstanceUID=src.SeriesInstanceUID,
                       ContourImageSequence=DicomSequence([image_ref(ds) for ds in series.headers]))
    study_ref = _item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",  # by convention (retired SOP class)
                      ReferencedSOPInstanceUID=src.StudyInstanceUID,
                      RTReferencedSeriesSequence=DicomSequence([series_ref]))
    rt.ReferencedFrameOfReferenceSequence = DicomSequence([_item(
        FrameOfReferenceUID=for_uid, RTReferencedStudySequence=DicomSequence([study_ref]))])
    rois, roi_contours, observations = [], [], []
    per_roi: dict[int, list[Dataset]] = {n: [] for n in range(1, len(names) + 1)}
    for f, ds in enumerate(series.headers):
        for n0, box in enumerate(ndimage.find_objects(frames[f])):
            if box is None:
                continue
            for rc in _contours(frames[f][box] == n0 + 1):
                rc = rc + [box[0].start, box[1].start]
                pts = series.positions[f] + rc[:, 1:2] * series.row_step + rc[:, 0:1] * series.col_step
                per_roi[n0 + 1].append(_item(
                    ContourImageSequence=DicomSequence([image_ref(ds)]), ContourGeometricType="CLOSED_PLANAR",
                    NumberOfContourPoints=len(pts), ContourNumber=len(per_roi[n0 + 1]) + 1,
                    ContourData=_ds_list(pts.ravel())))
    for n, name in enumerate(names, start=1):
        rois.append(_item(ROINumber=n, ReferencedFrameOfReferenceUID=for_uid, ROIName=name,
                          ROIGenerationAlgorithm="AUTOMATIC",
                          ROIGenerationDescription=f"autopaint {software_version}"))
        contours = per_roi[n]
        roi = _item(ROIDisplayColor=list(_colour(n)), ReferencedROINumber=n)
        if contours:
            roi.ContourSequence = DicomSequence(contours)
        roi_contours.append(roi)
        observations.append(_item(ObservationNumber=n, ReferencedROINumber=n, ROIObservationLabel=name[:16],
                                  RTROIInterpretedType="", ROIInterpreter=""))
    rt.StructureSetROISequence = DicomSequence(rois)
    rt.ROIContourSequence = DicomSequence(roi_contours)
    rt.RTROIObservationsSequence = DicomSequence(observations)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        rt.save_as(tmp, enforce_file_format=True)
    log.info("wrote RTSTRUCT with %d ROI(s)", len(names))
    return out_path


def read_rtstruct_mask(rt_path: PathLike, source_files: Sequence[PathLike], roi_name: str | None = None) -> Volume:
    """Rasterise an RTSTRUCT's CLOSED_PLANAR contours onto the source series grid (the affine of
    :func:`~autopaint.imaging.io.read_dicom_series`). ``roi_name``: that ROI as 0/1; ``None``: all
    ROIs, valued by their position in StructureSetROISequence (1..N; a later ROI wins an overlap).

    Contours are matched to frames by position (within half a slice of a frame plane; the
    ContourImageSequence is not needed), on one plane they combine by the even-odd rule, and a pixel is
    inside when its centre is (``skimage.draw.polygon``). Contours off the series are skipped."""
    series = _read_series(source_files, need_uids=False)
    vol = _empty_volume(series)
    idx = _frame_indices(series, vol.affine, vol.shape)
    try:
        rt = pydicom.dcmread(str(rt_path))
        rois = list(rt.StructureSetROISequence)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
        raise InvalidInput(f"not a readable RTSTRUCT: {exc}", code="not_dicom") from exc
    for_uid = series.headers[0].FrameOfReferenceUID
    names = [str(r.get("ROIName", "")) for r in rois]
    if roi_name is not None and roi_name not in names:
        raise InvalidInput(f"ROI {roi_name!r} not in the RTSTRUCT ({names})", code="roi_not_found")
    normal = series.normal
    depth = series.positions @ normal
    half_slice = (float(np.median(np.diff(np.sort(depth)))) if len(depth) > 1
                  else float(series.headers[0].get("SliceThickness") or 1.0)) / 2.0
    inv2 = np.linalg.pinv(np.stack([series.col_step, series.row_step], axis=1))  # LPS offset -> (r, c)
    frames = np.zeros((len(series.headers), series.rows, series.cols), dtype=vol.data.dtype)
    skipped = 0
    by_number: dict[int, list[Dataset]] = {}
    for rc in rt.get("ROIContourSequence", []):
        by_number.setdefault(int(rc.ReferencedROINumber), []).append(rc)
    for value, roi in enumerate(rois, start=1):
        if roi_name is not None and roi.ROIName != roi_name:
            continue
        if for_uid and roi.get("ReferencedFrameOfReferenceUID", for_uid) != for_uid:
            raise InvalidInput(f"ROI {roi.ROIName!r} is in another frame of reference", code="grid_mismatch")
        pixels: dict[int, list[np.ndarray]] = {}  # frame -> flat pixel indices inside each contour
        for rc in by_number.get(int(roi.ROINumber), []):
            for c in rc.get("ContourSequence", []):
                if c.get("ContourGeometricType") != "CLOSED_PLANAR":
                    continue
                pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
                d = pts @ normal
                f = int(np.argmin(np.abs(depth - d.mean())))
                if np.max(np.abs(d - depth[f])) > half_slice:
                    skipped += 1
                    continue
                r, cc = inv2 @ (pts - series.positions[f]).T
                rr, cc = polygon(r, cc, shape=(series.rows, series.cols))
                pixels.setdefault(f, []).append(rr * series.cols + cc)
        for f, parts in pixels.items():
            flat, counts = np.unique(np.concatenate(parts), return_counts=True)
            frames[f].flat[flat[counts % 2 == 1]] = 1 if roi_name is not None else value  # even-odd rule
    for f, ijk in enumerate(idx):
        vol.data[ijk] = frames[f]
    if skipped:
        log.warning("skipped %d contour(s) outside the series", skipped)
    return vol
