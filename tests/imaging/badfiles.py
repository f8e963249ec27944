"""Crafted bad NIfTI files, built on the fly (no committed binaries).

Used by the imaging tests and by the API tests::

    from tests.imaging.badfiles import ROLE_FOR_CODE, build_bad_files, build_shifted_pair
    files = build_bad_files(tmp_path)          # {expected error code: Path}
    role = ROLE_FOR_CODE.get(code, "ct")       # the role to validate each file as

Each file is valid except for the one defect its key names, so it must be rejected with exactly
that code. Headers are made by nibabel and then patched at the NIfTI-1 byte offsets (nifti1.h).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

ROLE_FOR_CODE = {"negative_suv": "pet", "mask_not_binary": "mask"}

AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 50.0], [0, 0, 3.0, -60.0], [0, 0, 0, 1]])

# NIfTI-1 header offsets (little-endian, as nibabel writes on x86)
OFF_DIM, OFF_DATATYPE, OFF_BITPIX, OFF_PIXDIM = 40, 70, 72, 76
OFF_VOX_OFFSET, OFF_SCL_SLOPE, OFF_SFORM_CODE, OFF_SROW_X = 108, 112, 254, 280


def header_block(shape: tuple[int, ...], dtype: object, affine: np.ndarray = AFFINE) -> bytearray:
    """A valid 348-byte NIfTI-1 header (sform = qform, vox_offset 352) as a mutable bytearray."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr.set_zooms(tuple(np.linalg.norm(affine[:3, :3], axis=0)) + (1.0,) * (len(shape) - 3))
    hdr["vox_offset"] = 352
    return bytearray(hdr.binaryblock)


def nifti_bytes(data: np.ndarray, affine: np.ndarray = AFFINE, block: bytearray | None = None) -> bytes:
    """Single-file NIfTI-1: header, 4-byte empty extension flag, voxels in Fortran order."""
    block = block if block is not None else header_block(data.shape, data.dtype, affine)
    return bytes(block) + b"\x00" * 4 + np.asarray(data).tobytes(order="F")


