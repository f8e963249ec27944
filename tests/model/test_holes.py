from __future__ import annotations

import numpy as np

from autopaint.model.holes import HoleGenerator, fixed_masks, random_hole


def test_coverage_distribution_per_batch() -> None:
    gen = HoleGenerator(64, seed=1)
    cov = np.array([1.0 - gen.batch(8).mean() for _ in range(150)])
    assert 0.25 <= cov.mean() <= 0.30, cov.mean()
    assert cov.min() > 0.15 and cov.max() < 0.42, (cov.min(), cov.max())
    assert cov.std() > 0.005  # batches differ


def test_masks_are_binary_seeded_and_irregular() -> None:
    a, b = HoleGenerator(64, seed=7).batch(4), HoleGenerator(64, seed=7).batch(4)
    assert a.shape == (4, 1, 64, 64) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, HoleGenerator(64, seed=8).batch(4))
    assert np.array_equal(fixed_masks(3, 64), fixed_masks(3, 64))
    # holes land all over the image, not only in the centre
    many = 1.0 - HoleGenerator(64, seed=2).batch(64)[:, 0]
    quadrants = [many[:, :32, :32], many[:, :32, 32:], many[:, 32:, :32], many[:, 32:, 32:]]
    assert all(q.mean() > 0.15 for q in quadrants)


def test_explicit_coverage_is_reached() -> None:
    rng = np.random.default_rng(0)
    h = random_hole(rng, 128, coverage=0.4)
    assert 0.4 <= h.mean() < 0.6
