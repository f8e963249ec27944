"""Turning an uploaded file into a stored input: header-first validation, PHI stripping, storage.

Order per file (DESIGN.md §5.6, §5.8): (1) while streaming, the first 64 KiB go through
``check_header_bytes`` (dims, voxel count, dtype, affine... before the rest is even received);
(2) the complete file goes through ``validate_nifti`` (gzip-bomb safe: bounded by the declared
voxel count) and, with both CT and PET, ``validate_pair`` (overlap of the world boxes); (3) the
volume is re-written through ``autopaint.imaging.io.write_volume`` (a fresh header: no descrip,
aux_file, intent_name, db_name, no extensions) keeping its stored dtype; (4) that clean file is
put in storage under ``jobs/<id>/inputs/<role>.nii.gz`` and its sha256 recorded.
These run in a worker thread (numpy, SimpleITK); the API still never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopaint.contracts import StoredInput
from autopaint.storage import Storage, input_key

if TYPE_CHECKING:
    from autopaint.imaging.validate import Role

log = logging.getLogger(__name__)

VALIDATE_ROLE: dict[str, Role] = {"ct": "ct", "pet": "pet", "organ_mask": "mask", "label": "mask"}
"""Input role -> the validation rules it gets."""


def limits_for(max_voxels: int, max_file_bytes: int) -> Any:
    from autopaint.imaging.validate import ValidationLimits

    return ValidationLimits(max_voxels=max_voxels, max_file_bytes=max_file_bytes)


def check_head(head: bytes, limits: Any) -> None:
    """Header-first check of a streamed file's first bytes (raises ``InvalidInput``)."""
    from autopaint.imaging.validate import check_header_bytes  # re-exported from validate_header

    check_header_bytes(head, None, None, limits)


def validate_files(paths: dict[str, Path], limits: Any) -> None:
    """Full validation of each uploaded file, then of the PET/CT pair (raises ``InvalidInput``)."""
    from autopaint.imaging.validate import validate_nifti, validate_pair

    for role, path in paths.items():
        validate_nifti(path, VALIDATE_ROLE[role], limits)
    if "ct" in paths and "pet" in paths:
        validate_pair(paths["ct"], paths["pet"], limits)


def sanitize_and_store(
    storage: Storage, job_id: str, paths: dict[str, Path], workdir: Path
) -> dict[str, StoredInput]:
    """Re-write each file with a fresh header and store it; return ``{role: {key, sha256, bytes}}``."""
    from autopaint.imaging.io import read_volume, write_volume

    stored: dict[str, StoredInput] = {}
    for role, path in paths.items():
        vol = read_volume(path, dtype=None)
        clean = write_volume(vol, workdir / f"clean-{role}.nii.gz", dtype=vol.data.dtype)
        key = input_key(job_id, role)
        sha, n = storage.put_file(key, clean)
        stored[role] = StoredInput(key=key, sha256=sha, bytes=n)
    return stored
