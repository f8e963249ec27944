"""Preprocessing: SUV, windows, PET -> CT resampling, canonical slicing and its exact inverse."""

from __future__ import annotations

import numpy as np
import pytest

from autopaint.errors import InvalidInput
from autopaint.imaging.preprocess import (
    PreprocessParams,
    denormalize,
    params_for,
    prepare_case,
)
from autopaint.imaging.resample import resample_to
from autopaint.imaging.slicegrid import Canonical, SliceGrid
from autopaint.imaging.suv import pet_to_suv, suv_from_bqml
from autopaint.imaging.volume import Volume


def _affine(spacing, origin, perm=(0, 1, 2), signs=(1, 1, 1)) -> np.ndarray:
    """Affine whose index axis n points along world axis perm[n] with sign signs[n]."""
    a = np.eye(4)
    a[:3, :3] = 0.0
    for n in range(3):
        a[perm[n], n] = signs[n] * spacing[n]
    a[:3, 3] = origin
    return a


def _sphere(shape, affine, centre_mm, radius_mm, inside=1.0, outside=0.0) -> Volume:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    d = np.linalg.norm(xyz - np.asarray(centre_mm), axis=1).reshape(shape)
    return Volume(np.where(d <= radius_mm, inside, outside).astype(np.float32), affine)


