"""Header-first validation of untrusted NIfTI files (CT, PET, masks) and of a CT/PET pair.

Order of work for one file, each step bounded in memory:

1. file size on disk (``file_too_large``) and the first bytes only: gzip magic, then the header is
   parsed by hand (:mod:`autopaint.imaging.validate_header`) — dims, voxel cap, dtype, spacing,
   affine, scaling, vox_offset — before any voxel byte is read or decompressed;
2. the voxels are streamed in chunks (``limits.chunk_bytes``): a gzip stream is decompressed with a
   bounded output per call and abandoned as soon as it exceeds the declared size plus a small slack
   (``decompressed_size_mismatch``; gzip bombs cost one chunk of memory), a short stream is
   ``truncated_data``, a broken one ``corrupt_gzip``; each chunk is scaled and checked for NaN/Inf
   and the role's plausible range (``ct_out_of_range``, ``negative_suv``, ``mask_not_binary``);
3. for a pair, the world bounding boxes (from the headers) must overlap (``pet_ct_no_overlap``).

:func:`validate_nifti` / :func:`validate_pair` raise :class:`~autopaint.errors.InvalidInput`;
:func:`inspect_nifti` / :func:`inspect_pair` return a report with ``ok=False`` instead.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from autopaint.errors import InvalidInput
from autopaint.imaging.validate_header import (
    GZIP_MAGIC,
    NiftiHeader,
    ValidationLimits,
    check_header_bytes,
)

__all__ = ["NiftiHeader", "PairReport", "ValidationLimits", "ValidationReport", "check_header_bytes",
           "inspect_nifti", "inspect_pair", "validate_nifti", "validate_pair", "world_overlap"]

log = logging.getLogger(__name__)

Role = Literal["ct", "pet", "mask"]
ROLES = ("ct", "pet", "mask")
_HEAD_BYTES = 64 * 1024  # compressed bytes read to get the header (a 540-byte header needs far less)


@dataclass
class ValidationReport:
    """Outcome for one file. ``shape`` (I, J, K), ``spacing`` mm, ``affine`` RAS+ 4x4 (lists),
    ``value_range`` (min, max) after scl_slope/scl_inter (HU for CT, SUV for PET); geometry fields
    are ``None`` when the header itself failed."""

    path: str
    role: Role
    ok: bool = False
    code: str | None = None
    message: str | None = None
    nifti_version: int | None = None
    compressed: bool | None = None
    file_bytes: int | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    dtype: str | None = None
    voxels: int | None = None
    affine: list[list[float]] | None = None
    value_range: tuple[float, float] | None = None
    header: NiftiHeader | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "role": self.role, "ok": self.ok, "code": self.code, "message": self.message,
            "nifti_version": self.nifti_version, "compressed": self.compressed, "file_bytes": self.file_bytes,
            "shape": list(self.shape) if self.shape else None,
            "spacing": list(self.spacing) if self.spacing else None, "dtype": self.dtype,
            "voxels": self.voxels, "affine": self.affine,
            "value_range": list(self.value_range) if self.value_range else None,
        }


@dataclass
class PairReport:
    """CT/PET pair outcome: both file reports and the world overlap (intersection of the world
    bounding boxes / PET box volume, 0..1; ``None`` when a file failed)."""

    ct: ValidationReport
    pet: ValidationReport
    overlap: float | None = None
    ok: bool = False
    code: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "code": self.code, "message": self.message, "overlap": self.overlap,
                "ct": self.ct.to_dict(), "pet": self.pet.to_dict()}


# ------------------------------------------------------------------------------------ byte streams


def _raw_stream(fh: BinaryIO, hdr: NiftiHeader, chunk: int) -> Iterator[bytes]:
    fh.seek(hdr.vox_offset)
    left = hdr.data_bytes
    while left > 0:
        buf = fh.read(min(chunk, left))
        if not buf:
            raise InvalidInput(f"file ends {left} bytes before the declared image data", code="truncated_data")
        left -= len(buf)
        yield buf


def _gunzip(fh: BinaryIO, limit: int, chunk: int) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-member) gzip file, at most ``chunk`` bytes per piece.

    Raises ``decompressed_size_mismatch`` once more than ``limit`` bytes come out — the stream is
    abandoned there, so memory stays ~ ``chunk`` whatever the stream would expand to.
    """
    fh.seek(0)
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    total = 0
    while True:
        if d.unconsumed_tail:
            data = d.unconsumed_tail
        elif d.eof:
            rest = d.unused_data or fh.read(chunk)
            if 0 < len(rest) < 2:
                rest += fh.read(chunk)
            if not rest:
                return
            if rest[:2] != GZIP_MAGIC:
                raise InvalidInput("trailing bytes after the gzip stream", code="corrupt_gzip")
            d, data = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), rest
        else:
            data = fh.read(chunk)
        if not data:  # input exhausted: drain what zlib still holds, then it must be at eof
            out = d.decompress(b"", chunk)
            if not out:
                if not d.eof:
                    raise InvalidInput("gzip stream is truncated", code="corrupt_gzip")
                continue
        else:
            try:
                out = d.decompress(data, chunk)
            except zlib.error as exc:
                raise InvalidInput(f"corrupt gzip stream: {exc}", code="corrupt_gzip") from None
        total += len(out)
        if total > limit:
            raise InvalidInput(f"gzip stream expands beyond {limit} bytes (declared image + slack)",
                               code="decompressed_size_mismatch")
        if out:
            yield out


