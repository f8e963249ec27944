"""bench/accuracy_report.py on fake records: summary cells, lesion-wise ratios, Wilcoxon, exact vs fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy_report import summary_row, wilcoxon_rows, write_report


def _rec(case: str, dice: float | None, found: int = 1, lesions: int = 1, fp: int = 0, pred_ml: float = 0.0,
         **kw: Any) -> dict[str, Any]:
    return {"case": case, "healthy": dice is None, "dice": dice, "tumour_ml": 0.0 if dice is None else 5.0,
            "lesions": lesions, "lesions_found": found, "lesions_ge_min": lesions, "lesions_found_ge_min": found,
            "fp_components": fp, "fp_volume_ml": 0.5 * fp, "fn_volume_ml": 1.0 * (lesions - found),
            "pred_volume_ml": pred_ml, "images": 10, "seconds": 2.0, **kw}


def _records(shift: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    out = [_rec(f"t{i}", float(np.clip(0.6 + 0.1 * rng.standard_normal() + shift, 0, 1))) for i in range(22)]
    out += [_rec("h0", None, 0, 0, fp=1, pred_ml=0.5), _rec("h1", None, 0, 0)]
    return out


def test_summary_row_counts_lesions_over_patients() -> None:
    recs = [_rec("a", 0.8, found=2, lesions=3, fp=1), _rec("b", 0.6, found=1, lesions=1), _rec("h", None, 0, 0, fp=2,
                                                                                              pred_ml=1.5)]
    cells = [c.strip() for c in summary_row("m", recs).split("|")[1:-1]]
    assert cells[0] == "m" and cells[1] == "0.700 ± 0.100"
    assert cells[3] == "0.750 (3/4)" and cells[4] == "0.750 (3/4)"
    assert cells[5] == "1.00"          # FP components per patient over all 3 patients
    assert cells[8] == "1.50"          # median predicted ml on healthy patients


def test_wilcoxon_sees_a_consistent_gain() -> None:
    records = {"default": _records(0.1), "SUV >= 2.5": _records(0.0), "paper": _records(0.1)}
    rows = wilcoxon_rows(records)
    base = [r for r in rows if r.startswith("| SUV >= 2.5")][0]
    assert "+0.100" in base and "| 22 |" in base
    assert float(base.split("|")[-2]) < 1e-3
    assert "nan" in [r for r in rows if r.startswith("| paper")][0]  # identical pairs: no test


def test_report_has_the_tables(tmp_path: Path) -> None:
    records = {name: _records(s) for name, s in (("default", 0.1), ("paper", -0.2), ("SUV >= 2.5", 0.0),
                                                 ("hotspot", -0.1), ("+delineation", 0.1), ("dAE", -0.3),
                                                 ("VAE", -0.35))}
    meta = {"model": "m", "cohort": "c", "command": "python bench/accuracy.py evaluate", "cohort_command": "autopaint phantom",
            "model_sha256": "0" * 64, "machine": "cpu", "wall_s": 60.0,
            "calibration": {"cases": ["v1"], "cohort": "v", "command": "cal", "gate_level": 0.2,
                            "fp_budget_per_patient": 0.25, "thresholds": {"hotspot": 0.3}},
            "uad": {"thresholds": {"dAE": 0.12, "VAE": 0.14}, "val_dice": {"dAE": 0.21, "VAE": 0.2},
                    "command": "python bench/accuracy.py calibrate-uad", "train_cohort_command": "autopaint phantom --seed 11",
                    "slices": {"train": 900, "val": 150},
                    "training": {"dAE": {"steps": 500, "train_seconds": 180.0, "val_l1": 0.02},
                                 "VAE": {"steps": 450, "train_seconds": 180.0, "val_l1": None}}}}
    exact = [{"case": "t0", "fast_images": 20, "exact_images": 900, "paper_exact_images": 880, "fast_hit": 1.0,
              "exact_hit": 1.0, "fast_dice": 0.9, "exact_dice": 0.89, "paper_exact_dice": 0.5, "fast_s": 10.0,
              "exact_s": 90.0}]
    out = tmp_path / "a.md"
    write_report(out, meta, records, exact)
    text = out.read_text()
    for part in ("## Methods on the same patients", "## Wilcoxon", "## Ablation", "## Fast vs exact",
                 "44.0x less work", "| t0 |", "autopaint phantom"):
        assert part in text, part
    # the dAE / VAE rows: methods table, Wilcoxon, per patient, and where they come from
    lines = text.splitlines()
    assert sum(ln.startswith("| dAE | ") for ln in lines) == 2 and sum(ln.startswith("| VAE | ") for ln in lines) == 2
    assert "| default | paper | SUV >= 2.5 | dAE | VAE |" in text
    assert "thresholds {'dAE': 0.12, 'VAE': 0.14} chosen on the validation patients" in text
    assert "autopaint phantom --seed 11" in text and "VAE 450 steps in 180 s, val L1 n/a" in text
