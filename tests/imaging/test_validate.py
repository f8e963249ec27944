"""Header-first validation: crafted bad files, header parsing vs nibabel, bounded memory, real data, CLI."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autopaint.errors import InvalidInput
from autopaint.imaging.validate import (
    ValidationLimits,
    check_header_bytes,
    inspect_nifti,
    inspect_pair,
    validate_nifti,
    validate_pair,
)
from autopaint.paths import data_dir
from tests.imaging.badfiles import (
    AFFINE,
    HEADER_VARIANTS,
    OFF_BITPIX,
    OFF_DATATYPE,
    OFF_DIM,
    OFF_PIXDIM,
    OFF_SCL_SLOPE,
    OFF_SROW_X,
    OFF_VOX_OFFSET,
    ROLE_FOR_CODE,
    build_bad_files,
    build_header_variants,
    build_shifted_pair,
    ct_array,
    header_block,
    nifti_bytes,
    write_gzip_bomb,
    write_huge_declared,
)

BAD_CODES = ["not_nifti", "truncated_header", "bad_dims", "too_many_dims", "truncated_data",
             "unsupported_dtype", "bad_affine", "bad_spacing", "bad_scl_slope", "bad_vox_offset",
             "non_finite_values", "ct_out_of_range", "negative_suv", "mask_not_binary", "corrupt_gzip",
             "too_many_voxels", "decompressed_size_mismatch"]
STS = data_dir() / "ibsi-sts" / "STS_001"


def _load(path: Path) -> Any:
    return nib.load(path)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_bad_files(tmp_path_factory.mktemp("bad"))


def test_suite_has_one_file_per_code(bad_files: dict[str, Path]) -> None:
    assert sorted(bad_files) == sorted(BAD_CODES)
    assert len(set(BAD_CODES)) >= 15


@pytest.mark.parametrize("code", BAD_CODES)
def test_bad_file_rejected_with_its_code(bad_files: dict[str, Path], code: str) -> None:
    role = ROLE_FOR_CODE.get(code, "ct")
    with pytest.raises(InvalidInput) as exc:
        validate_nifti(bad_files[code], role)
    assert exc.value.code == code
    assert "\n" not in str(exc.value) and str(exc.value)
    report = inspect_nifti(bad_files[code], role)
    assert not report.ok and report.code == code
    assert json.loads(json.dumps(report.to_dict()))["code"] == code


# the header field each header-level crafted file breaks: (first byte, end) in the NIfTI-1 header
DEFECT_BYTES = {"bad_dims": (OFF_DIM, OFF_DIM + 16), "bad_affine": (OFF_SROW_X, OFF_SROW_X + 48),
                "bad_spacing": (OFF_PIXDIM, OFF_PIXDIM + 32), "bad_scl_slope": (OFF_SCL_SLOPE, OFF_SCL_SLOPE + 8),
                "bad_vox_offset": (OFF_VOX_OFFSET, OFF_VOX_OFFSET + 4)}


@pytest.mark.parametrize("code", sorted(DEFECT_BYTES))
def test_crafted_header_file_carries_only_its_defect(bad_files: dict[str, Path], code: str) -> None:
    """The header-level crafted files differ from a valid CT only inside the one field they break
    (vox_offset 352 in all but bad_vox_offset): the check they are named after is the one reached,
    not an earlier or later one, and with that field restored the file is accepted."""
    valid = nifti_bytes(ct_array())
    bad = bad_files[code].read_bytes()
    assert len(bad) == len(valid)
    lo, hi = DEFECT_BYTES[code]
    changed = [i for i, (a, b) in enumerate(zip(bad, valid, strict=True)) if a != b]
    assert changed and all(lo <= i < hi for i in changed), (code, changed)
    vox = struct.unpack_from("<f", bad, OFF_VOX_OFFSET)[0]
    assert (vox == 352.0) != (code == "bad_vox_offset")
    assert struct.unpack_from("<2h", bad, OFF_DATATYPE) == struct.unpack_from("<2h", valid, OFF_DATATYPE)
    assert OFF_BITPIX == OFF_DATATYPE + 2
    restored = bytearray(bad)
    restored[lo:hi] = valid[lo:hi]
    assert inspect_nifti(_write(bad_files[code].parent / f"restored-{code}.nii", bytes(restored)), "ct").ok


@pytest.fixture(scope="module")
def header_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path, Path]]:
    return {name: (code, bad, twin) for name, code, bad, twin in build_header_variants(tmp_path_factory.mktemp("var"))}


def _raw_header(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data)[:540] if data[:2] == b"\x1f\x8b" else data[:540]


@pytest.mark.parametrize("name", [v[0] for v in HEADER_VARIANTS])
def test_header_variant_reaches_its_check(header_variants: dict[str, tuple[str, Path, Path]], name: str) -> None:
    """More crafted defects per header check (slope/inter inf/NaN, dim[0] 0/8/-1, a zero or negative
    size, NaN/negative/inf spacing, NaN/inf/singular srow, a quaternion longer than 1 or NaN, invalid
    xform codes, bitpix/datatype, vox_offset inside the header / fractional / NaN / beyond the cap,
    NIfTI-2, big-endian, gzip), each rejected with its own code, and its twin (the same spec without
    the defect) accepted; vox_offset is the same in both unless it is the defect."""
    code, bad, twin = header_variants[name]
    rep = inspect_nifti(bad, "ct")
    assert rep.code == code, (name, rep.code, rep.message)
    assert inspect_nifti(twin, "ct").ok
    with pytest.raises(InvalidInput) as exc:
        validate_nifti(bad, "ct")
    assert exc.value.code == code
    if code != "bad_vox_offset" and not name.startswith(("magic", "sizeof")):
        bh, th = _raw_header(bad), _raw_header(twin)
        at, fmt = (OFF_VOX_OFFSET, "f") if bh[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") else (168, "q")
        bo = "<" if bh[:4] in (b"\x5c\x01\x00\x00", b"\x1c\x02\x00\x00") else ">"
        assert struct.unpack_from(bo + fmt, bh, at) == struct.unpack_from(bo + fmt, th, at), name


def test_bomb_is_a_real_gzip_of_the_advertised_size(bad_files: dict[str, Path]) -> None:
    n = 0
    with gzip.open(bad_files["decompressed_size_mismatch"]) as fh:  # also verifies the gzip CRC
        while chunk := fh.read(1 << 22):
            n += len(chunk)
    assert n > 64 * 1024 * 1024
    assert bad_files["decompressed_size_mismatch"].stat().st_size < 200_000


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_more_gzip_and_size_defects(tmp_path: Path) -> None:
    valid = nifti_bytes(ct_array())
    cases = {
        "garbage.nii.gz": (b"\x1f\x8b\x08\x00" + b"\xff" * 500, "corrupt_gzip"),
        "headcut.nii.gz": (gzip.compress(valid)[:40], "corrupt_gzip"),
        "trailing.nii.gz": (gzip.compress(valid) + b"GARBAGE!", "corrupt_gzip"),
        "plain_named_gz.nii.gz": (valid, "corrupt_gzip"),
        "gz_named_plain.nii": (gzip.compress(valid), "not_nifti"),
        "short_gz.nii.gz": (gzip.compress(valid[:-100]), "truncated_data"),
        "hdr_img_pair.nii": (valid[:344] + b"ni1\x00" + valid[348:], "not_nifti"),
    }
    for name, (data, code) in cases.items():
        report = inspect_nifti(_write(tmp_path / name, data), "ct")
        assert report.code == code, (name, report.code, report.message)
    big = _write(tmp_path / "big.nii", valid)
    assert inspect_nifti(big, "ct", ValidationLimits(max_file_bytes=1000)).code == "file_too_large"
    assert inspect_nifti(big, "ct", ValidationLimits(max_voxels=100)).code == "too_many_voxels"
    # a multi-member gzip (concatenated streams) is valid gzip and accepted
    multi = _write(tmp_path / "multi.nii.gz", gzip.compress(valid[:1000]) + gzip.compress(valid[1000:]))
    assert inspect_nifti(multi, "ct").ok


def test_valid_variants_accepted(tmp_path: Path) -> None:
    ct = ct_array()
    # trailing singleton 4th dimension
    assert inspect_nifti(_write(tmp_path / "a.nii", nifti_bytes(ct[..., None])), "ct").shape == (12, 10, 8)
    # int16 with scl_slope/scl_inter: the checks see HU after scaling
    raw = np.rint((ct + 1024.0) / 0.5).astype(np.int16)
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_slope_inter(0.5, -1024.0)
    img.to_filename(tmp_path / "scaled.nii.gz")
    rep = validate_nifti(tmp_path / "scaled.nii.gz", "ct")
    assert rep.value_range is not None and rep.value_range[0] == pytest.approx(-1000.0)
    # outside-FOV padding at -3024 HU and a few metal voxels above 4000 HU are real CT, accepted
    padded = ct_array((40, 40, 20))  # 32000 voxels: up to 32 outliers tolerated (0.1 %)
    padded[0, :, :] = -3024.0
    padded[5, 5, 5] = 15000.0
    assert validate_nifti(_write(tmp_path / "pad.nii", nifti_bytes(padded)), "ct").ok
    # ...but the same image in raw stored units (no rescale, all >= 0 and many > 4000) is not
    assert inspect_nifti(_write(tmp_path / "x.nii", nifti_bytes(ct * 10 + 10240)), "ct").code == "ct_out_of_range"
    # big-endian files parse too
    be = nib.Nifti1Image(ct.astype(">f4"), AFFINE)
    be.to_filename(tmp_path / "be.nii")
    rep = validate_nifti(tmp_path / "be.nii", "ct")
    assert np.allclose(rep.affine, AFFINE) and rep.value_range == (float(ct.min()), float(ct.max()))


def _oblique(flip: bool) -> np.ndarray:
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = rz @ rx @ np.diag([0.9, 1.3, -2.5 if flip else 2.5])
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = m, [-120.5, 33.25, 710.0]
    return aff


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("codes", [(1, 1), (0, 1), (1, 0), (0, 0)])
@pytest.mark.parametrize("version", [1, 2])
def test_header_affine_matches_nibabel(tmp_path: Path, flip: bool, codes: tuple[int, int], version: int) -> None:
    aff = _oblique(flip)
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(ct_array(), aff)
    img.set_sform(aff, code=codes[0])
    img.set_qform(aff, code=codes[1])
    path = tmp_path / "o.nii.gz"
    img.to_filename(path)
    rep = validate_nifti(path, "ct")
    assert rep.nifti_version == version
    np.testing.assert_allclose(rep.affine, _load(path).affine, atol=1e-4)
    head = path.read_bytes()[:2048]
    hdr = check_header_bytes(head, path.stat().st_size)
    np.testing.assert_allclose(hdr.affine, _load(path).affine, atol=1e-4)


def test_check_header_bytes_on_stream_prefix(tmp_path: Path) -> None:
    huge = write_huge_declared(tmp_path / "huge.nii")
    with pytest.raises(InvalidInput) as exc:
        check_header_bytes(huge.read_bytes()[:400], huge.stat().st_size, compressed=False)
    assert exc.value.code == "too_many_voxels"
    with pytest.raises(InvalidInput) as exc:
        check_header_bytes(huge.read_bytes()[:400], huge.stat().st_size,
                           limits=ValidationLimits(max_voxels=2**31))
    assert exc.value.code == "truncated_data"
    with pytest.raises(InvalidInput) as exc:
        check_header_bytes(b"\x00" * 100, compressed=True)
    assert exc.value.code == "corrupt_gzip"
    # NIfTI-2 declaring 2^40 voxels with 64-bit dims
    block = bytearray(nib.Nifti2Header().binaryblock)
    struct.pack_into("<8q", block, 16, 3, 2**14, 2**14, 2**12, 1, 1, 1, 1)
    with pytest.raises(InvalidInput) as exc:
        check_header_bytes(gzip.compress(bytes(block) + b"\0" * 4))
    assert exc.value.code == "too_many_voxels"


def test_dims_edge_cases(tmp_path: Path) -> None:
    ct = ct_array()
    block = header_block(ct.shape, ct.dtype)
    struct.pack_into("<h", block, OFF_DIM, 9)
    assert inspect_nifti(_write(tmp_path / "d9.nii", nifti_bytes(ct, block=block)), "ct").code == "bad_dims"
    block = header_block(ct.shape, ct.dtype)
    struct.pack_into("<h", block, OFF_DIM + 6, -8)
    assert inspect_nifti(_write(tmp_path / "neg.nii", nifti_bytes(ct, block=block)), "ct").code == "bad_dims"


def test_shifted_pair_fails_and_aligned_pair_passes(tmp_path: Path) -> None:
    ct, pet = build_shifted_pair(tmp_path / "far", shift_mm=1000.0)
    pair = inspect_pair(ct, pet)
    assert pair.ct.ok and pair.pet.ok and not pair.ok
    assert pair.code == "pet_ct_no_overlap" and pair.overlap == 0.0
    with pytest.raises(InvalidInput) as exc:
        validate_pair(ct, pet)
    assert exc.value.code == "pet_ct_no_overlap"
    ct2, pet2 = build_shifted_pair(tmp_path / "near", shift_mm=0.0)
    assert validate_pair(ct2, pet2).overlap > 0.9
    ct3, pet3 = build_shifted_pair(tmp_path / "half", shift_mm=20.0)  # PET box 30 mm tall, 10 mm shared
    assert inspect_pair(ct3, pet3).overlap == pytest.approx(1 / 3, abs=0.02)


@pytest.mark.skipif(not STS.is_dir(), reason="real data folder missing")
def test_real_sts_001_pass() -> None:
    ct = validate_nifti(STS / "CT_image.nii.gz", "ct")
    pet = validate_nifti(STS / "PET_image.nii.gz", "pet")
    assert validate_nifti(STS / "CT_mask.nii.gz", "mask").value_range == (0.0, 1.0)
    assert ct.shape == _load(STS / "CT_image.nii.gz").shape
    assert ct.affine is not None
    np.testing.assert_allclose(ct.affine, _load(STS / "CT_image.nii.gz").affine, atol=1e-4)
    assert ct.value_range is not None and -1100 <= ct.value_range[0] and ct.value_range[1] <= 4000
    assert pet.value_range is not None and pet.value_range[0] >= 0
    pair = validate_pair(STS / "CT_image.nii.gz", STS / "PET_image.nii.gz")
    assert pair.overlap is not None and pair.overlap > 0.9


# ------------------------------------------------------------------------------- memory and CLI

_WRAPPER = ("import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, "
            "text=True); print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, "
            "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def run_cli_measured(*args: str) -> dict:
    """Run ``autopaint <args>`` in a fresh child of a fresh parent; report rc, output, peak RSS (MB)."""
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "autopaint.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(res.stdout)


def test_huge_declared_and_gzip_bomb_rejected_with_bounded_rss(tmp_path: Path) -> None:
    huge = write_huge_declared(tmp_path / "huge.nii")
    bomb = write_gzip_bomb(tmp_path / "bomb.nii.gz", 2 * 1024**3)  # expands to 2 GiB
    assert huge.stat().st_size < 400_000 and bomb.stat().st_size < 3_000_000
    floor = run_cli_measured("version")["rss_mb"]
    for path, code in ((huge, "too_many_voxels"), (bomb, "decompressed_size_mismatch")):
        res = run_cli_measured("validate", "--ct", str(path))
        assert res["rc"] == 2, res["err"]
        assert json.loads(res["out"])["files"][0]["code"] == code
        assert res["rss_mb"] < 300, res
        print(f"{code}: peak RSS {res['rss_mb']:.1f} MB (CLI import floor {floor:.1f} MB)")


def test_cli_report_and_exit_codes(tmp_path: Path, bad_files: dict[str, Path]) -> None:
    ct, pet = build_shifted_pair(tmp_path / "ok", shift_mm=0.0)
    mask = tmp_path / "mask.nii"
    mask.write_bytes(nifti_bytes((ct_array((20, 20, 10)) > 0).astype(np.uint8)))
    proc = subprocess.run([sys.executable, "-m", "autopaint.cli", "validate", "--ct", str(ct), "--pet",
                           str(pet), "--mask", str(mask)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "[missing_suv_info]" in proc.stderr  # a NIfTI PET must state its units
    proc = subprocess.run([sys.executable, "-m", "autopaint.cli", "validate", "--ct", str(ct), "--pet",
                           str(pet), "--mask", str(mask), "--suv-already"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and [f["role"] for f in report["files"]] == ["ct", "pet", "mask"]
    assert report["pair"]["ok"] and report["pair"]["overlap"] > 0.9
    far_ct, far_pet = build_shifted_pair(tmp_path / "far")
    proc = subprocess.run([sys.executable, "-m", "autopaint.cli", "validate", "--ct", str(far_ct), "--pet",
                           str(far_pet)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["pair"]["code"] == "pet_ct_no_overlap"
    assert len(proc.stderr.strip().splitlines()) == 1 and "pet_ct_no_overlap" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "autopaint.cli", "validate", "--ct", str(bad_files["bad_affine"]),
                           "--pet", str(pet)], capture_output=True, text=True, timeout=120)
    out = json.loads(proc.stdout)
    assert proc.returncode == 2 and out["files"][0]["code"] == "bad_affine" and out["files"][1]["ok"]
    assert out["pair"]["code"] == "bad_affine"


@pytest.mark.slow
@pytest.mark.skipif(not data_dir().is_dir(), reason="real data folder missing")
def test_every_real_nifti_passes_and_matches_nibabel() -> None:
    """All real files (IBSI STS CT/PET/masks, OpenKBP CTs with dental metal and organ masks, TotalSeg CT)."""
    files = sorted(data_dir().glob("**/*.nii*"))
    assert len(files) > 100
    for path in files:
        name = path.name.lower()
        role = "pet" if name.startswith("pet_image") else "ct" if name in ("ct.nii.gz", "ct_image.nii.gz") \
            or name.startswith("example_ct") else "mask"
        rep = inspect_nifti(path, role)
        assert rep.ok, (path, rep.code, rep.message)
        np.testing.assert_allclose(rep.affine, _load(path).affine, atol=1e-4)
    sts = sorted(p for p in (data_dir() / "ibsi-sts").glob("STS_*") if p.is_dir())
    for case in sts:
        assert validate_pair(case / "CT_image.nii.gz", case / "PET_image.nii.gz").ok, case.name
