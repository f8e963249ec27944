"""The quality report's statistics and tables on fake numbers (values checked cell by cell)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from bench.quality_report import (
    best_method,
    format_p,
    inpainting_rows,
    lesion_cells,
    mean_std,
    paired_wilcoxon,
    pooled_ratio,
    segmentation_rows,
    segmentation_table,
)

REF = [0.8, 0.7, 0.6, 0.9, 0.5, 0.75]
DELTA = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]


def _cases(dice: list[float], ids: list[str] | None = None) -> list[dict]:
    ids = ids or [f"c{i}" for i in range(len(dice))]
    return [{"case_id": i, "dice_best": d, "precision_best": d / 2, "recall_best": 1.0, "t_best": 0.1,
             "dice_global": d - 0.1} for i, d in zip(ids, dice, strict=True)]


def test_mean_std_and_p_format() -> None:
    assert mean_std(REF) == "0.708±0.130"  # mean 4.25/6; population std sqrt(0.102083/6)
    assert mean_std([1.0, float("nan"), 3.0], 1) == "2.0±1.0"
    assert mean_std([]) == "n/a"
    assert format_p(0.03125) == "0.031"
    assert format_p(0.0005) == "0.0005"
    assert format_p(1e-6) == "< 0.0001"
    assert format_p(float("nan")) == "n/a"


def test_wilcoxon_exact_values() -> None:
    worse = [a - d for a, d in zip(REF, DELTA, strict=True)]
    # all 6 differences positive and distinct: exact two-sided p = 2 / 2**6
    assert paired_wilcoxon(REF, worse) == pytest.approx(2 / 64)
    # ranks of |d| 1..6 with signs + - + - + -: W+ = 1+3+5 = 9 -> exact two-sided p = 2*P(W<=9) = 0.84375
    mixed = [a - d * s for a, d, s in zip(REF, DELTA, [1, -1, 1, -1, 1, -1], strict=True)]
    assert paired_wilcoxon(REF, mixed) == pytest.approx(0.84375)
    assert math.isnan(paired_wilcoxon(REF, REF))            # all differences zero
    assert math.isnan(paired_wilcoxon([0.1], [0.2]))          # one pair
    # a non-finite pair is dropped, leaving 5 positive differences: p = 2 / 32
    assert paired_wilcoxon(REF, [*worse[:5], float("nan")]) == pytest.approx(2 / 32)


def test_segmentation_rows_numbers() -> None:
    worse = [a - d for a, d in zip(REF, DELTA, strict=True)]
    methods: dict[str, dict[str, Any]] = {
        "GconvLap-PET/CT": {"cases": _cases(REF), "global_threshold": 0.12, "healthy": [{"case_id": "h", "fp_ml": 2.0},
                                                                               {"case_id": "h2", "fp_ml": 4.0}]},
        "SUV>=2.5": {"cases": _cases(worse), "global_threshold": None, "healthy": []},
        "dAE": {"cases": _cases(REF[:3], ["c0", "c1", "c2"])},   # missing cases count as n/a, not zeros
    }
    rows = {r[0]: r for r in segmentation_rows(methods)}
    assert rows["GconvLap-PET/CT"][1] == "0.708±0.130"
    assert rows["GconvLap-PET/CT"][2] == "0.354±0.065"
    assert rows["GconvLap-PET/CT"][4] == "0.608±0.130 (t=0.12)"
    assert rows["GconvLap-PET/CT"][5:10] == ["n/a"] * 5      # no lesion-wise numbers in these records
    assert rows["GconvLap-PET/CT"][10] == "3.0±1.0"
    assert rows["GconvLap-PET/CT"][12] == "—"
    assert rows["SUV>=2.5"][1] == mean_std(worse) == "0.673±0.135"
    assert rows["SUV>=2.5"][4] == "0.573±0.135"
    assert rows["SUV>=2.5"][10] == "n/a"
    assert rows["SUV>=2.5"][12] == "0.031"
    assert rows["dAE"][11] == "3" and rows["dAE"][12] == "n/a"  # 3 identical pairs: undefined
    table = segmentation_table(methods).splitlines()
    assert table[0].startswith("| Method | [Dice]") and len(table) == 2 + 3
    assert "| SUV>=2.5 | 0.673±0.135 |" in table[3]
    assert best_method(methods) == ("GconvLap-PET/CT", pytest.approx(np.mean(REF)))


def _lesion(found: int, lesions: int, big_found: int, big: int, fp: int, fpv: float, fnv: float) -> dict[str, Any]:
    return {"lesions_found": found, "lesions": lesions, "lesions_found_ge_min": big_found, "lesions_ge_min": big,
            "fp_components": fp, "fp_volume_ml": fpv, "fn_volume_ml": fnv}


def test_lesion_cells_pool_lesions_and_count_fp_over_all_patients() -> None:
    cases = _cases([0.8, 0.6])
    cases[0]["lesion"] = _lesion(2, 3, 1, 2, fp=1, fpv=2.0, fnv=1.0)
    cases[1]["lesion"] = _lesion(1, 1, 1, 1, fp=0, fpv=4.0, fnv=3.0)
    entry = {"cases": cases, "global_threshold": 0.2,
             "healthy": [{"case_id": "h", "fp_ml": 1.0, "fp_components": 2}, {"case_id": "h2", "fp_ml": 0.0}]}
    # >= 1 ml: (1 + 1) / (2 + 1); all: (2 + 1) / (3 + 1); FP components (1 + 0 + 2) / 3 patients (h2 has none
    # recorded: results from before the lesion numbers); FPV / FNV mean±std over the tumour patients
    assert lesion_cells(entry) == ["0.667 (2/3)", "0.750 (3/4)", "1.00", "3.0±1.0", "2.0±1.0"]
    row = segmentation_rows({"GconvLap-PET/CT": entry})[0]
    assert row[5:10] == lesion_cells(entry) and row[10] == "0.5±0.5"
    assert pooled_ratio([{"a": 0, "b": 0}], "a", "b") == "n/a" and pooled_ratio([], "a", "b", "-") == "-"
    table = segmentation_table({"GconvLap-PET/CT": entry}).splitlines()
    assert "Lesion sens. >= 1 ml @ t" in table[0] and "| 0.667 (2/3) | 0.750 (3/4) | 1.00 |" in table[2]


def test_inpainting_rows_numbers() -> None:
    ref = {"mse": [1.0, 2.0, 3.0], "psnr": [40.0, 41.0, 42.0], "ssim": [0.99, 0.98, 0.97]}
    other = {"mse": [2.0, 4.0, 6.5], "psnr": [39.0, 40.5, 41.8], "ssim": [0.98, 0.97, 0.96]}
    rows = inpainting_rows({"GconvLap": {"PET": ref}, "Pconv": {"PET": other}})
    assert rows[0][:5] == ["GconvLap-PET", "2.000±0.816", "41.000±0.816", "0.9800±0.0082", "3"]
    assert rows[1][0] == "Pconv-PET" and rows[1][1] == "4.167±1.841"
    # n = 3 all one-signed: exact two-sided p = 2 / 8 = 0.25
    assert rows[1][5:] == ["0.250", "0.250", "0.250"]
