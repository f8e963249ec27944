"""Global-threshold selection on validation records and its application to test records."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality_seg import THRESHOLDS, apply_global_threshold, choose_global_threshold


def _rec(peak_at: float, healthy: bool = False) -> dict:
    """A record whose Dice curve peaks (value 0.8) at threshold ``peak_at`` and falls off linearly."""
    dice = np.clip(0.8 - 2.0 * np.abs(THRESHOLDS - peak_at), 0, 1)
    positives = (1000 * (1 - THRESHOLDS)).astype(int)
    return {"healthy": healthy, "voxel_ml": 0.5,
            "curve": {"dice": dice.tolist(), "positives": positives.tolist()}}


def test_threshold_grid() -> None:
    assert len(THRESHOLDS) == 41 and THRESHOLDS[0] == 0.0 and THRESHOLDS[-1] == pytest.approx(0.8)


def test_choose_maximises_mean_dice_over_tumour_cases() -> None:
    # peaks at 0.10 and 0.20: the mean curve is flat (0.7) between them -> lowest maximiser 0.10;
    # the healthy record (peak 0.6) must be ignored
    recs = [_rec(0.10), _rec(0.20), _rec(0.60, healthy=True)]
    assert choose_global_threshold(recs) == pytest.approx(0.10)
    assert choose_global_threshold([_rec(0.3), _rec(0.3), _rec(0.5)]) == pytest.approx(0.3)
    assert choose_global_threshold([_rec(0.1, healthy=True)]) is None
    flat = _rec(0.1)
    flat["curve"]["dice"] = [0.0] * len(THRESHOLDS)           # the method found nothing: no threshold
    assert choose_global_threshold([flat]) is None
    assert choose_global_threshold([flat, _rec(0.5)]) == pytest.approx(0.5)


def test_apply_fills_dice_and_fp_volume() -> None:
    recs = [_rec(0.2), _rec(0.4, healthy=True)]
    apply_global_threshold(recs, 0.3)
    assert recs[0]["dice_global"] == pytest.approx(0.6)        # 0.8 - 2 * 0.1
    assert recs[1]["dice_global"] is None
    assert recs[1]["fp_ml"] == pytest.approx(700 * 0.5)        # 1000 * (1 - 0.3) voxels of 0.5 ml
    assert "fp_ml" not in recs[0]


def test_lesion_numbers_at_the_global_threshold() -> None:
    from bench.quality_seg import CaseGrid, curve_record, fixed_record

    label = np.zeros((20, 20, 10), bool)
    label[2:5, 2:5, 2:5] = True                     # 27 voxels, found
    label[12:14, 12:14, 6:8] = True                 # 8 voxels, missed
    res = np.zeros(label.shape, np.float32)
    res[2:5, 2:5, 2:5] = 0.5
    res[15:18, 2:4, 1:3] = 0.3                      # a false-positive component of 12 voxels (> 0.2 only)
    grid = CaseGrid(prepared=None, ooi=np.ones(label.shape, bool), label=label, voxel_ml=0.5)  # type: ignore[arg-type]
    assert "lesion" not in curve_record(res, grid)  # validation pass: no threshold yet
    les = curve_record(res, grid, threshold=0.2)["lesion"]
    assert (les["lesions"], les["lesions_found"], les["fp_components"]) == (2, 1, 1)
    assert les["fp_volume_ml"] == pytest.approx(6.0) and les["fn_volume_ml"] == pytest.approx(4.0)
    assert curve_record(res, grid, threshold=0.4)["lesion"]["fp_components"] == 0
    fixed = fixed_record(res > 0.4, grid, lesion=True)
    assert fixed["lesion"]["lesions_found"] == 1 and "lesion" not in fixed_record(res > 0.4, grid)
