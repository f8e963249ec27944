"""Header-first checks of untrusted NIfTI files, from the first bytes only.

The NIfTI-1 (348-byte) and NIfTI-2 (540-byte) headers are parsed here with :mod:`struct` instead of
nibabel on purpose: nibabel builds an image object (and may map the file) before we know whether
the header declares 10^9 voxels, a complex dtype or a singular affine. Parsing the fixed layout
ourselves means nothing but the first few hundred bytes is read or decompressed until the header
passes. Field offsets follow the NIfTI-1/NIfTI-2 standards (nifti1.h, nifti2.h).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from autopaint.errors import InvalidInput

GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_SIZE, NIFTI2_SIZE = 348, 540
NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"

# datatype code -> (numpy dtype string without byte order, bitpix). Anything else is rejected:
# binary (1), complex (32, 1792, 2048), RGB/RGBA (128, 2304), float128 (1536).
SUPPORTED_DTYPES: dict[int, tuple[str, int]] = {
    2: ("u1", 8), 4: ("i2", 16), 8: ("i4", 32), 16: ("f4", 32), 64: ("f8", 64),
    256: ("i1", 8), 512: ("u2", 16), 768: ("u4", 32), 1024: ("i8", 64), 1280: ("u8", 64),
}
XFORM_CODES = (0, 1, 2, 3, 4, 5)
"""qform_code / sform_code values of the NIfTI standard (unknown, scanner, aligned, Talairach, MNI, template)."""
QUATERNION_EPS = {1: 3 * float(np.finfo(np.float32).eps), 2: 3 * float(np.finfo(np.float64).eps)}
"""How far b² + c² + d² of a qform quaternion may exceed 1 (nibabel's threshold, per NIfTI version)."""
_DTYPE_NAMES = {1: "binary", 32: "complex64", 128: "RGB24", 1536: "float128", 1792: "complex128",
                2048: "complex256", 2304: "RGBA32"}


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds applied to untrusted images (all configurable by the API / CLI).

    ``max_voxels``: cap on I*J*K (default 512*512*1500). ``max_file_bytes``: cap on the file size
    on disk (compressed size for .nii.gz). ``gzip_slack_bytes``: decompressed bytes tolerated past
    the declared image data. ``ct_hu_range``: plausible CT values (HU) after scaling;
    ``ct_padding_values``: scanner outside-field-of-view fill values allowed below it;
    ``ct_outlier_fraction``: fraction of other voxels allowed outside it (metal artefacts).
    ``min_suv``: PET values below are ``negative_suv``. ``max_label``: largest mask label.
    ``min_overlap``: fraction of the PET world box that must lie inside the CT world box.
    """

    max_voxels: int = 512 * 512 * 1500
    max_file_bytes: int = 2 * 1024**3
    gzip_slack_bytes: int = 64 * 1024
    chunk_bytes: int = 4 * 1024 * 1024
    ct_hu_range: tuple[float, float] = (-1100.0, 4000.0)
    ct_padding_values: tuple[float, ...] = (-3024.0, -2048.0, -2000.0, -3000.0, -32768.0)
    ct_outlier_fraction: float = 1e-3
    min_suv: float = -0.5
    max_label: int = 255
    min_overlap: float = 0.5


@dataclass(frozen=True)
class NiftiHeader:
    """What the checks need from a NIfTI header. ``shape`` is (I, J, K) (trailing 1s dropped,
    2D padded to K=1); ``affine`` maps (i, j, k) to RAS+ mm like nibabel (sform if its code != 0,
    else qform, else nibabel's centred pixdim scaling); ``spacing`` is pixdim[1:4] in mm."""

    version: int
    byteorder: str
    shape: tuple[int, int, int]
    ndim: int
    datatype: int
    dtype: np.dtype
    vox_offset: int
    scl_slope: float
    scl_inter: float
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(repr=False)
    qform_code: int = 0
    sform_code: int = 0

    @property
    def voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.dtype.itemsize

    @property
    def scaled(self) -> bool:
        """True when scl_slope/scl_inter change the stored values (slope 0 or NaN = no scaling)."""
        return math.isfinite(self.scl_slope) and self.scl_slope != 0 and (
            self.scl_slope != 1.0 or self.scl_inter != 0.0)


def _fail(code: str, message: str) -> InvalidInput:
    return InvalidInput(message, code=code)


def decompress_head(head: bytes, complete: bool = False, want: int = NIFTI2_SIZE + 4) -> bytes:
    """Decompress only the first ``want`` bytes of a gzip stream given its first compressed bytes.

    ``complete``: ``head`` is the whole file, so a stream that stops early is a truncated gzip.
    """
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(head, want)
    except zlib.error as exc:
        raise _fail("corrupt_gzip", f"corrupt gzip stream: {exc}") from None
    if complete and len(out) < want and not d.eof:
        raise _fail("corrupt_gzip", "gzip stream is truncated")
    return out


def _quaternion_affine(b: float, c: float, d: float, qfac: float, pix: tuple[float, ...],
                       offset: tuple[float, float, float]) -> np.ndarray:
    """qform (NIfTI method 2): rotation from the quaternion (b, c, d), a = sqrt(1 - b²-c²-d²)."""
    a2 = 1.0 - (b * b + c * c + d * d)
    a = math.sqrt(a2) if a2 > 1e-7 else 0.0
    if a == 0.0:  # nifti1_io.c: renormalise (b, c, d) when a ~ 0
        n = math.sqrt(b * b + c * c + d * d) or 1.0
        b, c, d = b / n, c / n, d / n
    r = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    zs = -1.0 if qfac == -1.0 else 1.0  # nibabel (which reads accepted files) takes any other qfac as 1
    aff = np.eye(4)
    aff[:3, :3] = r @ np.diag([pix[0], pix[1], pix[2] * zs])
    aff[:3, 3] = offset
    return aff


def _unpack(head: bytes) -> tuple[int, str, dict[str, object]]:
    """Raw header fields (version, byte order, fields). Raises not_nifti / truncated_header."""
    if len(head) < 4:
        raise _fail("truncated_header", f"file has {len(head)} bytes, too short for a NIfTI header")
    for bo in ("<", ">"):
        size = struct.unpack_from(bo + "i", head, 0)[0]
        if size in (NIFTI1_SIZE, NIFTI2_SIZE):
            break
    else:
        raise _fail("not_nifti", "not a NIfTI file (sizeof_hdr is neither 348 nor 540)")
    if len(head) < size:
        raise _fail("truncated_header", f"file has {len(head)} bytes, the NIfTI header needs {size}")
    u = struct.unpack_from
    if size == NIFTI1_SIZE:
        magic = head[344:348]
        if magic == b"ni1\x00":
            raise _fail("not_nifti", "two-file NIfTI (.hdr/.img) is not accepted; send a single .nii")
        if magic != b"n+1\x00":
            raise _fail("not_nifti", "not a NIfTI-1 file (bad magic)")
        f: dict[str, object] = {
            "dim": u(bo + "8h", head, 40), "datatype": u(bo + "h", head, 70)[0],
            "bitpix": u(bo + "h", head, 72)[0], "pixdim": u(bo + "8f", head, 76),
            "vox_offset": u(bo + "f", head, 108)[0], "scl": u(bo + "2f", head, 112),
            "qform_code": u(bo + "h", head, 252)[0], "sform_code": u(bo + "h", head, 254)[0],
            "quatern": u(bo + "6f", head, 256), "srow": u(bo + "12f", head, 280),
        }
        return 1, bo, f
    if head[4:12] != NIFTI2_MAGIC:
        raise _fail("not_nifti", "not a NIfTI-2 file (bad magic)")
    f = {
        "dim": u(bo + "8q", head, 16), "datatype": u(bo + "h", head, 12)[0],
        "bitpix": u(bo + "h", head, 14)[0], "pixdim": u(bo + "8d", head, 104),
        "vox_offset": float(u(bo + "q", head, 168)[0]), "scl": u(bo + "2d", head, 176),
        "qform_code": u(bo + "i", head, 344)[0], "sform_code": u(bo + "i", head, 348)[0],
        "quatern": u(bo + "6d", head, 352), "srow": u(bo + "12d", head, 400),
    }
    return 2, bo, f


def _check_dims(dim: tuple[int, ...], limits: ValidationLimits) -> tuple[tuple[int, int, int], int]:
    ndim = int(dim[0])
    if not 2 <= ndim <= 7:
        raise _fail("bad_dims", f"dim[0] = {ndim}: expected a 3D image (2..7)")
    sizes = [int(x) for x in dim[1:ndim + 1]]
    if any(s <= 0 for s in sizes):
        raise _fail("bad_dims", f"image dimensions must be positive, got {sizes}")
    if any(s != 1 for s in sizes[3:]):
        raise _fail("too_many_dims", f"{ndim}D image {sizes}: only 3D (or a singleton 4th dim) accepted")
    shape = (sizes[0], sizes[1], sizes[2] if ndim >= 3 else 1)
    voxels = shape[0] * shape[1] * shape[2]
    if voxels > limits.max_voxels:
        raise _fail("too_many_voxels", f"declares {voxels} voxels {list(shape)}, limit {limits.max_voxels}")
    return shape, ndim


def _check_dtype(datatype: int, bitpix: int, bo: str) -> np.dtype:
    if datatype not in SUPPORTED_DTYPES:
        name = _DTYPE_NAMES.get(datatype, f"code {datatype}")
        raise _fail("unsupported_dtype", f"unsupported voxel type {name}; use an integer or float type")
    code, bits = SUPPORTED_DTYPES[datatype]
    if bitpix != bits:
        raise _fail("unsupported_dtype", f"bitpix {bitpix} does not match datatype {datatype} ({bits} bits)")
    return np.dtype(bo + code)


def _affine(f: dict[str, object], pix: tuple[float, ...], version: int = 1) -> np.ndarray:
    sform_code, qform_code = int(f["sform_code"]), int(f["qform_code"])  # type: ignore[call-overload]
    for name, code in (("sform_code", sform_code), ("qform_code", qform_code)):
        if code not in XFORM_CODES:  # nibabel would silently read it as 0: another affine than the header's
            raise _fail("bad_affine", f"{name} {code} is not a NIfTI transform code (0..5)")
    # Same precedence as nibabel's get_best_affine (read_volume uses nibabel's affine).
    if sform_code != 0:
        aff = np.eye(4)
        aff[:3, :] = np.asarray(f["srow"], dtype=np.float64).reshape(3, 4)
    elif qform_code != 0:
        q = [float(x) for x in f["quatern"]]  # type: ignore[attr-defined]
        # a unit quaternion needs b² + c² + d² <= 1; nibabel (which reads accepted files) refuses more
        # than its rounding threshold (3 eps of the header's float type) with a ValueError
        w2 = 1.0 - (q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        if not math.isfinite(w2) or w2 < -QUATERNION_EPS[version]:
            raise _fail("bad_affine", f"qform quaternion (b, c, d) = ({q[0]:g}, {q[1]:g}, {q[2]:g}) is "
                        "not finite or longer than 1")
        aff = _quaternion_affine(q[0], q[1], q[2], float(f["pixdim"][0]),  # type: ignore[index]
                                 pix, (q[3], q[4], q[5]))
    else:  # method 1 (ANALYZE), as nibabel's get_base_affine: x flipped, centre voxel at the origin
        zooms = np.array([-pix[0], pix[1], pix[2]])
        dims = np.array(f["dim"][1:4], dtype=np.float64)  # type: ignore[index]
        dims[dims < 1] = 1
        aff = np.diag([*zooms, 1.0])
        aff[:3, 3] = -(dims - 1) / 2.0 * zooms
    if not np.all(np.isfinite(aff)):
        raise _fail("bad_affine", "affine (sform/qform) has non-finite values")
    det = float(np.linalg.det(aff[:3, :3]))
    col = np.linalg.norm(aff[:3, :3], axis=0)
    if abs(det) < 1e-6 * max(float(np.prod(col)), 1e-30) or float(col.min()) < 1e-6:
        raise _fail("bad_affine", "affine (sform/qform) is singular")
    return aff


def parse_header(head: bytes, limits: ValidationLimits) -> NiftiHeader:
    """Parse and check an uncompressed NIfTI-1/2 header (the first 348/540 bytes are enough).

    Checks, in order: magic (``not_nifti``), length (``truncated_header``), dims (``bad_dims``,
    ``too_many_dims``, ``too_many_voxels``), datatype (``unsupported_dtype``), spacing
    (``bad_spacing``), affine (``bad_affine``), scaling (``bad_scl_slope``), vox_offset
    (``bad_vox_offset``). Raises :class:`InvalidInput` with that code.
    """
    version, bo, f = _unpack(head)
    shape, ndim = _check_dims(tuple(f["dim"]), limits)  # type: ignore[arg-type]
    dtype = _check_dtype(int(f["datatype"]), int(f["bitpix"]), bo)  # type: ignore[call-overload]
    pix = tuple(float(x) for x in f["pixdim"][1:4])  # type: ignore[index]
    n_sp = min(ndim, 3)
    if not all(math.isfinite(p) and p > 0 for p in pix[:n_sp]):
        raise _fail("bad_spacing", f"voxel spacing must be finite and > 0 mm, got {list(pix[:n_sp])}")
    if n_sp < 3 and not (math.isfinite(pix[2]) and pix[2] > 0):
        pix = (pix[0], pix[1], 1.0)
    affine = _affine(f, pix, version)
    slope, inter = (float(x) for x in f["scl"])  # type: ignore[attr-defined]
    if math.isinf(slope):
        raise _fail("bad_scl_slope", f"scl_slope is {slope}")
    if math.isfinite(slope) and slope != 0 and not math.isfinite(inter):
        raise _fail("bad_scl_slope", f"scl_slope {slope} with a non-finite scl_inter {inter}")
    vox = float(f["vox_offset"])  # type: ignore[arg-type]
    min_off = NIFTI1_SIZE + 4 if version == 1 else NIFTI2_SIZE + 4
    if not math.isfinite(vox) or vox != int(vox) or vox < min_off or vox > limits.max_file_bytes:
        raise _fail("bad_vox_offset", f"vox_offset {vox} is invalid (must be an integer >= {min_off})")
    return NiftiHeader(version=version, byteorder=bo, shape=shape, ndim=ndim,
                       datatype=int(f["datatype"]), dtype=dtype, vox_offset=int(vox),  # type: ignore[call-overload]
                       scl_slope=slope, scl_inter=inter, spacing=(pix[0], pix[1], pix[2]), affine=affine,
                       qform_code=int(f["qform_code"]), sform_code=int(f["sform_code"]))  # type: ignore[call-overload]


def check_header_bytes(head: bytes, size_on_disk: int | None = None, compressed: bool | None = None,
                       limits: ValidationLimits | None = None) -> NiftiHeader:
    """Check the first bytes of a (possibly streamed) NIfTI upload before any voxel data is read.

    ``head``: the file's first bytes as stored (compressed for .nii.gz; a few KiB is plenty);
    ``size_on_disk``: total file size in bytes when known; ``compressed``: gzip or not (``None``:
    detect from the gzip magic). For an uncompressed file whose declared data does not fit in
    ``size_on_disk`` raises ``truncated_data``; over ``limits.max_file_bytes``: ``file_too_large``.
    Returns the parsed header; raises :class:`InvalidInput` otherwise.
    """
    limits = limits or ValidationLimits()
    if size_on_disk is not None and size_on_disk > limits.max_file_bytes:
        raise _fail("file_too_large", f"file is {size_on_disk} bytes, limit {limits.max_file_bytes}")
    is_gz = head[:2] == GZIP_MAGIC if compressed is None else compressed
    if is_gz and head[:2] != GZIP_MAGIC:
        raise _fail("corrupt_gzip", "declared gzip-compressed but has no gzip header")
    complete = size_on_disk is not None and len(head) >= size_on_disk
    raw = decompress_head(head, complete=complete) if is_gz else head
    hdr = parse_header(raw, limits)
    if not is_gz and size_on_disk is not None and hdr.vox_offset + hdr.data_bytes > size_on_disk:
        raise _fail("truncated_data", f"header declares {hdr.vox_offset + hdr.data_bytes} bytes, "
                    f"file has {size_on_disk}")
    return hdr
