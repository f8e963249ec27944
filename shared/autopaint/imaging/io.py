"""Reading and writing images: the ONLY module that converts nibabel / SimpleITK objects to and from
:class:`~autopaint.imaging.volume.Volume`.

Conventions solved here once:

* A ``Volume`` holds ``data[i, j, k]`` and a RAS+ affine (nibabel's convention, millimetres).
* SimpleITK works in LPS+ world coordinates and its numpy view is ordered ``(k, j, i)``;
  :func:`to_sitk` / :func:`from_sitk` flip x and y and transpose the array.
* Files we write start from a fresh NIfTI-1 header: sform = qform = the affine with code 1
  (scanner), units mm, no ``descrip`` / ``aux_file`` / ``intent_name`` / ``db_name`` free text and no
  header extensions (they may carry PHI). A Volume carries no NIfTI header at all, so nothing from an
  input header can leak into an output. Writes are atomic: temporary file in the target directory,
  fsync, ``os.replace``.

Untrusted files must pass :func:`autopaint.imaging.validate.validate_nifti` before being read here.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from autopaint.errors import InvalidInput
from autopaint.fsutil import atomic_path
from autopaint.imaging.suv import injection_time, scan_reference_time
from autopaint.imaging.validate_header import ValidationLimits
from autopaint.imaging.volume import Volume

log = logging.getLogger(__name__)

Backend = Literal["nibabel", "sitk"]

# RAS <-> LPS: negate world x and y. The same matrix converts both ways.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _check_suffix(path: Path) -> None:
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise InvalidInput(f"not a .nii or .nii.gz file name: {path.name!r}", code="not_nifti")


def _as_3d(data: np.ndarray) -> np.ndarray:
    """Drop trailing singleton dimensions beyond 3 and pad 2D images to (I, J, 1)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim != 3:
        raise InvalidInput(f"expected a 3D image, got shape {data.shape}", code="too_many_dims")
    return data


# ----------------------------------------------------------------------------------------- SimpleITK


def to_sitk(vol: Volume) -> sitk.Image:
    """Volume (RAS+, ``data[i, j, k]``) -> SimpleITK image (LPS+, array ``(k, j, i)``).

    The affine's 3x3 part is split into spacing (column norms, mm) and direction (unit columns);
    a shear cannot be represented by SimpleITK and is rejected (``bad_affine``).
    """
    spacing = vol.spacing
    direction_ras = vol.affine[:3, :3] / spacing
    if not np.allclose(direction_ras.T @ direction_ras, np.eye(3), atol=1e-4):
        raise InvalidInput("affine has a shear; SimpleITK needs orthogonal axes", code="bad_affine")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(vol.data, (2, 1, 0))), isVector=False)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (_FLIP_XY @ direction_ras).ravel()))
    img.SetOrigin(tuple(float(v) for v in _FLIP_XY @ vol.affine[:3, 3]))
    return img