def _gzip_data(fh: BinaryIO, hdr: NiftiHeader, limits: ValidationLimits) -> Iterator[bytes]:
    """The declared image bytes of a .nii.gz, then checks that at most the slack follows."""
    need = hdr.vox_offset + hdr.data_bytes
    pos = 0
    for piece in _gunzip(fh, need + limits.gzip_slack_bytes, limits.chunk_bytes):
        start, end = pos, pos + len(piece)
        pos = end
        lo, hi = max(start, hdr.vox_offset), min(end, need)
        if hi > lo:
            yield piece[lo - start:hi - start]
    if pos < need:
        raise InvalidInput(f"gzip stream ends {need - pos} bytes before the declared image data",
                           code="truncated_data")


def _values(pieces: Iterator[bytes], hdr: NiftiHeader) -> Iterator[np.ndarray]:
    """Voxel values (float64, scaled) from byte pieces, realigned to whole items."""
    item = hdr.dtype.itemsize
    carry = b""
    for piece in pieces:
        buf = carry + piece if carry else piece
        usable = len(buf) - len(buf) % item
        carry = buf[usable:]
        if usable:
            # signalling NaNs and overflowing scaling only make non-finite values: _check_values says so
            with np.errstate(invalid="ignore", over="ignore"):
                arr = np.frombuffer(buf, dtype=hdr.dtype, count=usable // item).astype(np.float64)
                if hdr.scaled:
                    arr = arr * hdr.scl_slope + hdr.scl_inter
            yield arr


# -------------------------------------------------------------------------------------- value checks


def _check_values(arr: np.ndarray, role: Role, limits: ValidationLimits) -> int:
    """Raise on NaN/Inf, negative SUV or non-label masks; return the CT voxels out of range here."""
    finite = np.isfinite(arr)
    if not finite.all():
        raise InvalidInput(f"{int((~finite).sum())} voxels are NaN or infinite", code="non_finite_values")
    if role == "ct":
        lo, hi = limits.ct_hu_range
        out = arr[(arr < lo) | (arr > hi)]
        return int((~np.isin(out, limits.ct_padding_values)).sum()) if out.size else 0
    if role == "pet" and arr.min() < limits.min_suv:
        raise InvalidInput(f"PET has values down to {arr.min():.3g} (< {limits.min_suv:g} SUV)",
                           code="negative_suv")
    if role == "mask" and ((arr < 0).any() or (arr > limits.max_label).any() or (arr != np.round(arr)).any()):
        raise InvalidInput(f"mask values must be integer labels 0..{limits.max_label}", code="mask_not_binary")
    return 0


def _scan(fh: BinaryIO, hdr: NiftiHeader, compressed: bool, role: Role,
          limits: ValidationLimits) -> tuple[float, float]:
    """Stream the voxels once; return the (min, max) value after scaling."""
    pieces = _gzip_data(fh, hdr, limits) if compressed else _raw_stream(fh, hdr, limits.chunk_bytes)
    vmin, vmax = np.inf, -np.inf
    outliers = 0
    for arr in _values(pieces, hdr):
        outliers += _check_values(arr, role, limits)
        vmin, vmax = min(vmin, float(arr.min())), max(vmax, float(arr.max()))
    # Metal (implants, dental fillings) legitimately exceeds the HU range in a few voxels.
    if outliers > limits.ct_outlier_fraction * hdr.voxels:
        lo, hi = limits.ct_hu_range
        raise InvalidInput(f"{outliers} CT voxels lie outside {lo:g}..{hi:g} HU (range {vmin:g}..{vmax:g}); "
                           "is it in HU?", code="ct_out_of_range")
    return vmin, vmax


# ------------------------------------------------------------------------------------------ public


def _fill_geometry(report: ValidationReport, hdr: NiftiHeader) -> None:
    report.nifti_version = hdr.version
    report.shape = hdr.shape
    report.spacing = hdr.spacing
    report.dtype = hdr.dtype.newbyteorder("=").name
    report.voxels = hdr.voxels
    report.affine = [[float(v) for v in row] for row in hdr.affine]
    report.header = hdr


def inspect_nifti(path: str | Path, role: Role = "ct", limits: ValidationLimits | None = None) -> ValidationReport:
    """Validate one untrusted NIfTI file; never raises :class:`InvalidInput` (``ok``/``code`` tell)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    limits = limits or ValidationLimits()
    path = Path(path)
    report = ValidationReport(path=str(path), role=role)
    try:
        size = os.stat(path).st_size
        report.file_bytes = size
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            compressed = head[:2] == GZIP_MAGIC
            report.compressed = compressed
            if path.name.endswith(".gz") and not compressed:
                raise InvalidInput("named .gz but not gzip-compressed", code="corrupt_gzip")
            if path.name.endswith(".nii") and compressed:
                raise InvalidInput("gzip-compressed data in a .nii file (name it .nii.gz)", code="not_nifti")
            hdr = check_header_bytes(head, size, compressed, limits)
            _fill_geometry(report, hdr)
            report.value_range = _scan(fh, hdr, compressed, role, limits)
    except InvalidInput as exc:
        report.code, report.message = exc.code, str(exc)
        log.info("rejected %s input: %s", role, exc.code)
        return report
    except OSError as exc:
        report.code, report.message = "unreadable", f"cannot read file: {exc.strerror}"
        return report
    report.ok = True
    return report


def validate_nifti(path: str | Path, role: Role = "ct", limits: ValidationLimits | None = None) -> ValidationReport:
    """Validate one untrusted NIfTI file header-first, then its voxels (bounded memory).

    ``role``: ``ct`` (HU range), ``pet`` (SUV >= ``limits.min_suv``) or ``mask`` (integer labels).
    Returns the report when valid; raises :class:`InvalidInput` with a specific ``code`` otherwise.
    """
    report = inspect_nifti(path, role, limits)
    if not report.ok:
        raise InvalidInput(report.message or "invalid file", code=report.code or "invalid_input")
    return report


def _box(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world box (RAS+ mm) of the voxel extents (half a voxel beyond the centres)."""
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    w = (corners @ np.asarray(affine).T)[:, :3]
    return w.min(axis=0), w.max(axis=0)


def world_overlap(ct: NiftiHeader, pet: NiftiHeader) -> float:
    """Volume of (CT box ∩ PET box) / volume of the PET box, with axis-aligned world boxes (an
    oblique scan's box is larger than the scan, so this errs towards accepting)."""
    (c0, c1), (p0, p1) = _box(ct.affine, ct.shape), _box(pet.affine, pet.shape)
    inter = np.clip(np.minimum(c1, p1) - np.maximum(c0, p0), 0.0, None)
    pet_vol = float(np.prod(p1 - p0))
    return float(np.prod(inter)) / pet_vol if pet_vol > 0 else 0.0


def inspect_pair(ct_path: str | Path, pet_path: str | Path, limits: ValidationLimits | None = None,
                 ct_report: ValidationReport | None = None,
                 pet_report: ValidationReport | None = None) -> PairReport:
    """Validate a CT and a PET file and their world overlap; never raises :class:`InvalidInput`.
    Already computed file reports can be passed to avoid scanning the files twice."""
    limits = limits or ValidationLimits()
    ct = ct_report or inspect_nifti(ct_path, "ct", limits)
    pet = pet_report or inspect_nifti(pet_path, "pet", limits)
    pair = PairReport(ct=ct, pet=pet)
    bad = next((r for r in (ct, pet) if not r.ok), None)
    if bad is not None or ct.header is None or pet.header is None:
        pair.code = bad.code if bad else "invalid_input"
        pair.message = f"{bad.role if bad else 'input'} file is invalid: {bad.message if bad else ''}"
        return pair
    pair.overlap = round(world_overlap(ct.header, pet.header), 6)
    if pair.overlap < limits.min_overlap:
        pair.code = "pet_ct_no_overlap"
        pair.message = (f"only {pair.overlap:.0%} of the PET field of view lies inside the CT's "
                        f"(need {limits.min_overlap:.0%}); are these the same study?")
        return pair
    pair.ok = True
    return pair


def validate_pair(ct_path: str | Path, pet_path: str | Path, limits: ValidationLimits | None = None) -> PairReport:
    """Validate both files and their world-space overlap; raises :class:`InvalidInput` if not valid."""
    pair = inspect_pair(ct_path, pet_path, limits)
    if not pair.ok:
        raise InvalidInput(pair.message or "invalid PET/CT pair", code=pair.code or "invalid_input")
    return pair
