"""Turning an uploaded file into a stored input: header-first validation, PHI stripping, storage.

NIfTI, per file (DESIGN.md §5.6, §5.8): (1) while streaming, the first 64 KiB go through
``check_header_bytes`` (dims, voxel count, dtype, affine... before the rest is even received);
(2) the complete file goes through ``validate_nifti`` (gzip-bomb safe: bounded by the declared
voxel count) and, with both CT and PET, ``validate_pair`` (overlap of the world boxes); (3) the
volume is re-written through ``autopaint.imaging.io.write_volume`` (a fresh header: no descrip,
aux_file, intent_name, db_name, no extensions) keeping its stored dtype — streamed in z-slabs of about
``SLAB_BYTES`` (:func:`write_clean_nifti`: the API never holds a whole CT; the same bytes as
``write_volume`` gives); (4) that clean file is put in storage under ``jobs/<id>/inputs/<role>.nii.gz``
and its sha256 recorded. (A NIfTI PET whose units are checked is read whole: the rule needs its values.)

DICOM (CT or PET uploaded as a zip of one series, told by content): (1) unpacked safely
(``imaging.dicom_zip.extract_series_zip``: traversal, links, bombs -> ``bad_zip`` /
``zip_too_large``; caps from the settings); (2) read with its geometry checked
(``imaging.io.read_dicom_series``: ``not_dicom``, ``multiple_series`` — ``ct_series_uid`` /
``pet_series_uid`` pick one —, ``series_not_found``, ``dicom_geometry``, ``dicom_unreadable``,
``too_many_voxels``) and its modality checked (CT / PT, else ``modality_mismatch``); (3) the CT/PET
world boxes must overlap as for NIfTI (``pet_ct_no_overlap``); (4) a fresh zip of exactly the
series' files (``00001.dcm``... in slice order; the headers are kept: the SEG / RTSTRUCT results
reference them) is stored under ``jobs/<id>/inputs/<role>.dicom.zip``.

The PET's units (both formats) by the one rule, :func:`autopaint.imaging.suv.pet_in_suv`, on the
volume read for storing: DICOM headers or the caller's statement, then the plausibility guard
(``missing_suv_info``, ``pet_units_implausible``...), so a job is never accepted and then failed for
its units. These run in a worker thread (numpy, SimpleITK, pydicom); the API never imports torch.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from autopaint.contracts import StoredInput, SuvInputs
from autopaint.errors import InvalidInput
from autopaint.storage import Storage, input_key

if TYPE_CHECKING:
    from autopaint.imaging.validate import Role
    from autopaint.imaging.volume import Volume
    from autopaint.settings import Settings

log = logging.getLogger(__name__)

VALIDATE_ROLE: dict[str, Role] = {"ct": "ct", "pet": "pet", "organ_mask": "mask", "label": "mask"}
"""Input role -> the validation rules it gets."""
DICOM_MODALITY = {"ct": "CT", "pet": "PT"}
"""The DICOM Modality a CT / PET series must have."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same series always zips to the same bytes
SLAB_BYTES = 16 << 20
"""About how many voxel bytes :func:`write_clean_nifti` holds at once."""


@dataclass(frozen=True)
class DicomCaps:
    """Caps on one uploaded DICOM zip: unpacked bytes, files, voxels of the series."""

    max_total_bytes: int
    max_files: int
    max_voxels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DicomCaps:
        return cls(settings.max_dicom_bytes, settings.max_dicom_files, settings.max_voxels)


@dataclass
class DicomSeries:
    """A validated DICOM series upload: where it was unpacked, its volume and its header tags
    (``files`` in slice order, ``modality``, ``series_instance_uid``, the SUV tags...)."""

    folder: Path
    volume: Volume
    tags: dict[str, Any] = field(default_factory=dict)


def limits_for(max_voxels: int, max_file_bytes: int) -> Any:
    from autopaint.imaging.validate import ValidationLimits

    return ValidationLimits(max_voxels=max_voxels, max_file_bytes=max_file_bytes)


def check_head(head: bytes, limits: Any) -> None:
    """Header-first check of a streamed file's first bytes (raises ``InvalidInput``)."""
    from autopaint.imaging.validate import check_header_bytes  # re-exported from validate_header

    check_header_bytes(head, None, None, limits)


