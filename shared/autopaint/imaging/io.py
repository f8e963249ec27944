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
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autopaint.errors import InvalidInput
from autopaint.fsutil import atomic_path
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
    nimg = nib.load(str(path))
    if not isinstance(nimg, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidInput("not a NIfTI image", code="not_nifti")
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

# DICOM tags read with SimpleITK (flat, top-level elements; "group|element" keys).
_FLAT_TAGS = {
    "modality": "0008|0060",
    "weight_kg": "0010|1030",
    "units": "0054|1001",
    "decay_correction": "0054|1102",
    "series_date": "0008|0021",
    "series_time": "0008|0031",
    "acquisition_date": "0008|0022",
    "acquisition_time": "0008|0032",
}
SUV_KEYS = ("weight_kg", "injected_dose_bq", "delay_s", "half_life_s", "units")


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


def _flat_tags(first_file: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    reader.LoadPrivateTagsOn()
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    return {name: reader.GetMetaData(tag).strip() for name, tag in _FLAT_TAGS.items()
            if tag in keys and reader.GetMetaData(tag).strip()}


def _radiopharmaceutical(first_file: str) -> dict[str, str]:
    """RadiopharmaceuticalInformationSequence (0054,0016), first item.

    SimpleITK/GDCM skip sequence (SQ) elements when filling the metadata dictionary, so this one
    nested sequence is read with pydicom (header only, no pixel data).
    """
    import pydicom

    ds = pydicom.dcmread(first_file, stop_before_pixels=True, specific_tags=[(0x0054, 0x0016)])
    seq = ds.get((0x0054, 0x0016))
    if seq is None or not seq.value:
        return {}
    item = seq.value[0]
    out: dict[str, str] = {}
    for name, tag in (("dose", (0x0018, 0x1074)), ("half_life", (0x0018, 0x1075)),
                      ("start_time", (0x0018, 0x1072)), ("start_datetime", (0x0018, 0x1078))):
        if tag in item and item[tag].value not in (None, ""):
            out[name] = str(item[tag].value).strip()
    return out


def pet_suv_tags(first_file: str | Path) -> dict[str, Any]:
    """PET SUV-relevant tags of one DICOM file (all slices of a series share them).

    Keys always present (``None`` when the file lacks them; ``missing`` lists those):
    ``weight_kg`` (PatientWeight 0010,1030), ``injected_dose_bq`` (RadionuclideTotalDose 0018,1074),
    ``half_life_s`` (RadionuclideHalfLife 0018,1075), ``delay_s`` (series date/time 0008,0021/0031 —
    else acquisition 0008,0022/0032 — minus RadiopharmaceuticalStartDateTime 0018,1078, else
    StartTime 0018,1072 on the series date; +24 h when it crosses midnight), ``units`` (0054,1001,
    e.g. ``BQML``). Also ``modality``, ``decay_correction`` (0054,1102), ``delay_reference``
    (``series`` or ``acquisition``). Not handled: vendor private dose tags (e.g. Philips SUV scale
    factor 7053,1000), lean-body-mass inputs (height, sex).
    """
    first = str(first_file)
    flat = _flat_tags(first)
    rp = _radiopharmaceutical(first)
    out: dict[str, Any] = {k: None for k in SUV_KEYS}
    out["modality"] = flat.get("modality")
    out["decay_correction"] = flat.get("decay_correction")
    out["units"] = flat.get("units")
    for key, src, raw in (("weight_kg", "flat", flat.get("weight_kg")),
                          ("injected_dose_bq", "rp", rp.get("dose")),
                          ("half_life_s", "rp", rp.get("half_life"))):
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            log.warning("unparsable %s tag (%s)", key, src)
            value = None
        out[key] = value if value is not None and np.isfinite(value) and value > 0 else None
    ref, ref_name = _parse_dicom_datetime(flat.get("series_date"), flat.get("series_time")), "series"
    if ref is None:
        ref = _parse_dicom_datetime(flat.get("acquisition_date"), flat.get("acquisition_time"))
        ref_name = "acquisition"
    start = _parse_dicom_datetime(None, rp.get("start_datetime")) if rp.get("start_datetime") else None
    if start is None and ref is not None:
        start = _parse_dicom_datetime(ref.strftime("%Y%m%d"), rp.get("start_time"))
        if start is not None and start > ref:
            start -= datetime.timedelta(days=1)  # injected before midnight, scanned after
    if ref is not None and start is not None:
        out["delay_s"] = (ref - start).total_seconds()
        out["delay_reference"] = ref_name
    out["missing"] = [k for k in SUV_KEYS if out[k] is None]
    return out


def read_dicom_series(directory: str | Path, series_id: str | None = None) -> tuple[Volume, dict[str, Any]]:
    """Read one DICOM series (a folder of slices) into a float32 Volume and its PET SUV tags.

    Pixel values are rescaled (RescaleSlope/Intercept per slice): HU for CT, the stored units for PET
    (see ``tags["units"]``). Slice order and geometry come from SimpleITK/GDCM (ImagePositionPatient
    along the slice normal). ``series_id``: which series when the folder holds several (default: the
    first GDCM finds). The dict is described in :func:`pet_suv_tags`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"DICOM series folder not found: {directory.name!r}", code="not_dicom")
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(directory))
    if not ids:
        raise InvalidInput("no DICOM series found in the folder", code="not_dicom")
    sid = series_id if series_id is not None else ids[0]
    files = reader.GetGDCMSeriesFileNames(str(directory), sid)
    if not files:
        raise InvalidInput(f"DICOM series {sid!r} not found", code="not_dicom")
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    img = reader.Execute()
    vol = from_sitk(img, dtype=np.float32)
    tags: dict[str, Any] = pet_suv_tags(files[0])
    tags["n_series_in_folder"] = len(ids)
    tags["n_files"] = len(files)
    log.info("read DICOM series: %s voxels, modality %s", vol.shape, tags.get("modality"))
    return vol, tags