def from_sitk(img: sitk.Image, dtype: Any = np.float32) -> Volume:
    """SimpleITK 3D image (LPS+) -> Volume (RAS+, ``data[i, j, k]``); ``dtype=None`` keeps the pixel type."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInput(
            f"expected a scalar 3D image, got {img.GetDimension()}D with "
            f"{img.GetNumberOfComponentsPerPixel()} components", code="too_many_dims")
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _FLIP_XY @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = _FLIP_XY @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return Volume(np.ascontiguousarray(arr), affine)


# ------------------------------------------------------------------------------------------- reading


def load_nifti(path: str | Path, **kwargs: Any) -> Any:
    """``nib.load`` of a NIfTI-1/2 file with its affine computed; a header nibabel refuses (it raises
    ``ValueError`` / ``HeaderDataError`` / ``ImageFileError`` for, e.g., a qform quaternion longer
    than 1) is ``InvalidInput`` ``unreadable_nifti``, never an unhandled error. ``validate_nifti``
    refuses such headers first; this is the net under it (worker, CLI, API ingest)."""
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        nimg = nib.load(str(path), **kwargs)
        if not isinstance(nimg, nib.Nifti1Image | nib.Nifti2Image):
            raise InvalidInput("not a NIfTI image", code="not_nifti")
        _ = nimg.affine
    except (ValueError, HeaderDataError, ImageFileError) as exc:
        raise InvalidInput(f"nibabel cannot read this NIfTI header: {exc}", code="unreadable_nifti") from exc
    return nimg


def read_volume(path: str | Path, backend: Backend = "nibabel", dtype: Any = np.float32) -> Volume:
    """Read a .nii / .nii.gz file into a Volume.

    ``data`` has shape (I, J, K) in the file's voxel order (no reorientation), scaled by
    scl_slope/scl_inter, cast to ``dtype`` (``None``: the stored type for nibabel when unscaled, the
    pixel type for SimpleITK). A trailing singleton 4th dimension is dropped; 2D images become
    (I, J, 1). The affine is RAS+ mm (nibabel: sform if its code > 0, else qform).
    """
    path = Path(path)
    _check_suffix(path)
    if backend == "sitk":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("NiftiImageIO")
        img = reader.Execute()
        if img.GetDimension() == 4 and img.GetSize()[3] == 1:
            img = img[:, :, :, 0]
        return from_sitk(img, dtype=dtype)
    if backend != "nibabel":
        raise ValueError(f"unknown backend {backend!r}")
    nimg = load_nifti(path)
    if dtype is None:
        slope, inter = nimg.header.get_slope_inter()
        scaled = slope not in (None, 1.0) or inter not in (None, 0.0)
        data = np.asarray(nimg.dataobj) if not scaled else np.asarray(nimg.dataobj, dtype=np.float32)
    else:
        data = np.asarray(nimg.dataobj, dtype=dtype)
    return Volume(np.ascontiguousarray(_as_3d(data)), np.asarray(nimg.affine, dtype=np.float64))


# ------------------------------------------------------------------------------------------- writing


def _cast(data: np.ndarray, dtype: Any) -> np.ndarray:
    """Cast for writing: integer dtypes are rounded and clipped to their range, others cast."""
    target = np.dtype(dtype)
    if np.issubdtype(target, np.integer) and not np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(target)
        clean = np.nan_to_num(data.astype(np.float64), nan=0.0, posinf=info.max, neginf=info.min)
        return np.clip(np.rint(clean), info.min, info.max).astype(target)
    if np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        return np.clip(data, info.min, info.max).astype(target)
    return data.astype(target)


def _write_nibabel(data: np.ndarray, affine: np.ndarray, tmp: Path) -> None:
    hdr = nib.Nifti1Header()  # fresh: empty descrip/aux_file/intent_name/db_name, no extensions
    hdr.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, affine, header=hdr)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header.set_slope_inter(1.0, 0.0)
    img.to_filename(str(tmp))


def _write_sitk(data: np.ndarray, affine: np.ndarray, tmp: Path) -> None:
    img = to_sitk(Volume(data, affine))
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(tmp))
    writer.SetImageIO("NiftiImageIO")
    writer.SetUseCompression(tmp.name.endswith(".gz"))
    writer.Execute(img)


def write_volume(vol: Volume, path: str | Path, dtype: Any = None, backend: Backend = "nibabel") -> Path:
    """Write ``vol`` to ``path`` (.nii or .nii.gz) atomically and return the path.

    ``dtype``: stored type, e.g. ``np.int16`` for CT in HU, ``np.uint8`` for masks (values are rounded
    and clipped for integer types); default float32. The header is fresh: sform = qform = the affine
    (code 1), mm units, no free-text fields, no extensions. The file appears complete or not at all.
    """
    path = Path(path)
    _check_suffix(path)
    data = _cast(np.asarray(vol.data), np.float32 if dtype is None else dtype)
    if backend not in ("sitk", "nibabel"):
        raise ValueError(f"unknown backend {backend!r}")
    with atomic_path(path) as tmp:
        if backend == "sitk":
            _write_sitk(data, vol.affine, tmp)
        else:
            _write_nibabel(data, vol.affine, tmp)
    log.debug("wrote %s %s %s", path.name, data.shape, data.dtype)
    return path


# ------------------------------------------------------------------------------------------- DICOM

# Objects that share folders with image series but are not slices: skipped when scanning.
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "SR", "PR", "KO", "REG", "DOC"}
SUV_KEYS = ("weight_kg", "injected_dose_bq", "delay_s", "half_life_s", "units")
SLICE_SPACING_TOLERANCE = 0.01  # largest relative deviation of one slice step from the median step
_SLICE_HEADER = ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient")


def _parse_dicom_datetime(date: str | None, time: str | None) -> datetime.datetime | None:
    """DICOM DA ``YYYYMMDD`` + TM ``HHMMSS[.ffffff]`` (or a DT in ``time`` when ``date`` is None)."""
    if not time:
        return None
    text = time.strip().split("+")[0].split("-")[0]
    if date is None and len(text) >= 14:  # DT: YYYYMMDDHHMMSS.ffffff
        date, text = text[:8], text[8:]
    if not date or len(date.strip()) != 8:
        return None
    hhmmss, _, frac = text.partition(".")
    hhmmss = hhmmss.ljust(6, "0")
    try:
        base = datetime.datetime.strptime(date.strip() + hhmmss[:6], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    return base + datetime.timedelta(microseconds=micro)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip()


def _positive(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _private(ds: Dataset, group: int, offset: int, creator: str) -> str:
    """A private element's value as text (by its creator; the bare (gggg,10xx) tag when no creator)."""
    elem: Any
    try:
        elem = ds.get_private_item(group, offset, creator)
    except KeyError:
        elem = ds.get((group, 0x1000 + offset)) if (group, 0x0010) not in ds else None
    value = None if elem is None else elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore").strip("\0 ")
    return "" if value is None else str(value).strip()


