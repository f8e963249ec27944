"""Synthetic PET/CT phantoms: determinism, geometry, PET/CT world alignment, labels."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from autopaint.data.phantom import PhantomCase, case_seed, generate_case, write_cohort
from autopaint.errors import InvalidInput
from autopaint.imaging.io import read_volume
from autopaint.imaging.preprocess import resample_to


@cache
def _case(kind: str, seed: int, healthy: bool = False) -> PhantomCase:
    return generate_case(kind, seed, "small", healthy)


@pytest.mark.parametrize("kind", ["thorax", "headneck"])
def test_same_seed_same_arrays_other_seed_differs(kind: str) -> None:
    a, b = _case(kind, 3), generate_case(kind, 3, "small")
    for va, vb in ((a.ct, b.ct), (a.pet, b.pet), (a.label, b.label)):
        np.testing.assert_array_equal(va.data, vb.data)
        np.testing.assert_array_equal(va.affine, vb.affine)
    assert a.info == b.info
    c = _case(kind, 4)
    assert c.ct.shape != a.ct.shape or not np.array_equal(c.ct.data, a.ct.data)
    assert c.info != a.info


@pytest.mark.parametrize("kind", ["thorax", "headneck"])
def test_scanner_geometry_and_dtypes(kind: str) -> None:
    case = _case(kind, 3)
    ct, pet, label = case.ct, case.pet, case.label
    assert ct.data.dtype == np.int16 and pet.data.dtype == np.float32 and label.data.dtype == np.uint8
    assert ct.shape[:2] == (256, 256) and ct.shape[2] == 40 and label.shape == ct.shape
    # LPS-style scanner in RAS+: i -> patient left (x decreases), j -> posterior, k -> superior
    assert ct.affine[0, 0] < 0 and ct.affine[1, 1] < 0 and ct.affine[2, 2] > 0
    assert 1.8 < ct.spacing[0] < 2.1 and abs(pet.spacing[0] - 4.07) < 0.2
    # PET on its own grid: different spacing, origin not on the CT lattice, overlapping in world space
    assert not np.allclose(pet.affine, ct.affine)
    frac = ct.world_to_index(pet.origin[None])[0] % 1.0
    assert np.abs(frac[:2] - np.rint(frac[:2])).max() > 1e-3
    (clo, chi), (plo, phi) = ct.world_bounds(), pet.world_bounds()
    assert (np.minimum(chi, phi) - np.maximum(clo, plo) > 50).all()
    assert float(pet.data.min()) >= 0.0 and ct.data.min() >= -1024


def test_full_size_geometry_is_scanner_like() -> None:
    from autopaint.data.phantom import _grids

    for kind, (lo, hi) in (("thorax", (90, 110)), ("headneck", (60, 80))):
        _, _, ct, pet, _ = _grids(kind, "full", np.random.default_rng(1))
        assert ct.shape[:2] == (512, 512) and lo <= ct.shape[2] <= hi
        assert 0.9 <= ct.spacing[0] <= 1.05 and ct.spacing[2] == 3.0
        assert pet.shape[0] in (144, 168) and pet.spacing[2] == 3.0


def _pet_hot_centroid(case: PhantomCase, centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Centroid (world mm) of the PET voxels above half the local maximum near ``centre_mm``."""
    pet = case.pet
    ijk = np.argwhere(np.ones(pet.shape, bool))
    xyz = pet.index_to_world(ijk)
    near = np.linalg.norm(xyz - centre_mm, axis=1) < radius_mm
    vals = pet.data.reshape(-1)[near]
    hot = vals >= 0.5 * vals.max()
    return np.asarray((xyz[near][hot] * vals[hot, None]).sum(axis=0) / vals[hot].sum())


