"""Global threshold calibration: mean-Dice argmax over tumour cases; healthy cases report FP volume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autopaint.segment.calibrate import calibrate_threshold, choose_threshold, split_cases
from autopaint.segment.pipeline import PipelineInputs, PipelineParams
from autopaint.segment.thresholds import sweep_thresholds
from tests.segment.test_pipeline import _inputs, _stub, case  # noqa: F401 - `case` is a fixture


def test_choose_threshold_is_the_mean_dice_argmax() -> None:
    ts = np.array([0.0, 0.1, 0.2, 0.3])
    curves = {"a": [0.1, 0.8, 0.6, 0.2], "b": [0.2, 0.4, 0.7, 0.3]}
    t, mean = choose_threshold(curves, ts)
    np.testing.assert_allclose(mean, [0.15, 0.6, 0.65, 0.25])
    assert t == 0.2
    assert choose_threshold({"a": [0.5, 0.5, 0.1, 0.0]}, ts)[0] == 0.0  # ties: the lowest threshold
    with pytest.raises(ValueError):
        choose_threshold({}, ts)


def test_split_cases_reads_the_card() -> None:
    assert split_cases({"split": {"val": ["x", "y"]}}, "val") == ["x", "y"]
    with pytest.raises(ValueError):
        split_cases({"split": {"train": ["x"]}}, "val")


def test_calibrate_threshold_on_tiny_cases(case: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    tumour = _inputs(case)
    assert tumour.label is not None
    healthy = PipelineInputs(ct=tumour.ct, pet=tumour.pet, organ_mask=tumour.organ_mask,
                             label=tumour.label.with_data(np.zeros(tumour.label.shape, np.uint8)))
    seen: list[str] = []
    cal = calibrate_threshold(_stub(), [("t1", tumour), ("h1", healthy)], PipelineParams(mode="fast"),
                              tmp_path, on_case=lambda cid, _: seen.append(cid))
    assert seen == ["t1", "h1"] and cal["cases"] == ["t1"] and cal["healthy_cases"] == ["h1"]
    assert cal["mode"] == "fast" and len(cal["mean_dice_per_threshold"]) == sweep_thresholds().size
    best = cal["per_case"]["t1"]
    # one tumour case: the global threshold is that case's own best, and its Dice is the mean
    assert cal["threshold"] == best["best_threshold"]
    assert cal["mean_dice"] == pytest.approx(best["best_dice"]) == pytest.approx(best["dice_at_threshold"])
    assert best["best_dice"] > 0.6
    # the healthy case's FP volume: its residual above the chosen threshold, in ml (4 x 4 x 5 mm voxels)
    r = np.asarray(nib.load(tmp_path / "h1" / "residual.nii.gz").dataobj)
    assert cal["per_case"]["h1"]["fp_ml_at_threshold"] == pytest.approx((r > cal["threshold"]).sum() * 0.08)