def ct_array(shape: tuple[int, int, int] = (12, 10, 8), seed: int = 0) -> np.ndarray:
    """Plausible CT values (HU): air around a water-like body with some bone."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000.0, dtype=np.float32)
    arr[2:-2, 2:-2, :] = rng.normal(40, 20, (shape[0] - 4, shape[1] - 4, shape[2]))
    arr[5:7, 4:6, :] = 900.0
    return arr


def _patched(data: np.ndarray, fmt: str, offset: int, *values: float) -> bytes:
    block = header_block(data.shape, data.dtype)
    struct.pack_into("<" + fmt, block, offset, *values)
    return nifti_bytes(data, block=block)


def write_gzip_bomb(path: Path, expand_bytes: int, shape: tuple[int, int, int] = (16, 16, 16)) -> Path:
    """A valid gzip file whose NIfTI header declares a small int16 ``shape`` but which expands to
    about ``expand_bytes`` bytes (zeros after the image data). Built by streaming: one 4 MiB block of
    zeros is deflated once after a full flush (which resets the compressor, so the block's bytes are
    the same every time) and written repeatedly; the gzip CRC is updated incrementally. Memory ~ 4 MiB.
    """
    head = nifti_bytes(np.zeros(shape, dtype=np.int16))
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(4 * 1024 * 1024)
    crc, size = zlib.crc32(head), len(head)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip member header (RFC 1952)
        fh.write(comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH))
        block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
        for _ in range(max(1, expand_bytes // len(zeros))):
            fh.write(block)
            crc, size = zlib.crc32(zeros, crc), size + len(zeros)
        fh.write(comp.flush())
        fh.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return path


def write_huge_declared(path: Path, size_bytes: int = 300 * 1024) -> Path:
    """An uncompressed .nii of ~``size_bytes`` whose header declares 1024^3 float32 voxels (4 GiB)."""
    block = header_block((4, 4, 4), np.float32)
    struct.pack_into("<8h", block, OFF_DIM, 3, 1024, 1024, 1024, 1, 1, 1, 1)
    path.write_bytes(bytes(block) + b"\x00" * (4 + size_bytes))
    return path


def build_bad_files(tmp_dir: Path) -> dict[str, Path]:
    """Write one crafted bad file per error code into ``tmp_dir``; returns {code: path}."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ct = ct_array()
    valid = nifti_bytes(ct)
    nan_ct = ct.copy()
    nan_ct[3, 3, 3] = np.nan
    hot_ct = ct.copy()
    hot_ct[:, :, :4] = 20000.0  # half the volume far above any HU
    pet = np.abs(ct_array(seed=1)) / 500.0
    pet[4:8, 4:8, 2:5] = -3.0
    mask = (ct > 0).astype(np.float32)
    mask[6, 5, 4] = 0.5
    content: dict[str, bytes] = {
        "not_nifti": b"This is a text file, not an image.\n" * 20,
        "truncated_header": valid[:200],
        "bad_dims": _patched(ct, "h", OFF_DIM + 4, 0),  # dim[2] = 0
        "too_many_dims": nifti_bytes(np.stack([ct, ct, ct], axis=-1)),  # 4D with 3 volumes
        "truncated_data": valid[: 352 + ct.nbytes // 2],
        "unsupported_dtype": nifti_bytes(ct.astype(np.complex64)),
        "bad_affine": _patched(ct, "4f", OFF_SROW_X + 32, 0.0, 0.0, 0.0, -60.0),  # srow_z = 0: singular
        "bad_spacing": _patched(ct, "f", OFF_PIXDIM + 12, 0.0),  # pixdim[3] = 0 mm
        "bad_scl_slope": _patched(ct, "f", OFF_SCL_SLOPE, float("inf")),
        "bad_vox_offset": _patched(ct, "f", OFF_VOX_OFFSET, 100.0),  # inside the header
        "non_finite_values": nifti_bytes(nan_ct),
        "ct_out_of_range": nifti_bytes(hot_ct),
        "negative_suv": nifti_bytes(pet.astype(np.float32)),
        "mask_not_binary": nifti_bytes(mask),
    }
    paths: dict[str, Path] = {}
    for code, data in content.items():
        paths[code] = tmp_dir / f"{code}.nii"
        paths[code].write_bytes(data)
    # gzip defects
    good_gz = gzip.compress(valid + bytes(200_000))  # long enough that truncation hits the data
    paths["corrupt_gzip"] = tmp_dir / "corrupt_gzip.nii.gz"
    paths["corrupt_gzip"].write_bytes(good_gz[: len(good_gz) * 2 // 3])
    paths["too_many_voxels"] = write_huge_declared(tmp_dir / "too_many_voxels.nii")
    paths["decompressed_size_mismatch"] = write_gzip_bomb(tmp_dir / "bomb.nii.gz", 64 * 1024 * 1024)
    return paths


def build_shifted_pair(tmp_dir: Path, shift_mm: float = 1000.0) -> tuple[Path, Path]:
    """A valid CT and a valid PET (SUV) whose PET lies ``shift_mm`` away along z: no overlap."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ct = ct_array((20, 20, 10))
    pet_aff = np.array([[-4.0, 0, 0, 38.0], [0, -4.0, 0, 48.0], [0, 0, 3.0, -60.0 + shift_mm], [0, 0, 0, 1]])
    pet = np.clip(np.random.default_rng(2).normal(1.0, 0.3, (10, 10, 10)), 0, None).astype(np.float32)
    ct_path, pet_path = tmp_dir / "ct.nii", tmp_dir / "pet.nii"
    ct_path.write_bytes(nifti_bytes(ct))
    pet_path.write_bytes(nifti_bytes(pet, pet_aff))
    return ct_path, pet_path


# ------------------------------------------------------------------------------- hostile headers
# A hostile NIfTI is a valid small image whose header fields, extension bytes, data length and
# compression an attacker chose. ``hostile_nifti(spec)`` is a pure function of a plain dict ``spec``
# (so a failing hypothesis example prints a spec that rebuilds the same bytes); the hypothesis
# strategy that draws specs is ``tests.imaging.test_fuzz_headers.hostile_specs``.

HOSTILE_SHAPE = (6, 5, 4)
INT_FIELDS = {"datatype", "bitpix", "qform_code", "sform_code", "xyzt_units", "intent_code", "sizeof_hdr"}
FLOAT_FIELDS = {"vox_offset", "scl_slope", "scl_inter", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "qoffset_y", "qoffset_z", "intent_p1", "intent_p2", "intent_p3", "cal_max", "cal_min"}
ARRAY_FIELDS = {"dim": 8, "pixdim": 8, "srow_x": 4, "srow_y": 4, "srow_z": 4}


def _header_struct(version: int, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """A valid nibabel header for ``HOSTILE_SHAPE`` as a one-element structured array."""
    cls = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    hdr = cls()
    hdr.set_data_shape(HOSTILE_SHAPE)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(AFFINE, code=1)
    hdr.set_qform(AFFINE, code=1)
    hdr.set_zooms(tuple(np.linalg.norm(AFFINE[:3, :3], axis=0)))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_data_offset(hdr.single_vox_offset)
    arr = np.frombuffer(hdr.binaryblock, dtype=hdr.structarr.dtype).copy()
    if byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder(">"))
    return arr


def _clip_int(v: object, lo: int, hi: int) -> int:
    """An integer header field's value for ``v`` (NaN -> 0, +-inf -> the bounds, else clipped)."""
    f = float(v)  # type: ignore[arg-type]
    if f != f:
        return 0
    if f in (float("inf"), float("-inf")):
        return hi if f > 0 else lo
    return min(max(int(v), lo), hi)  # type: ignore[call-overload]


def _set_field(arr: np.ndarray, name: str, value: object) -> None:
    """Store ``value`` (a number or a list for array fields) into the header field ``name`` with
    C casting: floats overflow to inf in float32, integers are clipped to the field's range."""
    kind = arr.dtype[name].base
    if kind.kind in "iu":
        info = np.iinfo(kind)
        vals = np.array([_clip_int(v, info.min, info.max) for v in np.atleast_1d(np.asarray(value, dtype=object))],
                        dtype=kind)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            vals = np.atleast_1d(np.asarray(value, dtype=np.float64)).astype(kind)
    field = arr[name]
    if field.ndim > 1:  # an array field: replace its first len(vals) items
        field[0, : len(vals)] = vals[: field.shape[1]]
    else:
        field[0] = vals[0]
    arr[name] = field


def _declared_bytes(dim: list[int], bitpix: int) -> int | None:
    """Voxel bytes the (possibly hostile) dims and bitpix declare, or None when ill-defined."""
    n = dim[0]
    if not 1 <= n <= 7 or bitpix <= 0 or bitpix % 8:
        return None
    total = bitpix // 8
    for s in dim[1:n + 1]:
        if s <= 0:
            return None
        total *= s
    return total


def hostile_nifti(spec: dict[str, object]) -> tuple[bytes, bool]:
    """(file bytes, gzip?) of the hostile NIfTI ``spec`` describes. Keys (all optional):
    ``version`` 1/2, ``byteorder`` '<'/'>', ``dtype`` of the valid base image ('f4', 'i2', 'u1'...),
    header fields (``dim``, ``pixdim``, ``srow_x``.. lists; ``datatype``, ``bitpix``, ``vox_offset``,
    ``scl_slope``, ``scl_inter``, ``qform_code``, ``sform_code``, ``quatern_*``, ``qoffset_*``,
    ``xyzt_units``, ``intent_code``, ``intent_p*``, ``sizeof_hdr``), ``magic`` bytes, ``ext_flag`` (4
    bytes after the header), ``ext`` (extension bytes after the flag), ``payload``: ``exact`` (the
    declared voxel bytes when they are <= 1 MiB, filled with ``values``), ``short``/``long`` (that minus /
    plus ``delta`` bytes), ``random`` (``delta`` random bytes); ``values``: ``ct`` (plausible HU for
    the declared type), ``zeros``, ``ones`` or ``noise`` (random bytes); ``gzip`` bool; ``truncate``
    (keep only that many bytes of the final file); ``seed`` for the random bytes."""
    version = int(spec.get("version", 1))  # type: ignore[call-overload]
    bo = str(spec.get("byteorder", "<"))
    base_dtype = np.dtype(str(spec.get("dtype", "f4")))
    rng = np.random.default_rng(int(spec.get("seed", 0)))  # type: ignore[call-overload]
    arr = _header_struct(version, base_dtype, bo)
    for name, value in spec.items():
        if name in INT_FIELDS or name in FLOAT_FIELDS or name in ARRAY_FIELDS:
            _set_field(arr, name, value)
    raw = bytearray(arr.tobytes())
    if "magic" in spec:
        magic = bytes(spec["magic"])  # type: ignore[call-overload]
        at = 344 if version == 1 else 4
        raw[at:at + len(magic)] = magic
    ext_flag = bytes(spec.get("ext_flag", b"\x00\x00\x00\x00"))  # type: ignore[call-overload]
    ext = bytes(spec.get("ext", b""))  # type: ignore[call-overload]
    head = bytes(raw) + ext_flag + ext
    vox = float(arr["vox_offset"][0])
    if np.isfinite(vox) and len(head) < vox <= len(head) + 4096:
        head += b"\x00" * (int(vox) - len(head))  # pad up to the declared data start
    dim = [int(x) for x in arr["dim"][0]]
    declared = _declared_bytes(dim, int(arr["bitpix"][0]))
    payload, delta = str(spec.get("payload", "exact")), int(spec.get("delta", 0))  # type: ignore[call-overload]
    n = declared if declared is not None and declared <= 1 << 20 else None
    if payload == "random" or n is None:
        n_bytes = min(abs(delta), 1 << 16) if payload == "random" or declared is None else min(declared, 1 << 16)
        data = rng.bytes(n_bytes)
    else:
        data = _values_bytes(str(spec.get("values", "ct")), int(arr["datatype"][0]), n, bo, rng)
        if payload == "short":
            data = data[: max(0, len(data) - max(1, abs(delta)))]
        elif payload == "long":
            data += rng.bytes(min(abs(delta), 1 << 16))
    blob = head + data
    gz = bool(spec.get("gzip", False))
    if gz:
        blob = gzip.compress(blob, mtime=0)
    if "truncate" in spec:
        blob = blob[: max(0, int(spec["truncate"]))]  # type: ignore[call-overload]
    return blob, gz


def _values_bytes(kind: str, datatype: int, n: int, bo: str, rng: np.random.Generator) -> bytes:
    from autopaint.imaging.validate_header import SUPPORTED_DTYPES

    if kind == "noise" or datatype not in SUPPORTED_DTYPES:
        return rng.bytes(n)
    dt = np.dtype(bo + SUPPORTED_DTYPES[datatype][0])
    count = n // dt.itemsize
    if kind == "zeros":
        vals = np.zeros(count)
    elif kind == "ones":
        vals = np.ones(count)
    else:  # plausible CT (HU) for signed types, 0..200 for unsigned ones
        lo = -1000 if dt.kind != "u" else 0
        vals = np.linspace(lo, 200, count) if count else np.zeros(0)
        if dt.kind in "iu":
            vals = np.clip(vals, np.iinfo(dt).min, np.iinfo(dt).max)
    info_ok = vals.astype(dt).tobytes()
    return info_ok + rng.bytes(n - len(info_ok))


_NAN, _INF = float("nan"), float("inf")
BASE_KEYS = ("version", "byteorder", "dtype", "gzip", "values")
"""Spec keys of the valid base image (the rest of a spec is the defect)."""
HEADER_VARIANTS: tuple[tuple[str, str, dict[str, object]], ...] = (
    # (name, the one code it must get, hostile_nifti spec: a valid base plus exactly one defect)
    ("slope_inf", "bad_scl_slope", {"scl_slope": _INF}),
    ("slope_minus_inf_int16", "bad_scl_slope", {"dtype": "i2", "scl_slope": -_INF}),
    ("inter_nan", "bad_scl_slope", {"scl_slope": 2.0, "scl_inter": _NAN}),
    ("inter_inf_int16", "bad_scl_slope", {"dtype": "i2", "scl_slope": 0.5, "scl_inter": _INF}),
    ("slope_inf_nifti2_be_gz", "bad_scl_slope", {"version": 2, "byteorder": ">", "gzip": True, "scl_slope": _INF}),
    ("slope_huge", "ct_out_of_range", {"scl_slope": 3.0e38, "scl_inter": 0.0}),
    ("dim0_zero", "bad_dims", {"dim": [0]}),
    ("dim0_eight", "bad_dims", {"dim": [8]}),
    ("dim0_negative", "bad_dims", {"dim": [-1]}),
    ("dim2_zero", "bad_dims", {"dim": [3, 6, 0, 4]}),
    ("dim3_negative_nifti2", "bad_dims", {"version": 2, "dim": [3, 6, 5, -4]}),
    ("dim5_two", "too_many_dims", {"dim": [5, 6, 5, 4, 1, 2]}),
    ("voxels_3e13_nifti2_gz", "too_many_voxels", {"version": 2, "gzip": True, "dim": [3, 2**15, 2**15, 2**15]}),
    ("pixdim_nan", "bad_spacing", {"pixdim": [1.0, _NAN]}),
    ("pixdim_negative", "bad_spacing", {"pixdim": [1.0, 2.0, -2.0]}),
    ("pixdim_inf_gz", "bad_spacing", {"gzip": True, "pixdim": [1.0, 2.0, 2.0, _INF]}),
    ("srow_nan", "bad_affine", {"srow_y": [0.0, _NAN]}),
    ("srow_singular", "bad_affine", {"srow_z": [0.0, 0.0, 0.0, -60.0]}),
    ("srow_inf_nifti2", "bad_affine", {"version": 2, "srow_x": [_INF]}),
    ("quaternion_longer_than_1", "bad_affine", {"sform_code": 0, "quatern_b": 0.9, "quatern_c": 0.9}),
    ("quaternion_nan", "bad_affine", {"sform_code": 0, "quatern_d": _NAN}),
    ("sform_code_invalid", "bad_affine", {"sform_code": 32767}),
    ("qform_code_negative", "bad_affine", {"qform_code": -1}),
    ("bitpix_mismatch", "unsupported_dtype", {"bitpix": 16}),
    ("rgb24", "unsupported_dtype", {"datatype": 128, "bitpix": 24}),
    ("float128", "unsupported_dtype", {"datatype": 1536, "bitpix": 128}),
    ("vox_offset_inside_header", "bad_vox_offset", {"vox_offset": 100.0}),
    ("vox_offset_fraction", "bad_vox_offset", {"vox_offset": 352.5}),
    ("vox_offset_nan", "bad_vox_offset", {"vox_offset": _NAN}),
    ("vox_offset_beyond_cap", "bad_vox_offset", {"vox_offset": 1e12}),
    ("vox_offset_negative_nifti2", "bad_vox_offset", {"version": 2, "vox_offset": -544}),
    ("magic_hdr_img_pair", "not_nifti", {"magic": b"ni1\x00"}),
    ("sizeof_hdr_347", "not_nifti", {"sizeof_hdr": 347}),
    ("data_cut_gz", "truncated_data", {"gzip": True, "payload": "short", "delta": 7}),
    ("data_cut_be", "truncated_data", {"byteorder": ">", "payload": "short", "delta": 1}),
)


def build_header_variants(tmp_dir: Path) -> list[tuple[str, str, Path, Path]]:
    """Write each ``HEADER_VARIANTS`` file and its twin without the defect (the same base spec, so a
    valid CT) into ``tmp_dir``; returns ``[(name, code, bad path, twin path)]``."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, code, spec in HEADER_VARIANTS:
        paths = []
        for label, s in (("bad", spec), ("twin", {k: v for k, v in spec.items() if k in BASE_KEYS})):
            blob, gz = hostile_nifti(s)
            path = tmp_dir / f"{name}-{label}.nii{'.gz' if gz else ''}"
            path.write_bytes(blob)
            paths.append(path)
        out.append((name, code, paths[0], paths[1]))
    return out