@pytest.mark.parametrize("kind,seed", [("thorax", 5), ("headneck", 8)])
def test_pet_and_ct_agree_in_world_space(kind: str, seed: int) -> None:
    case = _case(kind, seed)
    assert case.info["n_tumours"] >= 1
    t = max(case.info["tumours"], key=lambda d: d["volume_ml"])
    lab = case.label.data > 0
    lab_t, _ = ndimage.label(lab)
    ct_centroid = np.asarray(t["centroid_mm"])
    # the label centroid recorded in cases.json is where the CT grid says the tumour is
    ijk = case.ct.world_to_index(ct_centroid[None])[0]
    assert lab_t[tuple(np.rint(ijk).astype(int))] > 0 or np.linalg.norm(np.argwhere(lab).mean(0) - ijk) < 3
    pet_centroid = _pet_hot_centroid(case, ct_centroid, t["eq_diameter_mm"] * 0.6 + 4)
    assert np.linalg.norm(pet_centroid - ct_centroid) < float(max(case.pet.spacing))


@pytest.mark.parametrize("kind,seed", [("thorax", 5), ("thorax", 6), ("headneck", 8)])
def test_label_marks_soft_tissue_with_raised_uptake(kind: str, seed: int) -> None:
    case = _case(kind, seed)
    lab = case.label.data > 0
    assert lab.any()
    core = ndimage.binary_erosion(lab, iterations=1)
    core = core if core.sum() > 10 else lab
    hu = case.ct.data[core].astype(np.float32)
    assert -30 < float(np.median(hu)) < 90  # soft tissue (necrosis ~15 HU included), not lung or bone
    pet_on_ct = resample_to(case.pet, case.ct, order=1).data
    body = case.ct.data > -500
    assert float(pet_on_ct[lab].mean()) > 2.0 * float(pet_on_ct[body].mean())
    for t in case.info["tumours"]:
        assert t["volume_ml"] > 0 and 2.0 <= t["suv_max"] <= 20.0


@pytest.mark.parametrize("kind", ["thorax", "headneck"])
def test_healthy_cases_have_empty_labels(kind: str) -> None:
    case = _case(kind, 3, healthy=True)
    assert case.label.data.sum() == 0
    assert case.info["healthy"] and case.info["n_tumours"] == 0 and case.info["tumour_volumes_ml"] == []


def test_unknown_kind_or_size_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        generate_case("brain", 0, "small")
    with pytest.raises(InvalidInput):
        generate_case("thorax", 0, "huge")


def test_write_cohort_files_and_cases_json(tmp_path) -> None:
    entries = write_cohort("headneck", 3, seed=2, out=tmp_path, size="small", healthy_fraction=1 / 3)
    doc = json.loads((tmp_path / "cases.json").read_text())
    assert [e["case_id"] for e in doc["cases"]] == ["headneck_s2_000", "headneck_s2_001", "headneck_s2_002"]
    assert sum(e["healthy"] for e in entries) >= 1
    for e in entries:
        assert {"kind", "healthy", "n_tumours", "tumour_volumes_ml", "suv_max", "seed"} <= set(e)
        d = tmp_path / e["case_id"]
        ct, pet, lab = (read_volume(d / f"{n}.nii.gz") for n in ("ct", "pet", "label"))
        assert lab.shape == ct.shape and pet.shape != ct.shape
        assert (lab.data.sum() == 0) == e["healthy"]
        assert e["seed"] == case_seed(2, int(e["case_id"][-3:]))
        again = generate_case("headneck", e["seed"], "small", e["healthy"])
        np.testing.assert_allclose(ct.data, again.ct.data)
        np.testing.assert_allclose(ct.affine, again.ct.affine, atol=1e-4)


def test_tumour_centre_and_centroid_share_the_world_frame() -> None:
    """cases.json: ``centre_mm`` (placement) and ``centroid_mm`` (measured) are both world RAS mm."""
    case = generate_case("thorax", seed=3, size="small")
    assert case.info["tumours"]
    for t in case.info["tumours"]:
        gap = np.linalg.norm(np.subtract(t["centre_mm"], t["centroid_mm"]))
        assert gap < t["nominal_diameter_mm"] / 2, (t["centre_mm"], t["centroid_mm"])
