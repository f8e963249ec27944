"""Exact-mode steps on planted anomalies with the constant stub inpainter."""

from __future__ import annotations

import math

import numpy as np

from autopaint.segment.refine import choose_rung, ladder_masks, run_ladder, size_filter
from autopaint.segment.search import (
    candidate_circles,
    checkerboard_groups,
    disk_masks,
    exact_scores,
    grid_positions,
    top_k,
)
from autopaint.segment.types import Geometry, SearchParams
from tests.segment.conftest import BG, N, disk


def test_geometry_scaling() -> None:
    g = Geometry.for_size(SearchParams(), 128)
    assert g.radius == 27 * 128 / 512 and g.stride == 15 * 128 / 512
    assert g.ladder_widths == (3, 5)          # half-widths 0.75,1,1.25,1.5,1.75 -> 1,1,1,2,2
    assert math.isclose(g.min_area, math.pi * 1.5 ** 2)
    assert Geometry.for_size(SearchParams(), 512).ladder_widths == (7, 9, 11, 13, 15)


def test_candidates_have_centres_in_ooi() -> None:
    ooi = disk(N, 64, 64, 20)
    c = candidate_circles(ooi, 6.75, 3.75)
    assert len(c) > 0
    assert all(ooi[int(round(y)), int(round(x))] for y, x in c.centres)
    pos = grid_positions(N, 3.75)
    inside = sum(ooi[int(round(a)), int(round(b))] for a in pos for b in pos)
    assert len(c) == inside
    # each mask is the disk of radius r around its centre
    y, x = c.centres[0]
    assert np.array_equal(c.masks([0])[0], disk(N, y, x, 6.75))
    # compact pixel lists agree with dense disks, including circles clipped at the border
    edge = candidate_circles(np.ones((N, N), bool), 6.75, 3.75)
    np.testing.assert_array_equal(edge.masks(), disk_masks(edge.centres, 6.75, N))


def test_top_k_picks_circles_over_anomaly(stub) -> None:
    img = np.full((2, N, N), BG, np.float32)
    tumour = disk(N, 60, 70, 4)
    img[:, tumour] = 0.9
    ooi = disk(N, 64, 64, 40)
    circles = candidate_circles(ooi, 6.75, 3.75)
    scores = exact_scores(stub, img, circles, "sum")
    assert stub.images_inpainted == len(circles)          # one circle per pass
    masks = circles.masks()
    expect = np.array([(m & tumour).sum() * 2 * 0.7 for m in masks])
    np.testing.assert_allclose(scores, expect, rtol=1e-5)
    pick = top_k(scores, 3)
    assert all((masks[i] & tumour).any() for i in pick)
    assert scores[pick[0]] == scores.max()
    u = circles.union(pick)
    assert np.array_equal(u, masks[pick[0]] | masks[pick[1]] | masks[pick[2]])
    mean = exact_scores(stub, img, circles, "mean")
    np.testing.assert_allclose(mean, expect / (masks.sum(axis=(1, 2)) * 2), rtol=1e-5)
    # a grouped map (shared by the circles) gives the same scores for far-apart circles
    shared = np.abs(img - np.full_like(img, BG)).sum(0)
    np.testing.assert_allclose(circles.scores(shared, None, 2, "sum"), expect, rtol=1e-5)


def test_top_k_ties_are_deterministic() -> None:
    assert top_k(np.array([1.0, 3.0, 3.0, 0.5]), 2).tolist() == [1, 2]


def test_checkerboard_groups_are_far_apart() -> None:
    c = candidate_circles(disk(N, 64, 64, 40), 6.75, 3.75)
    groups = checkerboard_groups(c.grid, 4)
    assert sum(len(g) for g in groups) == len(c)
    for g in groups:
        cen = c.centres[g]
        d = np.sqrt(((cen[:, None] - cen[None]) ** 2).sum(-1)) + np.eye(len(g)) * 1e9
        assert d.min() >= 4 * 3.75 - 1e-9


def test_choose_rung_both_branches() -> None:
    # no change between rung 0 and 1 -> the smaller mask (rung 0), stop
    assert choose_rung([10.0, 10.2, 30.0], 0.05) == (0, True)
    # changes at 1 and 2, no change at 3 -> rung 2
    assert choose_rung([10.0, 20.0, 30.0, 30.5], 0.05) == (2, True)
    # always changing -> largest computed rung, not stopped
    assert choose_rung([1.0, 2.0, 4.0], 0.05) == (2, False)


def test_ladder_stops_for_small_tumour_and_grows_for_large(stub) -> None:
    widths = (3, 5, 7)
    img = np.full((2, 2, N, N), BG, np.float32)
    union = np.zeros((2, N, N), bool)
    union[:] = disk(N, 64, 64, 7)
    img[0][:, disk(N, 64, 64, 4)] = 0.9            # inside the union: dilation adds nothing
    img[1][:, disk(N, 64, 64, 10)] = 0.9           # larger than the union: dilation keeps adding
    for early in (True, False):
        stub.images_inpainted = 0
        res = run_ladder(stub, img, union, widths, 0.05, early_stop=early)
        assert res.rung.tolist() == [0, 3]
        assert np.array_equal(res.masks[0], union[0])
        assert np.array_equal(res.masks[1], ladder_masks(union[1], widths)[3])
        assert res.rungs_run.tolist() == ([2, 4] if early else [4, 4])
        assert stub.images_inpainted == (6 if early else 8)
        # the chosen rung's output has the hole repainted
        assert np.allclose(res.inpainted[1][:, res.masks[1]], BG)


def test_size_filter_returns_input_for_small_component() -> None:
    min_area = math.pi * 1.5 ** 2                     # 7.07 px at N = 128
    img = np.full((2, N, N), BG, np.float32)
    small = np.zeros((N, N), bool)
    small[60:62, 60:63] = True                        # 6 px < 7.07
    img[:, small] = 0.9
    inp = img.copy()
    inp[:, small] = BG
    mask = disk(N, 61, 61, 6)
    out, kept, area = size_filter(img, inp, mask, 0.05, min_area)
    assert not kept and area == 6 and out is img
    big = np.zeros((N, N), bool)
    big[60:63, 60:63] = True                          # 9 px >= 7.07
    img2 = np.full((2, N, N), BG, np.float32)
    img2[:, big] = 0.9
    inp2 = img2.copy()
    inp2[:, big] = BG
    out, kept, area = size_filter(img2, inp2, mask, 0.05, min_area)
    assert kept and area == 9 and out is inp2
    # residual outside the final mask does not count
    out, kept, area = size_filter(img2, inp2, ~mask, 0.05, min_area)
    assert not kept and area == 0


def test_screen_groups_cover_the_ooi() -> None:
    ooi = disk(N, 64, 64, 40)
    c = candidate_circles(ooi, 6.75, 3.75)
    screen = checkerboard_groups(c.grid, 4, 2, "screen")
    rest = checkerboard_groups(c.grid, 4, 2, "rest")
    assert len(screen) == 4 and len(rest) == 12
    idx = np.concatenate(screen + rest)
    assert sorted(idx.tolist()) == list(range(len(c)))
    covered = c.union(np.concatenate(screen))
    inner = disk(N, 64, 64, 36)                      # every OOI pixel away from the rim is in a screen circle
    assert covered[inner].all()