def read_dicom_zip(role: str, zip_path: Path, workdir: Path, caps: DicomCaps,
                   series_uid: str | None = None) -> DicomSeries:
    """Unpack a CT/PET zip into ``workdir``, read its one series (or ``series_uid``) with the geometry
    checks and check its modality and size (raises ``InvalidInput``; see the module doc)."""
    from autopaint.imaging.dicom_zip import extract_series_zip
    from autopaint.imaging.io import read_dicom_series

    folder = extract_series_zip(zip_path, workdir, caps.max_total_bytes, caps.max_files, name=f"dicom-{role}")
    vol, tags = read_dicom_series(folder, series_uid)
    modality = str(tags.get("modality") or "").upper()
    if modality != DICOM_MODALITY[role]:
        raise InvalidInput(f"the {role.upper()} zip holds a {modality or 'no-modality'} series, expected "
                           f"{DICOM_MODALITY[role]}", code="modality_mismatch")
    n = vol.shape[0] * vol.shape[1] * vol.shape[2]
    if n > caps.max_voxels:
        raise InvalidInput(f"DICOM series has {n} voxels, limit {caps.max_voxels}", code="too_many_voxels")
    return DicomSeries(folder, vol, tags)


def read_dicom_inputs(zips: Mapping[str, Path], workdir: Path, caps: DicomCaps,
                      series_uids: Mapping[str, str]) -> dict[str, DicomSeries]:
    """:func:`read_dicom_zip` of each CT/PET zip; a series UID for a role that is not a zip is refused."""
    extra = sorted(r for r in series_uids if r not in zips)
    if extra:
        raise InvalidInput(f"{', '.join(f'{r}_series_uid' for r in extra)} given but that input is not a DICOM "
                           "zip", code="invalid_params")
    return {role: read_dicom_zip(role, path, workdir, caps, series_uids.get(role)) for role, path in zips.items()}


def _no_overlap(overlap: float, min_overlap: float) -> InvalidInput:
    return InvalidInput(f"only {overlap:.0%} of the PET field of view lies inside the CT's (need "
                        f"{min_overlap:.0%}); are these the same study?", code="pet_ct_no_overlap")


def validate_files(paths: dict[str, Path], limits: Any,
                   dicom: Mapping[str, DicomSeries] | None = None) -> None:
    """Full validation of each uploaded NIfTI file, then of the PET/CT pair — NIfTI or DICOM, the same
    world-box overlap (raises ``InvalidInput``)."""
    from autopaint.imaging.validate import validate_nifti, validate_pair, world_overlap

    dicom = dicom or {}
    reports = {role: validate_nifti(path, VALIDATE_ROLE[role], limits) for role, path in paths.items()}
    if "ct" in paths and "pet" in paths:
        validate_pair(paths["ct"], paths["pet"], limits)
    elif {"ct", "pet"} <= set(paths) | set(dicom):
        # Volume and NiftiHeader both have .affine (RAS+ mm) and .shape: all world_overlap reads
        ct, pet = (dicom[r].volume if r in dicom else reports[r].header for r in ("ct", "pet"))
        overlap = world_overlap(cast(Any, ct), cast(Any, pet))
        if overlap < limits.min_overlap:
            raise _no_overlap(overlap, limits.min_overlap)


def check_pet_units(pet: Volume, dicom_tags: Mapping[str, Any] | None, suv: SuvInputs) -> Volume:
    """The PET in SUV by the one rule (DICOM headers, or the caller's statement for a NIfTI; then the
    plausibility guard unless ``suv.check_units`` is false); ``meta["suv_calibration"]`` says how."""
    from autopaint.imaging.suv import pet_in_suv

    return pet_in_suv(pet, dicom_tags, suv.suv_tags(), suv.suv_already, suv.check_units)


def _store_view(storage: Storage, job_id: str, role: str, vol: Volume, workdir: Path) -> dict[str, Any]:
    """The viewable copy of a CT/PET input: NIfTI, CT in HU, PET in SUV, a fresh header (no PHI)."""
    import numpy as np

    from autopaint.imaging.io import write_volume

    clean = write_volume(vol, workdir / f"view-{role}.nii.gz", dtype=np.float32)
    key = input_key(job_id, f"{role}-view")
    sha, n = storage.put_file(key, clean)
    return {"view_key": key, "view_sha256": sha, "view_bytes": n}


