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