def _datetime(ds: Dataset, prefix: str) -> datetime.datetime | None:
    if _text(ds, prefix + "DateTime"):
        return _parse_dicom_datetime(None, _text(ds, prefix + "DateTime"))
    return _parse_dicom_datetime(_text(ds, prefix + "Date"), _text(ds, prefix + "Time"))


def _suv_tags(slices: list[Dataset]) -> dict[str, Any]:
    """SUV inputs of a series (see :func:`pet_suv_tags`); the scan time needs every slice."""
    first = slices[0]
    seq = first.get("RadiopharmaceuticalInformationSequence")
    rp = seq[0] if seq else None
    ref, ref_name = scan_reference_time(
        _datetime(first, "Series"), [t for ds in slices if (t := _datetime(ds, "Acquisition")) is not None],
        _parse_dicom_datetime(None, _private(first, 0x0009, 0x0D, "GEMS_PETD_01")))
    day = _text(first, "SeriesDate") or (ref.strftime("%Y%m%d") if ref else "")
    inj, note = injection_time(_parse_dicom_datetime(None, _text(rp, "RadiopharmaceuticalStartDateTime")),
                               _parse_dicom_datetime(day, _text(rp, "RadiopharmaceuticalStartTime")), ref)
    corrected = first.get("CorrectedImage")
    out: dict[str, Any] = {
        "origin": "dicom", "modality": _text(first, "Modality") or None, "units": _text(first, "Units") or None,
        "decay_correction": _text(first, "DecayCorrection") or None, "suv_type": _text(first, "SUVType") or None,
        "corrected_image": [str(v) for v in ([corrected] if isinstance(corrected, str) else corrected or [])],
        "weight_kg": _positive(first.get("PatientWeight")),
        "injected_dose_bq": _positive(rp.get("RadionuclideTotalDose") if rp else None),
        "half_life_s": _positive(rp.get("RadionuclideHalfLife") if rp else None),
        "injection_time": inj.isoformat() if inj else None, "reference_time": ref.isoformat() if ref else None,
        "delay_reference": ref_name, "delay_s": (ref - inj).total_seconds() if ref and inj else None,
        "philips_suv_scale": _positive(_private(first, 0x7053, 0x00, "Philips PET Private Group")),
        "philips_activity_scale": _positive(_private(first, 0x7053, 0x09, "Philips PET Private Group")),
        "suv_notes": [note] if note else [],
    }
    out["missing"] = [k for k in SUV_KEYS if out[k] is None]
    return out