def _world_centroid(vol_data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    w = np.asarray(vol_data, dtype=np.float64)
    ijk = np.array(np.nonzero(w > 0)).T
    c = (ijk * w[w > 0][:, None]).sum(0) / w[w > 0].sum()
    return c @ affine[:3, :3].T + affine[:3, 3]


# --- SUV -------------------------------------------------------------------------------------

def test_suv_formula_matches_hand_computed_value():
    pet = Volume(np.full((2, 2, 2), 5000.0, np.float32), np.eye(4))
    # 70 kg, 370 MBq, 60 min delay, F-18: dose = 370e6 * 2^(-3600/6586.2) = 253_045_...
    out = suv_from_bqml(pet, weight_kg=70.0, injected_dose_bq=370e6, delay_s=3600.0)
    dose = 370e6 * 0.5 ** (3600.0 / 6586.2)
    assert dose == pytest.approx(253.0e6, rel=2e-3)
    assert out.data[0, 0, 0] == pytest.approx(5000.0 * 70000.0 / dose, rel=1e-5)
    assert out.data[0, 0, 0] == pytest.approx(1.383, abs=2e-3)
    assert out.meta["units"] == "SUVbw"


def test_suv_from_tags_passthrough_and_missing():
    pet = Volume(np.ones((2, 2, 2), np.float32) * 3, np.eye(4))
    same = pet_to_suv(pet, {"units": "GML"})
    assert np.array_equal(same.data, pet.data) and same.meta["suv_source"] == "passthrough"
    assert pet_to_suv(pet, already_suv=True).meta["suv_source"] == "passthrough"
    conv = pet_to_suv(pet, {"units": "BQML", "weight_kg": 80, "injected_dose_bq": 2e8,
                            "delay_s": 0, "half_life_s": 6586.2})
    assert conv.data[0, 0, 0] == pytest.approx(3 * 80000 / 2e8)
    admin = pet_to_suv(pet, {"units": "BQML", "weight_kg": 80, "injected_dose_bq": 2e8,
                             "delay_s": 3600, "decay_correction": "ADMIN"})
    assert admin.data[0, 0, 0] == pytest.approx(conv.data[0, 0, 0])    # no decay to correct
    with pytest.raises(InvalidInput) as e:
        pet_to_suv(pet, {"units": "BQML", "weight_kg": 80})
    assert e.value.code == "missing_suv_info"
    with pytest.raises(InvalidInput):
        suv_from_bqml(pet, weight_kg=0.0, injected_dose_bq=1e8, delay_s=0)


# --- windows ---------------------------------------------------------------------------------

def test_params_presets_and_dict_round_trip():
    p = params_for("headneck", "petct", 128)
    assert p.ct_window == (-200.0, 200.0) and p.suv_window == (0.0, 12.0) and p.quantize_8bit
    assert params_for("thorax", "ct", 256).ct_window == (-1000.0, 500.0)
    assert PreprocessParams.from_dict(p.to_dict()) == p
    assert params_for("custom", "ct", 64, ct_window=(-100, 300)).ct_window == (-100.0, 300.0)
    with pytest.raises(InvalidInput):
        params_for("custom", "ct", 64)
    with pytest.raises(InvalidInput):
        params_for("thorax", "mri", 64)


def test_window_normalise_quantise_and_denormalize():
    hu = np.array([-2000, -1000, -250, 500, 3000, -999], np.float32).reshape(1, 1, 6)
    suv = np.array([-1, 0, 6, 12, 40, 0.01], np.float32).reshape(1, 1, 6)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    p = params_for("thorax", "petct", 8)
    pc = prepare_case(Volume(hu, aff), Volume(suv, aff), p)
    # the single (square) pixel fills the whole 8x8 image
    centre = pc.images[:, :, 4, 4]
    q = 128 / 255  # round(0.5 * 255) / 255 (half to even)
    assert np.allclose(centre[:, 0], [0, 0, q, 1, 1, 0], atol=1e-6)   # -999 HU -> 0.00067 -> 0
    assert np.allclose(centre[:, 1], [0, 0, q, 1, 1, 0], atol=1e-6)
    assert np.allclose(pc.images * 255, np.round(pc.images * 255), atol=1e-4)  # 8-bit levels
    hu_back, suv_back = denormalize(pc.images, p)
    assert hu_back is not None and suv_back is not None
    assert hu_back[2, 4, 4] == pytest.approx(-250, abs=3) and suv_back[2, 4, 4] == pytest.approx(6, abs=0.03)
    raw = prepare_case(Volume(hu, aff), None, params_for("thorax", "ct", 8, quantize_8bit=False))
    assert raw.images[5, 0, 4, 4] == pytest.approx(1 / 1500, rel=1e-4)


# --- resampling ------------------------------------------------------------------------------

def test_pet_resampled_onto_ct_keeps_hot_sphere_centroid():
    pet_aff = _affine((4.0, 4.0, 3.3), (-60.0, -50.0, -20.0))
    centre = np.array([3.7, 6.1, 8.9])
    pet = _sphere((30, 26, 14), pet_aff, centre, 9.0, inside=8.0, outside=1.0)
    ct_aff = _affine((0.9, 1.1, 2.0), (70.0, 45.0, -18.0), signs=(-1, -1, 1))   # LPS-like CT
    ct = Volume(np.zeros((150, 80, 20), np.float32), ct_aff)
    for order in (3, 1):
        on_ct = resample_to(pet, ct, order=order)
        assert on_ct.shape == ct.shape and np.array_equal(on_ct.affine, ct.affine)
        hot = np.clip(on_ct.data - 1.0, 0, None)
        err = np.linalg.norm(_world_centroid(hot, ct_aff) - centre)
        assert err < 4.0, (order, err)                  # within one PET voxel
    true_pet = np.linalg.norm(_world_centroid(np.clip(pet.data - 1, 0, None), pet_aff) - centre)
    assert true_pet < 4.0


def test_separable_resampling_equals_simpleitk():
    rng = np.random.default_rng(0)
    pet = Volume(rng.uniform(0, 10, (20, 22, 12)).astype(np.float32),
                 _affine((4.0, 4.2, 3.3), (3.0, -7.0, 1.0), signs=(-1, -1, 1)))
    ref = Volume(np.zeros((60, 70, 30), np.float32),
                 _affine((1.1, 1.2, 1.3), (5.0, -9.0, 2.0), signs=(-1, -1, 1)))
    for order in (1, 3):
        fast = resample_to(pet, ref, order, fast=True).data
        slow = resample_to(pet, ref, order, fast=False).data
        assert np.abs(fast - slow).max() < 1e-3, order
        assert np.count_nonzero(fast) == np.count_nonzero(slow) > 0


# --- slicing ---------------------------------------------------------------------------------

def _odd_ct() -> Volume:
    """Non-square, anisotropic, permuted + flipped orientation (index i along world y, j along -x)."""
    aff = _affine((0.8, 1.3, 2.5), (40.0, -30.0, 100.0), perm=(1, 0, 2), signs=(1, -1, -1))
    return _sphere((52, 37, 9), aff, (10.0, -5.0, 90.0), 6.0, inside=200.0, outside=-800.0)


def test_slicegrid_index_maps_are_exact_inverses():
    g = SliceGrid(shape_ij=(52, 37), spacing_ij=(0.8, 1.3), size=64)
    pts = np.random.default_rng(1).uniform(-0.5, 51, (100, 2))
    assert np.allclose(g.model_to_ct_index(g.ct_to_model_index(pts)), pts, atol=1e-9)
    r0, r1, c0, c1 = g.content_box
    # physical aspect ratio is kept: content box in mm equals the slice extent in mm
    assert (r1 - r0) * g.pixel_mm == pytest.approx(52 * 0.8)
    assert (c1 - c0) * g.pixel_mm == pytest.approx(37 * 1.3)
    assert max(r1 - r0, c1 - c0) == pytest.approx(64)


def test_slicegrid_round_trip_within_half_voxel_and_same_affine():
    ct = _odd_ct()
    for size in (32, 64, 128):  # shrinking (1.5 mm/px) and enlarging model grids
        pc = prepare_case(ct, None, params_for("thorax", "ct", size))
        assert pc.images.shape == (9, 1, size, size)
        back = pc.to_reference(pc.images[:, 0], order=1)
        assert back.shape == ct.shape
        assert np.array_equal(pc.reference.affine, ct.affine)
        hu_back = back * 1500.0 - 1000.0
        fg_true = ct.data > -300
        c_true = _world_centroid(fg_true, ct.affine)
        c_back = _world_centroid(np.clip(hu_back + 800, 0, None), ct.affine)
        half = 0.5 * min(ct.spacing)
        assert np.linalg.norm(c_back - c_true) <= half, (size, c_back, c_true)
        assert np.abs(hu_back - ct.data).mean() < 60, (size, np.abs(hu_back - ct.data).mean())
        m = pc.mask_to_model(fg_true)
        assert m.dtype == bool and m.shape == (9, size, size)
        mback = pc.to_reference(m.astype(np.float32), order=1) >= 0.5
        dice = 2 * (mback & fg_true).sum() / (mback.sum() + fg_true.sum())
        assert dice > 0.85, (size, dice)


def test_canonical_slices_look_the_same_for_any_storage_orientation():
    ras = _affine((1.0, 1.5, 2.0), (0.0, 0.0, 0.0))
    base = np.random.default_rng(2).uniform(-1000, 500, (20, 14, 5)).astype(np.float32)
    a = prepare_case(Volume(base, ras), None, params_for("thorax", "ct", 32)).images
    # the same voxels stored L->R reversed and P->A reversed (LPS), and with i/j swapped
    lps = ras.copy()
    lps[:3, 0] *= -1
    lps[:3, 1] *= -1
    lps[:3, 3] = ras[:3, :3] @ [19, 13, 0]
    b = prepare_case(Volume(base[::-1, ::-1].copy(), lps), None, params_for("thorax", "ct", 32)).images
    swap = ras[:, [1, 0, 2, 3]]
    c = prepare_case(Volume(base.transpose(1, 0, 2).copy(), swap), None,
                     params_for("thorax", "ct", 32)).images
    assert np.allclose(a, b, atol=1e-6) and np.allclose(a, c, atol=1e-6)
    can = Canonical.for_affine(lps, (20, 14, 5))
    assert np.array_equal(can.from_canonical(can.to_canonical(base)), base)


def test_prepare_case_modalities_and_missing_inputs():
    ct = _odd_ct()
    pet_aff = _affine((4.0, 4.0, 2.5), (-30.0, -60.0, 80.0))
    pet = _sphere((20, 20, 10), pet_aff, (10.0, -5.0, 90.0), 8.0, inside=10.0, outside=1.0)
    pc = prepare_case(ct, pet, params_for("thorax", "petct", 64))
    assert pc.images.shape == (9, 2, 64, 64) and pc.pet_on_ref is not None
    assert pc.pet_on_ref.shape == ct.shape and pc.pet_on_ref.data.min() >= 0.0
    # CT channel 0 and PET channel 1 are hot in the same place
    k = int(np.argmax(pc.images[:, 1].sum(axis=(1, 2))))
    hot_pet = np.unravel_index(np.argmax(pc.images[k, 1]), (64, 64))
    assert pc.images[k, 0][hot_pet] > 0.5
    pet_only = prepare_case(None, pet, params_for("thorax", "pet", 32))
    assert pet_only.reference is pet and pet_only.images.shape == (10, 1, 32, 32)
    with pytest.raises(InvalidInput):
        prepare_case(ct, None, params_for("thorax", "petct", 32))
    with pytest.raises(InvalidInput):
        prepare_case(None, pet, params_for("thorax", "ct", 32))
