"""Per-volume driver: exact vs fast mode on a stub volume, counters, cancellation, progress."""

from __future__ import annotations

import numpy as np
import pytest

from autopaint.errors import Cancelled
from autopaint.progress import ProgressEvent, Stage, Unit
from autopaint.segment.engine import autoinpaint
from autopaint.segment.fast import calibrate_screen, fallback_level
from autopaint.segment.metrics import dice, slice_hit_rate
from autopaint.segment.types import SearchParams


def test_exact_mode_finds_the_tumour(stub, volume) -> None:
    images, ooi, label = volume
    res = autoinpaint(images, ooi, stub, mode="exact")
    # every OOI slice searched, one circle per pass + all six... (here 1 + 2 ladder rungs at N=128)
    assert res.counters.images["ladder"] == 3 * int(ooi.any(axis=(1, 2)).sum())
    assert slice_hit_rate(res.unions, label) == 1.0
    kept = [s["k"] for s in res.slices if s.get("kept")]
    assert kept == [4, 5, 6, 7]                       # slice 8's tumour is below the size filter
    assert np.all(res.residual[~ooi] == 0)
    pred = res.residual > 0.1
    assert dice(pred[4:8], label[4:8]) == 1.0
    assert not pred[8].any() and not pred[:4].any()
    np.testing.assert_array_equal(res.autoinpainted[0], images[0])
    assert res.flops == res.counters.total * stub.flops_per_image


def test_fast_matches_exact_with_fewer_passes(stub, volume) -> None:
    images, ooi, label = volume
    exact = autoinpaint(images, ooi, stub, mode="exact")
    stub.images_inpainted = 0
    fast = autoinpaint(images, ooi, stub, mode="fast", params=SearchParams(unflagged="skip"))
    assert fast.level_source == "volume_fallback"
    # the robust fallback (median + 6 MAD over 10 OOI slices, half of them tumour) flags the 4
    # slices with a large tumour; slice 8's 1-px tumour is below it (exact drops it as too small)
    assert [s["k"] for s in fast.slices if s["flagged"] and not s.get("grown")] == [4, 5, 6, 7]
    # neighbour growth searches the OOI slices within grow_slices (2) of flagged ones, no further
    assert [s["k"] for s in fast.slices if s.get("grown")] == [2, 3, 8, 9]
    np.testing.assert_array_equal(fast.residual, exact.residual)
    assert slice_hit_rate(fast.unions, label) == 1.0
    assert fast.counters.total == stub.images_inpainted
    assert exact.counters.total >= 5 * fast.counters.total
    # each source can be switched off and the answer stays the same
    for sources in ({"screen", "early_stop"}, {"grouped", "batch"}):
        r = autoinpaint(images, ooi, stub, mode="fast", sources=frozenset(sources),
                        params=SearchParams(unflagged="skip"))
        np.testing.assert_array_equal(r.residual, exact.residual)


def test_coarse_search_of_unflagged_slices(stub, volume) -> None:
    """Default fast mode: unflagged OOI slices take their screen top-k as is (ladder passes only)."""
    images, ooi, label = volume
    exact = autoinpaint(images, ooi, stub, mode="exact")
    fast = autoinpaint(images, ooi, stub, mode="fast")
    by_k = {s["k"]: s for s in fast.slices}
    assert [k for k, s in by_k.items() if s["flagged"]] == [4, 5, 6, 7]
    assert all(by_k[k]["searched"] == "coarse" for k in (1, 2, 3, 8, 9, 10))
    assert all(by_k[k]["searched"] == "full" for k in (4, 5, 6, 7))
    assert not any(s.get("grown") for s in fast.slices)
    # every OOI slice got a union; slice 8's 1-px tumour is touched by a coarse circle too
    assert fast.unions[[k for k in by_k]].reshape(len(by_k), -1).any(axis=1).all()
    assert slice_hit_rate(fast.unions, label) == slice_hit_rate(exact.unions, label) == 1.0
    np.testing.assert_array_equal(fast.residual, exact.residual)
    # scoring passes only for the 4 flagged slices: screen + the rest groups + re-scoring
    n_ooi = len(by_k)
    assert fast.counters.images["search"] == 4 * SearchParams().rescore_k
    assert fast.counters.images["ladder"] <= 3 * n_ooi
    assert exact.counters.total >= 3 * fast.counters.total


def test_calibrated_level_is_used(stub, volume) -> None:
    images, ooi, _ = volume
    healthy = [1, 2, 3, 9, 10]
    cal = calibrate_screen(stub, images[healthy], ooi[healthy])
    assert cal["screen_level"] == 0.0 and cal["n_slices"] == 5
    res = autoinpaint(images, ooi, stub, mode="fast", screen_level=cal["screen_level"])
    assert res.level_source == "calibrated"
    assert [s["k"] for s in res.slices if s["flagged"] and not s.get("grown")] == [4, 5, 6, 7, 8]
    res = autoinpaint(images, ooi, stub, mode="fast", screen_level=1e9, params=SearchParams(unflagged="skip"))
    assert not any(s["flagged"] for s in res.slices) and not res.residual.any()
    # nothing flagged, default (coarse): every OOI slice still searched, on its screen scores only
    res = autoinpaint(images, ooi, stub, mode="fast", screen_level=1e9)
    assert not any(s["flagged"] for s in res.slices) and res.counters.images.get("search", 0) == 0
    assert {s["searched"] for s in res.slices} == {"coarse"} and res.residual[4:8].any()


def test_fallback_level_is_robust() -> None:
    scores = np.array([1.0, 1.1, 0.9, 1.0, 50.0])
    lvl = fallback_level(scores, 6.0)
    assert 1.1 < lvl < 50.0
    assert fallback_level(np.zeros(0), 6.0) == float("inf")


def test_progress_and_cancel(stub, volume) -> None:
    images, ooi, _ = volume
    events: list[ProgressEvent] = []
    autoinpaint(images, ooi, stub, mode="fast", progress=events.append)
    assert {e.stage for e in events} == {Stage.searching, Stage.refining}
    assert {e.step for e in events} == {"screen", "sweep", "ladder"}
    last = {e.step: e for e in events}
    assert all(e.done == e.total for e in last.values())
    assert last["sweep"].unit == Unit.circles and last["screen"].unit == Unit.slices
    with pytest.raises(Cancelled):
        autoinpaint(images, ooi, stub, mode="fast", should_cancel=lambda: True)


def test_bad_sources_rejected(stub, volume) -> None:
    images, ooi, _ = volume
    with pytest.raises(ValueError):
        autoinpaint(images, ooi, stub, sources=frozenset({"magic"}))