def zip_series(files: list[str], dest: Path) -> Path:
    """A fresh zip of exactly ``files`` (a series in slice order) as ``00001.dcm``, ``00002.dcm``...:
    fixed member times, so the same series gives the same bytes (and sha256)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i, src in enumerate(files, start=1):
            info = zipfile.ZipInfo(f"{i:05d}.dcm", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            with open(src, "rb") as fh, zf.open(info, "w") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
    return dest


def write_clean_nifti(src: Path, dest: Path, slab_bytes: int = SLAB_BYTES) -> Path:
    """Re-write the NIfTI ``src`` to ``dest`` (.nii.gz) with a fresh header, streaming its voxels in
    z-slabs of about ``slab_bytes``: the bytes of ``write_volume(read_volume(src, dtype=None), dest,
    dtype=<its dtype>)`` (stored dtype, native byte order; float32 when the file is scaled — that path
    gave float64 there, as ``read_volume`` misses a loaded image's scaling; trailing
    singleton dims dropped, 2D as (I, J, 1)) without holding the volume. Atomic (``atomic_path``)."""
    import nibabel as nib
    import numpy as np

    from autopaint.fsutil import atomic_path
    from autopaint.imaging.io import load_nifti

    img = load_nifti(src, keep_file_open=True)  # a header nibabel refuses: InvalidInput, not a 500
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise InvalidInput(f"expected a 3D image, got shape {img.shape}", code="too_many_dims")
    # a loaded image keeps its scaling on the proxy (the header's scl_* read NaN then)
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    scaled = slope != 1.0 or inter != 0.0
    dtype = np.dtype(np.float32) if scaled else img.get_data_dtype().newbyteorder("=")
    # the header write_volume makes (nibabel fills dims, pixdim, vox_offset): from a zero-stride array
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    affine = np.asarray(img.affine, dtype=np.float64)
    out = nib.Nifti1Image(np.broadcast_to(np.zeros((), dtype), shape), affine, header=hdr)
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    out.header.set_xyzt_units(xyz="mm", t="sec")
    out.header.set_slope_inter(1.0, 0.0)
    out.update_header()
    header = out.header
    header.set_data_offset(header.single_vox_offset)
    proxy = img.dataobj
    nz = max(1, slab_bytes // max(1, shape[0] * shape[1] * dtype.itemsize))
    extra = (0,) * (len(img.shape) - 3) if len(img.shape) > 3 else ()
    with atomic_path(dest) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as fh:  # no name, no time: same bytes
        header.write_to(fh)
        for z0 in range(0, shape[2], nz):
            if len(img.shape) == 2:
                slab = np.asarray(proxy[:, :])[:, :, np.newaxis]
            else:
                slab = np.asarray(proxy[(slice(None), slice(None), slice(z0, z0 + nz), *extra)])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                slab = np.clip(slab, info.min, info.max)
            fh.write(slab.astype(dtype, copy=False).tobytes(order="F"))
    return dest


def sanitize_and_store(
    storage: Storage, job_id: str, paths: dict[str, Path], workdir: Path,
    dicom: Mapping[str, DicomSeries] | None = None, suv: SuvInputs | None = None,
) -> dict[str, StoredInput]:
    """Check the PET's units (when ``suv`` is given), then store each input: a NIfTI re-written with
    a fresh header, a DICOM series as a fresh zip of its files. Returns ``{role: StoredInput}``."""
    from autopaint.imaging.io import read_volume

    dicom = dict(dicom or {})
    stored: dict[str, StoredInput] = {}
    for role in sorted({*paths, *dicom}, key=lambda r: r != "pet"):  # the PET first: its units may refuse
        if role in dicom:
            series = dicom[role]
            view = series.volume
            if role == "pet" and suv is not None:
                view = check_pet_units(series.volume, series.tags, suv)
            key = input_key(job_id, role, "dicom")
            sha, n = storage.put_file(key, zip_series(list(series.tags["files"]), workdir / f"clean-{role}.dicom.zip"))
            stored[role] = StoredInput(key=key, sha256=sha, bytes=n, format="dicom",
                                       series_instance_uid=str(series.tags.get("series_instance_uid") or ""),
                                       modality=DICOM_MODALITY[role],
                                       **_store_view(storage, job_id, role, view, workdir))  # type: ignore[typeddict-item]
            continue
        suv_pet = None
        if role == "pet" and suv is not None:  # the units rule needs the PET's values
            vol = read_volume(paths[role], dtype=None)
            suv_pet = check_pet_units(vol, None, suv)
            del vol
        clean = write_clean_nifti(paths[role], workdir / f"clean-{role}.nii.gz")
        key = input_key(job_id, role)
        sha, n = storage.put_file(key, clean)
        stored[role] = StoredInput(key=key, sha256=sha, bytes=n, format="nifti")
        factor = suv_pet.meta.get("suv_factor") if suv_pet is not None else None
        if suv_pet is not None and isinstance(factor, int | float) and factor != 1.0:  # a Bq/mL PET
            stored[role].update(_store_view(storage, job_id, role, suv_pet, workdir))  # type: ignore[typeddict-item]
    return stored
