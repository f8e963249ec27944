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
* DICOM series: :mod:`autopaint.imaging.dicom_headers` reads the headers (pydicom: which series, the
  slice geometry as an LPS+ affine, a PET's SUV inputs); :func:`read_dicom_series` reads the pixels
  (SimpleITK) and flips that affine to RAS+.

Untrusted files must pass :func:`autopaint.imaging.validate.validate_nifti` before being read here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autopaint.errors import InvalidInput
from autopaint.fsutil import atomic_path
from autopaint.imaging.dicom_headers import find_series, series_tags, stack_slices
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


def read_dicom_series(directory: str | Path, series_uid: str | None = None) -> tuple[Volume, dict[str, Any]]:
    """Read one DICOM image series under ``directory`` (searched recursively) into a float32 Volume.

    Non-DICOM files and non-image objects (RTSTRUCT, SEG...) are skipped. Several series and no
    ``series_uid``: ``multiple_series`` (the message lists UID, modality and file count; see
    :func:`autopaint.imaging.dicom_headers.list_dicom_series`); an unknown ``series_uid``:
    ``series_not_found``. The geometry comes from ImagePositionPatient / ImageOrientationPatient /
    PixelSpacing and is checked: different sizes, orientations or pixel spacings, a missing slice,
    spacing more than 1 % uneven or in-plane drift (tilt) raise ``dicom_geometry``. Pixel values are
    rescaled per slice (HU for CT, the stored units for PET, see ``tags["units"]``).

    The dict holds the keys of :func:`autopaint.imaging.dicom_headers.pet_suv_tags` (scan time from
    all slices) plus ``series_instance_uid``, ``study_instance_uid``, ``frame_of_reference_uid``,
    ``series_description``, ``files`` (paths in slice order, k = 0 first), ``n_files``,
    ``n_series_in_folder``. The headers are read by :mod:`autopaint.imaging.dicom_headers`.
    """
    uid, found, n_series = find_series(directory, series_uid)
    items, affine_lps = stack_slices(found)
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
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = _FLIP_XY @ affine_lps[:3, :3], _FLIP_XY @ affine_lps[:3, 3]
    vol = Volume(np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))), affine)
    tags = series_tags(items, uid, n_series)
    log.info("read DICOM series: %s voxels, modality %s", vol.shape, tags.get("modality"))
    return vol, tags