def pet_suv_tags(first_file: str | Path) -> dict[str, Any]:
    """PET SUV inputs of one DICOM file (``read_dicom_series`` uses every slice of the series).

    Keys (``None`` when absent; ``missing`` lists those of ``SUV_KEYS``): ``origin`` (``"dicom"``),
    ``modality``, ``units`` (0054,1001), ``decay_correction`` (0054,1102), ``suv_type`` (0054,1006),
    ``corrected_image`` (0028,0051), ``weight_kg`` (PatientWeight 0010,1030), ``injected_dose_bq``
    (0018,1074), ``half_life_s`` (0018,1075), ``injection_time`` and ``reference_time`` (ISO 8601),
    ``delay_reference`` (``series``, ``acquisition`` or ``ge-private``), ``delay_s``,
    ``philips_suv_scale`` (7053,1000), ``philips_activity_scale`` (7053,1009), ``suv_notes``. The
    rules (QIBA scan time, injection time, midnight) are those of :mod:`autopaint.imaging.suv`.
    """
    try:
        ds = pydicom.dcmread(str(first_file), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on garbage
        raise InvalidInput("not a readable DICOM file", code="not_dicom") from exc
    return _suv_tags([ds])


def _read_slice_header(path: Path) -> Dataset | None:
    """Header (no pixel data) of an image slice; None for non-DICOM files and non-image objects."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not DICOM, truncated...: not part of any series
        return None
    if _text(ds, "Modality").upper() in _NON_IMAGE_MODALITIES or any(k not in ds for k in _SLICE_HEADER):
        return None
    return ds


def _scan(directory: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Image slices under ``directory`` (recursively, hidden names skipped) by SeriesInstanceUID."""
    found: dict[str, list[tuple[Path, Dataset]]] = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            ds = _read_slice_header(Path(root) / name)
            if ds is not None:
                found.setdefault(_text(ds, "SeriesInstanceUID") or "unknown", []).append((Path(root) / name, ds))
    return found


def _describe(found: dict[str, list[tuple[Path, Dataset]]]) -> list[dict[str, Any]]:
    return [{"series_instance_uid": uid, "modality": _text(items[0][1], "Modality") or None,
             "n_files": len(items), "description": _text(items[0][1], "SeriesDescription") or None}
            for uid, items in found.items()]


def list_dicom_series(directory: str | Path) -> list[dict[str, Any]]:
    """The image series under ``directory``: ``series_instance_uid``, ``modality``, ``n_files``,
    ``description`` (non-DICOM files and non-image objects such as RTSTRUCT or SEG are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"DICOM series folder not found: {directory.name!r}", code="not_dicom")
    return _describe(_scan(directory))


def _geometry_error(message: str) -> InvalidInput:
    return InvalidInput(message, code="dicom_geometry")


def _stack(items: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """Sort the slices along their normal, check that they form a regular grid, return the RAS affine."""
    dss = [ds for _, ds in items]
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in dss})
    if len(sizes) > 1:
        raise _geometry_error(f"slices have different sizes (rows x columns): {sizes}")
    if any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in dss):
        raise _geometry_error("multi-frame DICOM images are not supported")
    try:
        iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in dss]).reshape(len(dss), 6)
        ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in dss]).reshape(len(dss), 3)
        ps = np.array([[float(v) for v in ds.PixelSpacing] for ds in dss]).reshape(len(dss), 2)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _geometry_error("ImagePositionPatient, ImageOrientationPatient or PixelSpacing missing or "
                              "malformed") from exc
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise _geometry_error("slices have different orientations (ImageOrientationPatient)")
    if np.abs(ps - ps[0]).max() > 1e-4 * ps[0].max() or ps.min() <= 0:
        raise _geometry_error("slices have different or non-positive PixelSpacing")
    row, col = iop[0, :3], iop[0, 3:]
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1), abs(row @ col)) > 1e-3:
        raise _geometry_error("ImageOrientationPatient is not two orthogonal unit vectors")
    normal = np.cross(row, col)
    order = np.argsort(ipp @ normal, kind="stable")
    ipp = ipp[order]
    pos = ipp @ normal
    step = _positive(dss[0].get("SpacingBetweenSlices")) or _positive(dss[0].get("SliceThickness")) or 1.0
    if len(pos) > 1:
        d = np.diff(pos)
        if d.min() < 1e-3:
            raise _geometry_error(f"{int((d < 1e-3).sum()) + 1} slices share a position along the slice normal "
                                  "(dynamic, multi-phase or duplicated series?)")
        step = float(np.median(d))
        dev = np.abs(d - step) / step
        k = int(np.argmax(dev))
        if dev[k] > SLICE_SPACING_TOLERANCE:
            gap = d[k] / step - 1
            if round(gap) >= 1 and abs(gap - round(gap)) < 0.1:
                raise _geometry_error(f"missing slice(s): a gap of {d[k]:.4g} mm between slices at {pos[k]:.2f} and "
                                      f"{pos[k + 1]:.2f} mm where the spacing is {step:.4g} mm "
                                      f"(about {round(gap)} missing)")
            raise _geometry_error(f"uneven slice spacing: steps from {d.min():.4g} to {d.max():.4g} mm, more than "
                                  f"{SLICE_SPACING_TOLERANCE:.0%} from the median {step:.4g} mm")
        drift = np.linalg.norm((ipp - ipp[0]) - np.outer(pos - pos[0], normal), axis=1).max()
        if drift > 0.5 * ps[0].min():
            raise _geometry_error(f"slice positions drift {drift:.3g} mm in-plane along the stack (gantry tilt?)")
    lps = np.column_stack([row * ps[0, 1], col * ps[0, 0], normal * step])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = _FLIP_XY @ lps, _FLIP_XY @ ipp[0]
    return [items[i] for i in order], affine


def read_dicom_series(directory: str | Path, series_uid: str | None = None) -> tuple[Volume, dict[str, Any]]:
    """Read one DICOM image series under ``directory`` (searched recursively) into a float32 Volume.

    Non-DICOM files and non-image objects (RTSTRUCT, SEG...) are skipped. Several series and no
    ``series_uid``: ``multiple_series`` (the message lists UID, modality and file count; see
    :func:`list_dicom_series`); an unknown ``series_uid``: ``series_not_found``. The geometry comes
    from ImagePositionPatient / ImageOrientationPatient / PixelSpacing and is checked: different
    sizes, orientations or pixel spacings, a missing slice, spacing more than 1 % uneven or in-plane
    drift (tilt) raise ``dicom_geometry``. Pixel values are rescaled per slice (HU for CT, the stored
    units for PET, see ``tags["units"]``).

    The dict holds the keys of :func:`pet_suv_tags` (scan time from all slices) plus
    ``series_instance_uid``, ``study_instance_uid``, ``frame_of_reference_uid``,
    ``series_description``, ``files`` (paths in slice order, k = 0 first), ``n_files``,
    ``n_series_in_folder``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"DICOM series folder not found: {directory.name!r}", code="not_dicom")
    found = _scan(directory)
    listing = "; ".join(f"{s['series_instance_uid']} ({s['modality']}, {s['n_files']} files)" for s in _describe(found))
    if not found:
        raise InvalidInput("no DICOM image series found in the folder", code="not_dicom")
    if series_uid is None and len(found) > 1:
        raise InvalidInput(f"the folder holds {len(found)} DICOM series, choose one by SeriesInstanceUID: "
                           f"{listing}", code="multiple_series")
    uid = series_uid if series_uid is not None else next(iter(found))
    if uid not in found:
        raise InvalidInput(f"DICOM series {uid!r} not found; the folder holds: {listing}", code="series_not_found")
    unique: dict[str, tuple[Path, Dataset]] = {}
    for path, ds in found[uid]:  # the same instance twice (a copied file) counts once
        unique.setdefault(_text(ds, "SOPInstanceUID") or str(path), (path, ds))
    items, affine = _stack(list(unique.values()))
    rows, cols, n = int(items[0][1].Rows), int(items[0][1].Columns), len(items)
    if rows * cols * n > ValidationLimits().max_voxels:
        raise InvalidInput(f"DICOM series has {rows * cols * n} voxels, limit {ValidationLimits().max_voxels}",
                           code="too_many_voxels")
    files = [str(p) for p, _ in items]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInput("could not decode the DICOM pixel data", code="dicom_unreadable") from exc
    if img.GetSize() != (cols, rows, n) or img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInput(f"DICOM pixel data is {img.GetSize()}, headers say {(cols, rows, n)}",
                           code="dicom_unreadable")
    vol = Volume(np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))), affine)
    tags = _suv_tags([ds for _, ds in items])
    first = items[0][1]
    tags.update(series_instance_uid=uid, study_instance_uid=_text(first, "StudyInstanceUID") or None,
                frame_of_reference_uid=_text(first, "FrameOfReferenceUID") or None,
                series_description=_text(first, "SeriesDescription") or None, files=files, n_files=n,
                n_series_in_folder=len(found))
    log.info("read DICOM series: %s voxels, modality %s", vol.shape, tags.get("modality"))
    return vol, tags
