"""Organ-of-interest masks on small synthetic chest and head-and-neck CTs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from autopaint.errors import InvalidInput
from autopaint.imaging.organs import (
    _coarse_factor,
    _lung_field,
    body_mask,
    headneck_mask,
    lung_mask,
    mask_from_user,
    mask_volume_ml,
    ooi_mask,
)
from autopaint.imaging.organs_morph import (
    _ball_reach,
    _depth,
    _distance_to,
    dilate_disk,
    fill_holes_slices,
    slice_component_stats,
)
from autopaint.imaging.volume import Volume

SP = (3.0, 3.0, 5.0)  # mm
SHAPE = (110, 80, 36)
SP_FINE = (1.0, 1.0, 5.0)   # scanner-like pixels: the lung closing runs on 2 x 2 blocks
SHAPE_FINE = (320, 220, 36)


def _world(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]          # (I, J, K, 3) RAS mm


def _lps_affine(shape, sp):
    """LPS-stored grid centred on the world origin (i -> Left, j -> Posterior, k -> Superior)."""
    a = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    a[:3, 3] = -a[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return a


def _chest(tumours: list[tuple[tuple[float, float, float], float]], shape=SHAPE,
           sp=SP) -> tuple[Volume, np.ndarray]:
    """Body ellipse (soft tissue 40 HU) with two lung ellipsoids (-850 HU), spine (700 HU), a
    trachea above the carina, and soft-tissue spheres ((centre mm), radius mm). Returns CT and the
    union of the tumours (bool, CT grid)."""
    aff = _lps_affine(shape, sp)
    w = _world(shape, aff)
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    hu = np.full(shape, -1000.0, np.float32)
    hu[(x / 150) ** 2 + (y / 100) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        lung = ((x - side * 70) / 50) ** 2 + (y / 70) ** 2 + (z / 80) ** 2 <= 1
        hu[lung] = -850.0
    hu[(x ** 2 + (y - 3) ** 2 <= 8 ** 2) & (z > 40)] = -1000.0      # trachea (RAS y: +anterior)
    hu[x ** 2 + (y + 80) ** 2 <= 15 ** 2] = 700.0                   # spine (posterior)
    hu[x ** 2 + (y - 50) ** 2 + (z + 70) ** 2 <= 20 ** 2] = -1000.0  # gas bubble (stomach)
    tum = np.zeros(shape, bool)
    for c, r in tumours:
        tum |= (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r ** 2
    hu[tum] = 40.0
    return Volume(hu, aff), tum


JUXTA = [((120.0 - 12.5, 0.0, 0.0), 12.5),       # 2.5 cm, right lung (RAS +x), on the chest wall
         ((-(20.0 + 15.0), 5.0, -10.0), 15.0)]   # 3 cm, left lung, on the mediastinum


def test_lung_mask_keeps_juxtapleural_and_juxtamediastinal_tumours():
    ct, tum = _chest(JUXTA)
    lung = lung_mask(ct)
    body = body_mask(ct)
    assert lung.shape == ct.shape and lung.dtype == bool
    for c, r in JUXTA:
        _, one = _chest([(c, r)])
        kept = (lung & one).sum() / one.sum()
        assert kept >= 0.95, (c, kept)
    assert lung.sum() < 0.6 * body.sum()
    # the lungs themselves are in, the spine and most of the mediastinum are out
    air = ct.data == -850
    assert (lung & air).sum() / air.sum() > 0.98
    assert not (lung & (ct.data == 700)).any()
    w = _world(SHAPE, ct.affine)
    mediastinum = (np.abs(w[..., 0]) < 10) & (np.abs(w[..., 2]) < 40) & (np.abs(w[..., 1]) < 40)
    assert (lung & mediastinum).sum() / mediastinum.sum() < 0.05
    trachea = (w[..., 0] ** 2 + (w[..., 1] - 3) ** 2 <= 64) & (w[..., 2] > 40)
    assert not (lung & trachea).any()
    gas = w[..., 0] ** 2 + (w[..., 1] - 50) ** 2 + (w[..., 2] + 70) ** 2 <= 15 ** 2
    assert not (lung & gas).any()


def test_lung_mask_closing_is_what_keeps_the_tumours():
    ct, tum = _chest(JUXTA)
    naive = (ct.data < -400) & body_mask(ct)
    assert (naive & tum).sum() == 0      # plain thresholding loses them: the closing is needed
    holes_only = lung_mask(ct, closing_mm=0.0, margin_mm=0.0)   # per-slice hole filling only
    assert (holes_only & tum).sum() / tum.sum() < 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_downsampled_closing_agrees_with_full_resolution_and_the_old_behaviour():
    """1 mm pixels: lung_mask closes on 2 x 2 blocks. It must agree with the same closing at full
    resolution and with the first version's per-slice disk closing at full resolution
    (``factor=1, ball=False`` reproduces that version bit for bit on the full-size phantoms)."""
    ct, tum = _chest(JUXTA, SHAPE_FINE, SP_FINE)
    assert _coarse_factor(ct.spacing) == 2
    fast = lung_mask(ct)
    full = _lung_field(ct, 25.0, 3.0, factor=1)
    old = _lung_field(ct, 25.0, 3.0, factor=1, ball=False)
    assert _dice(fast, full) >= 0.98
    assert _dice(fast, old) >= 0.97
    assert (fast & old).sum() / old.sum() >= 0.99          # what the old mask had is kept
    air = ct.data == -850
    assert (fast & air).sum() / air.sum() > 0.99
    for c, r in JUXTA:
        _, one = _chest([(c, r)], SHAPE_FINE, SP_FINE)
        assert (fast & one).sum() / one.sum() >= 0.95, c
    assert not (fast & (ct.data == 700)).any()


def test_ball_closing_keeps_a_tumour_that_fills_the_lung_edge_over_a_long_stretch():
    """A flat tumour replacing the lung along 10 cm of chest wall but only 3 cm high: no 5 cm disk
    bridges it within a slice (the old per-slice closing kept ~30 %); a 25 mm ball does, because the
    lung above and below it reaches the wall."""
    ct, _ = _chest([])
    w = _world(SHAPE, ct.affine)
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    lung = ((x - 70) / 50) ** 2 + (y / 70) ** 2 + (z / 80) ** 2 <= 1
    tum = (((x - 105) / 25) ** 2 + (y / 50) ** 2 + (z / 15) ** 2 <= 1) & lung
    hu = ct.data.copy()
    hu[tum] = 40.0
    ct = Volume(hu, ct.affine)
    assert (lung_mask(ct) & tum).sum() / tum.sum() >= 0.95
    assert (_lung_field(ct, 25.0, 3.0, None, ball=False) & tum).sum() / tum.sum() < 0.5


def _random_blobs(shape, seed, frac=0.5, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), sigma) > np.quantile(
        ndi.gaussian_filter(rng.normal(size=shape), sigma), 1 - frac)


def test_per_slice_helpers_match_scipy_slice_by_slice():
    m = _random_blobs((40, 30, 6), 1, frac=0.55)
    m[:, :, 3] = False                                      # an empty slice
    ref = np.stack([ndi.binary_fill_holes(m[:, :, k]) for k in range(6)], -1)
    assert np.array_equal(fill_holes_slices(m), ref)
    labels, area, ci, kk = slice_component_stats(m)
    for k in range(6):
        lab, n = ndi.label(m[:, :, k])
        mine = sorted(np.unique(labels[:, :, k][m[:, :, k]]).tolist())
        assert len(mine) == n
        for lab_id in range(1, n + 1):
            one = lab == lab_id
            (mid,) = np.unique(labels[:, :, k][one])         # one label of ours per scipy component
            assert area[mid] == one.sum() and kk[mid] == k
            assert ci[mid] == pytest.approx(np.nonzero(one)[0].mean())
    sp = np.array([0.8, 1.1, 3.0])
    gi, gj = np.mgrid[-5:6, -5:6]
    disk = (gi * sp[0]) ** 2 + (gj * sp[1]) ** 2 <= 3.5 ** 2
    small = _random_blobs((40, 30, 6), 2, frac=0.05, sigma=1.0)
    assert np.array_equal(dilate_disk(small, 3.5, sp), ndi.binary_dilation(small, disk[:, :, None]))


def test_ball_reach_is_the_3d_euclidean_distance():
    m = np.zeros((36, 30, 24), bool)
    m[8:28, 6:24, 6:18] = _random_blobs((20, 18, 12), 3, frac=0.08, sigma=1.0)
    samp = (1.5, 2.0)
    radius, dz = 7.0, 2.5
    mine = _ball_reach(_distance_to(m, samp, radius), radius, dz, np.inf)
    ref = ndi.distance_transform_edt(~m, sampling=(*samp, dz)) <= radius
    assert np.array_equal(mine, ref) and ref.sum() > 3 * m.sum()
    # the erosion half of the closing: slices beyond the array count as background (distance 0)
    ero = ~_ball_reach(_depth(ref, samp), radius, dz, 0.0)
    padded = np.pad(ref, 1)                                 # background all around, as assumed
    ref_ero = (ndi.distance_transform_edt(padded, sampling=(*samp, dz)) > radius)[1:-1, 1:-1, 1:-1]
    assert np.array_equal(ero, ref_ero) and (ero & ~m).sum() > 0   # the closing adds voxels


def test_lung_bases_kept_and_larger_bowel_gas_rejected():
    """Upper-abdomen slab like totalseg-ct's CT: two lung bases smaller than a colon gas pocket."""
    shape = (80, 60, 12)
    aff = _lps_affine(shape, (4.0, 4.0, 4.0))
    w = _world(shape, aff)
    x, y = w[..., 0], w[..., 1]
    hu = np.full(shape, -1000.0, np.float32)
    hu[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = 40.0
    bases = np.zeros(shape, bool)
    for side in (-1, 1):   # posterior crescents approximated by ellipses, -820 HU lung with vessels
        bases |= ((x - side * 70) / 30) ** 2 + ((y + 55) / 18) ** 2 <= 1
    hu[bases] = -820.0 + 60.0 * np.sin(x[bases] / 3.0)
    gas = ((x - 20) / 50) ** 2 + ((y - 50) / 30) ** 2 <= 1
    hu[gas] = -1000.0
    ct = Volume(hu, aff)
    assert gas.sum() > bases.sum()     # the gas pocket is larger than both lung bases together
    lung = lung_mask(ct)
    assert (lung & bases).sum() / bases.sum() > 0.98
    assert not (lung & gas).any()


def test_body_mask_and_volume_ml():
    ct, _ = _chest([])
    body = body_mask(ct)
    # ellipse 150 x 100 mm semi-axes over 36 slices of 5 mm: pi*a*b*h
    expected_ml = np.pi * 150 * 100 * 36 * 5 / 1000
    assert mask_volume_ml(body, ct) == pytest.approx(expected_ml, rel=0.05)


def _headneck() -> tuple[Volume, int, int]:
    """Neck cylinder, skull ring above slice 28, lungs below slice 8, airway throughout."""
    shape = (70, 70, 40)
    aff = _lps_affine(shape, (3.0, 3.0, 4.0))
    w = _world(shape, aff)
    x, y = w[..., 0], w[..., 1]
    k = np.arange(shape[2])[None, None, :] * np.ones(shape)
    hu = np.full(shape, -1000.0, np.float32)
    r2 = x ** 2 + y ** 2
    hu[r2 <= 70 ** 2] = 30.0
    hu[(r2 <= 8 ** 2) & (k < 28)] = -1000.0                              # airway
    hu[(r2 <= 7 ** 2) & (k < 28)] = -1000.0
    hu[((x ** 2 + (y + 40) ** 2) <= 10 ** 2) & (k < 28)] = 600.0          # cervical spine
    hu[(r2 >= 55 ** 2) & (r2 <= 62 ** 2) & (k >= 28)] = 900.0             # skull ring (bone)
    for side in (-1, 1):
        hu[(((x - side * 40) / 20) ** 2 + (y / 30) ** 2 <= 1) & (k < 8)] = -850.0   # lung apices
    return Volume(hu, aff), 28, 8


def test_headneck_mask_finds_skull_base_and_lung_apex():
    ct, skull_k, apex_k = _headneck()
    m = headneck_mask(ct)
    ks = np.nonzero(m.any(axis=(0, 1)))[0]
    assert ks.min() == apex_k and ks.max() == skull_k
    assert m[:, :, 15].sum() > 0.9 * body_mask(ct)[:, :, 15].sum()


def test_headneck_lung_apex_is_not_fooled_by_lateral_sinus_air():
    """Maxillary-sinus-like lateral air pockets just below the skull base (> 500 mm^2 per slice, as
    in the full-size phantoms): the first version took them for the lung apex (empty mask); lung
    air is the lateral air connected to the bottom of the scan."""
    ct, skull_k, apex_k = _headneck()
    w = _world(ct.shape, ct.affine)
    k = np.arange(ct.shape[2])[None, None, :] * np.ones(ct.shape)
    hu = ct.data.copy()
    for side in (-1, 1):
        sinus = ((w[..., 0] - side * 30) ** 2 + (w[..., 1] - 25) ** 2 <= 15 ** 2) & (k >= 23) & (k < 27)
        hu[sinus] = -1000.0
    assert (hu[:, :, 24] < -400).sum() * 9.0 > 1000.0
    m = headneck_mask(Volume(hu, ct.affine))
    ks = np.nonzero(m.any(axis=(0, 1)))[0]
    assert ks.min() == apex_k and ks.max() == skull_k


def test_headneck_z_range_option_uses_world_mm():
    ct, _, _ = _headneck()
    z = ct.affine[2, 2] * np.arange(ct.shape[2]) + ct.affine[2, 3]
    m = headneck_mask(ct, z_range_mm=(float(z[12]) - 1.0, float(z[20]) + 1.0))
    assert list(np.nonzero(m.any(axis=(0, 1)))[0]) == list(range(12, 21))
    with pytest.raises(InvalidInput) as e:
        headneck_mask(ct, z_range_mm=(5000.0, 6000.0))
    assert e.value.code == "empty_organ_mask"


def test_empty_masks_raise():
    air = Volume(np.full((20, 20, 5), -1000.0, np.float32), np.eye(4))
    for fn in (body_mask, lung_mask, headneck_mask):
        with pytest.raises(InvalidInput) as e:
            fn(air)
        assert e.value.code == "empty_organ_mask"
    soft = Volume(np.full((20, 20, 5), 40.0, np.float32), np.eye(4))
    with pytest.raises(InvalidInput):
        lung_mask(soft)          # no air inside the body
    with pytest.raises(InvalidInput):
        mask_from_user(Volume(np.zeros((4, 4, 4), np.float32), np.eye(4)), soft)


def test_user_mask_is_resampled_nearest_and_ooi_dispatch():
    ct, tum = _chest(JUXTA[:1])
    coarse_aff = ct.affine.copy()
    coarse_aff[:3, :3] *= 2.0
    coarse_aff[:3, 3] = ct.affine[:3, 3] + ct.affine[:3, :3] @ [0.5, 0.5, 0.5]
    user = np.zeros((55, 40, 18), np.float32)
    user[10:30, 5:25, 4:10] = 1
    out = mask_from_user(Volume(user, coarse_aff), ct)
    assert out.dtype == bool and out.shape == ct.shape
    assert out.sum() == user.sum() * 8            # each coarse voxel = 2x2x2 fine voxels
    assert np.array_equal(ooi_mask(ct, "thorax", user_mask=Volume(user, coarse_aff)), out)
    assert np.array_equal(ooi_mask(ct, "custom"), body_mask(ct))
    assert np.array_equal(ooi_mask(ct, "thorax"), lung_mask(ct))
    with pytest.raises(InvalidInput):
        ooi_mask(ct, "abdomen")
