"""Threshold sweep and lesion statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autopaint.imaging.volume import Volume
from autopaint.segment.lesions import SPHERE_1ML_RADIUS_MM, lesion_table, lesions_csv
from autopaint.segment.metrics import segmentation_metrics
from autopaint.segment.thresholds import (
    FALLBACK_THRESHOLD,
    apply_threshold,
    resolve_threshold,
    sweep,
    sweep_thresholds,
)


def test_sweep_thresholds_grid() -> None:
    ts = sweep_thresholds()
    assert len(ts) == 41 and ts[0] == 0.0 and ts[-1] == 0.8 and ts[1] == 0.02


def test_sweep_matches_hand_computation() -> None:
    # 10 voxels: label = first 4. residuals chosen by hand.
    r = np.array([0.5, 0.3, 0.05, 0.0, 0.4, 0.01, 0.0, 0.0, 0.0, 0.0])
    g = np.zeros(10, bool)
    g[:4] = True
    out = sweep(r.reshape(2, 5), g.reshape(2, 5))
    i = out["thresholds"].index(0.02)
    # t=0.02: pred = {0,1,2,4}: tp 3, fp 1, fn 1, tn 5
    assert out["dice"][i] == pytest.approx(6 / 8)
    assert out["precision"][i] == pytest.approx(3 / 4)
    assert out["recall"][i] == pytest.approx(3 / 4) == out["sensitivity"][i]
    assert out["specificity"][i] == pytest.approx(5 / 6)
    # t=0: pred = {0,1,2,4,5}: tp 3 fp 2 fn 1 tn 4
    assert out["dice"][0] == pytest.approx(6 / 9)
    # t=0.4: pred = {0}: tp 1, fp 0, fn 3 -> dice 2/5 ; t=0.3 pred {0,4} tp1 fp1 -> 2/6
    assert out["dice"][out["thresholds"].index(0.4)] == pytest.approx(2 / 5)
    # t >= 0.5: nothing predicted
    assert out["dice"][out["thresholds"].index(0.5)] == 0.0
    assert out["precision"][-1] == 0.0
    # best: t in [0.06, 0.28] gives pred {0,1,4}: tp 2 fp 1 fn 2 -> 4/7 < 6/8; so best is 0.02
    assert out["best"]["threshold"] == 0.02 and out["best"]["dice"] == pytest.approx(0.75)
    # every row agrees with a direct per-threshold computation
    for t, d, sp in zip(out["thresholds"], out["dice"], out["specificity"], strict=True):
        m = segmentation_metrics(apply_threshold(r, t) > 0, g)
        assert m["dice"] == pytest.approx(d) and m["specificity"] == pytest.approx(sp)


def test_threshold_resolution() -> None:
    assert resolve_threshold(0.3, 0.1) == (0.3, "explicit")
    assert resolve_threshold(None, 0.12) == (0.12, "model_card")
    assert resolve_threshold(None, None) == (FALLBACK_THRESHOLD, "fallback")


def _affine(sp: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    a = np.diag([*sp, 1.0])
    a[:3, 3] = origin
    return a


def test_lesion_statistics_by_hand() -> None:
    aff = _affine((1.0, 1.0, 2.0), (-10.0, 5.0, 100.0))
    mask = np.zeros((40, 40, 20), np.uint8)
    suv = np.ones((40, 40, 20), np.float32)
    # lesion A: 3x3x3 cube at i 10..12, j 20..22, k 5..7, SUV 4 with a hot voxel 10 at its centre
    mask[10:13, 20:23, 5:8] = 1
    suv[10:13, 20:23, 5:8] = 4.0
    suv[11, 21, 6] = 10.0
    # lesion B: 2 voxels at i 30, j 30..31, k 15, SUV 2 and 3
    mask[30, 30:32, 15] = 1
    suv[30, 30, 15], suv[30, 31, 15] = 2.0, 3.0
    rows = lesion_table(Volume(mask, aff), Volume(suv, aff))
    assert len(rows) == 2
    a, b = rows
    assert a["id"] == 1 and a["voxels"] == 27
    assert a["volume_ml"] == pytest.approx(27 * 2.0 / 1000)
    assert a["suv_max"] == pytest.approx(10.0)
    assert a["suv_mean"] == pytest.approx((26 * 4 + 10) / 27)
    assert a["tlg"] == pytest.approx(a["suv_mean"] * a["volume_ml"])
    assert (a["centroid_x_mm"], a["centroid_y_mm"], a["centroid_z_mm"]) == pytest.approx((1.0, 26.0, 112.0))
    assert b["volume_ml"] == pytest.approx(0.004) and b["suv_mean"] == pytest.approx(2.5)
    assert (b["centroid_x_mm"], b["centroid_y_mm"], b["centroid_z_mm"]) == pytest.approx((20.0, 35.5, 130.0))
    # SUVpeak by brute force: the 1 ml sphere (r = 6.2035 mm) around each lesion voxel
    assert SPHERE_1ML_RADIUS_MM == pytest.approx(6.2035, abs=1e-4)
    ii, jj, kk = np.mgrid[:40, :40, :20]
    best = 0.0
    for i, j, k in np.argwhere(mask[:, :, :10]):
        sph = (ii - i) ** 2 + (jj - j) ** 2 + (2.0 * (kk - k)) ** 2 <= SPHERE_1ML_RADIUS_MM ** 2
        best = max(best, float(suv[sph].mean()))
    assert a["suv_peak"] == pytest.approx(best, rel=1e-6)
    assert a["suv_mean"] > a["suv_peak"] > 1.0
    # the sphere holds ~1 ml: voxel count * voxel volume
    sph = (ii - 20) ** 2 + (jj - 20) ** 2 + (2.0 * (kk - 10)) ** 2 <= SPHERE_1ML_RADIUS_MM ** 2
    assert sph.sum() * 2.0 / 1000 == pytest.approx(1.0, rel=0.1)


def test_lesions_ct_only_and_csv() -> None:
    aff = _affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    rows = lesion_table(Volume(mask, aff), None)
    assert rows[0]["suv_max"] is None and rows[0]["volume_ml"] == pytest.approx(0.008)
    text = lesions_csv(rows)
    lines = text.strip().split("\n")
    assert lines[0].startswith("id,voxels,volume_ml") and lines[1].startswith("1,8,0.008,,")
    assert lesion_table(Volume(np.zeros((4, 4, 4), np.uint8), aff), None) == []
    assert math.isfinite(float(lines[1].split(",")[-1]))
