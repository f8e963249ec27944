"""SUV-threshold baselines on a constructed volume, against masks computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from autopaint.segment.baselines import pet_window_map, suv_fixed_threshold, suvmax_fraction_threshold


@pytest.fixture()
def case() -> tuple[np.ndarray, np.ndarray]:
    """A 10x10x4 SUV volume: background 1.0; lesion A (peak 10, rim 5, tail 3) and lesion B (peak 4, rim 2)."""
    suv = np.full((10, 10, 4), 1.0, dtype=np.float32)
    suv[2, 2, 1] = 10.0          # lesion A peak
    suv[2, 3, 1] = 5.0           # A rim (>= 4.1 = 0.41 * 10)
    suv[2, 4, 1] = 3.0           # A tail (>= 2.5, < 4.1)
    suv[7, 7, 2] = 4.0           # lesion B peak
    suv[7, 8, 2] = 2.0           # B rim (>= 1.64 = 0.41 * 4, < 2.5)
    suv[0, 9, 3] = 20.0          # a hot voxel OUTSIDE the organ (e.g. bladder/heart): must be ignored
    organ = np.ones_like(suv, dtype=bool)
    organ[0, :, :] = False
    return suv, organ


def _mask(shape: tuple[int, ...], *idx: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for i in idx:
        m[i] = True
    return m


def test_fixed_threshold_25(case: tuple[np.ndarray, np.ndarray]) -> None:
    suv, organ = case
    got = suv_fixed_threshold(suv, organ)
    want = _mask(suv.shape, (2, 2, 1), (2, 3, 1), (2, 4, 1), (7, 7, 2))
    np.testing.assert_array_equal(got, want)
    # threshold is inclusive: SUV exactly 2.5 counts
    suv2 = suv.copy()
    suv2[5, 5, 0] = 2.5
    assert suv_fixed_threshold(suv2, organ)[5, 5, 0]


def test_41_percent_global(case: tuple[np.ndarray, np.ndarray]) -> None:
    suv, organ = case
    got = suvmax_fraction_threshold(suv, organ)  # SUVmax in OOI = 10 (the 20 is outside) -> t = 4.1
    want = _mask(suv.shape, (2, 2, 1), (2, 3, 1))
    np.testing.assert_array_equal(got, want)


def test_41_percent_per_lesion(case: tuple[np.ndarray, np.ndarray]) -> None:
    suv, organ = case
    got = suvmax_fraction_threshold(suv, organ, mode="per_lesion")
    # lesion A at 4.1: peak + rim; lesion B at 1.64: peak + rim (2.0), but not the background (1.0)
    want = _mask(suv.shape, (2, 2, 1), (2, 3, 1), (7, 7, 2), (7, 8, 2))
    np.testing.assert_array_equal(got, want)


def test_41_percent_healthy_is_empty() -> None:
    suv = np.full((6, 6, 3), 1.2, dtype=np.float32)
    suv[3, 3, 1] = 2.0  # hottest voxel below 2.5: no lesion to contour
    organ = np.ones_like(suv, dtype=bool)
    assert not suvmax_fraction_threshold(suv, organ).any()
    assert not suvmax_fraction_threshold(suv, organ, mode="per_lesion").any()
    # without the floor, 41 % of 2.0 = 0.82 takes the whole organ
    assert suvmax_fraction_threshold(suv, organ, min_suvmax=0.0).all()


def test_pet_window_map_matches_suv_cutoffs(case: tuple[np.ndarray, np.ndarray]) -> None:
    suv, organ = case
    m = pet_window_map(suv, organ)
    assert m.dtype == np.float32 and m.shape == suv.shape
    assert m[0, 9, 3] == 0.0                      # outside the organ
    assert m[2, 2, 1] == pytest.approx(10 / 12)   # SUV 10 in the 0..12 window
    np.testing.assert_array_equal(m >= 2.5 / 12, suv_fixed_threshold(suv, organ))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        suv_fixed_threshold(np.zeros((3, 3, 3)), np.zeros((3, 3, 2), dtype=bool))
