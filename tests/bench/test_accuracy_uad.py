"""calibrate-uad and the dAE / VAE rows of bench/accuracy.py on tiny phantom cohorts (2-second trainings,
32 x 32 model images): files, thresholds from the validation sweep, leak guards, scored rows, report rows."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from autopaint.data.phantom import write_cohort
from autopaint.imaging.preprocess import params_for
from bench.accuracy_cases import iter_cases, prepare
from bench.accuracy_report import summary_row, wilcoxon_rows
from bench.accuracy_uad import KINDS, META, TS, TrainCohort, UadRows, calibrate_uad

# what calibrate-uad reads of an Inpainter: its preprocessing, card name and sha256
MODEL = SimpleNamespace(preprocessing=params_for("thorax", "petct", 32).to_dict(), card={"name": "tiny"},
                        sha256="0" * 64)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("uad")
    write_cohort("thorax", 2, seed=32, out=root / "val", size="small", healthy_fraction=0.5)
    write_cohort("thorax", 2, seed=34, out=root / "test", size="small", healthy_fraction=0.5)
    train = TrainCohort(root / "train", n=2, seed=31, size="small", healthy_fraction=0.5)  # generated here
    meta = calibrate_uad(MODEL, iter_cases(root / "val", None), root / "val", train, root / "out", seconds=2.0,
                         width=4, command="python bench/accuracy.py calibrate-uad ...")
    return root, meta


def test_calibrate_uad_writes_models_and_validation_thresholds(calibrated: tuple[Path, dict[str, Any]]) -> None:
    root, meta = calibrated
    out = root / "out"
    assert (out / "dae.pt").is_file() and (out / "vae.pt").is_file()
    assert json.loads((out / META).read_text()) == meta
    assert meta["train_cohort_command"] == (f"autopaint phantom --kind thorax --n 2 --seed 31 --size small "
                                            f"--healthy-fraction 0.5 --out {root / 'train'}")
    assert meta["train_cases"] == [f"thorax_s31_{i:03d}" for i in range(2)]
    assert meta["val_cases"] == [f"thorax_s32_{i:03d}" for i in range(2)] and len(meta["val_tumour_cases"]) == 1
    slices = meta["dataset"]["slices"]
    assert slices["train"] > 0 and slices["val"] == 0  # 2 patients: all train (val needs >= 3 patients)
    for row in KINDS:
        t = meta["thresholds"][row]
        assert np.isclose(TS, t).any()
        mean = np.asarray(meta["mean_dice_per_threshold"][row])
        assert len(mean) == len(TS) and meta["val_dice"][row] == pytest.approx(mean.max(), abs=1e-6)
        assert 0.0 <= meta["val_dice"][row] <= 1.0
        assert 0 < meta["training"][row]["train_seconds"] < 30 and meta["training"][row]["steps"] > 0
        assert meta["training"][row]["val_l1"] is None
        per = meta["per_case"][row]
        assert sum(1 for v in per.values() if v.get("healthy")) == 1
        assert all(v["best_dice"] >= v["dice_at_threshold"] - 1e-12 for v in per.values() if not v.get("healthy"))


def test_uad_rows_on_held_out_patients(calibrated: tuple[Path, dict[str, Any]]) -> None:
    root, _ = calibrated
    test_ids = ["thorax_s34_000", "thorax_s34_001"]
    uad = UadRows.load(root / "out", MODEL, test_ids)
    recs: dict[str, list[dict[str, Any]]] = {}
    for cid, x in iter_cases(root / "test", None):
        p = prepare(cid, x, MODEL, None)
        rows = uad.rows(p)
        assert set(rows) == set(KINDS)
        for name, rec in rows.items():
            assert rec["images"] == 0 and rec["seconds"] >= 0 and rec["threshold"] == uad.thresholds[name]
            assert {"fp_components", "fp_volume_ml", "lesions_found", "pred_volume_ml"} <= set(rec)
            if p.healthy:
                assert rec["dice"] is None and "best_dice" not in rec
            else:
                assert rec["best_dice"] >= rec["dice"] - 1e-12
            recs.setdefault(name, []).append({"case": cid, "healthy": p.healthy, **rec})
    # the report rows read these records like every other method's
    assert summary_row("dAE", recs["dAE"]).startswith("| dAE | ")
    assert any(r.startswith("| VAE |") for r in wilcoxon_rows({"default": recs["dAE"], **recs}))
    summary = uad.summary(root / "out")
    assert summary["thresholds"] == uad.thresholds and set(summary["training"]) == set(KINDS)


def test_uad_rows_refuse_leaks_and_other_preprocessing(calibrated: tuple[Path, dict[str, Any]]) -> None:
    root, _ = calibrated
    with pytest.raises(SystemExit, match="trained or tuned"):
        UadRows.load(root / "out", MODEL, ["thorax_s32_001"])       # a validation patient
    with pytest.raises(SystemExit, match="trained or tuned"):
        UadRows.load(root / "out", MODEL, ["thorax_s31_000"])       # a training patient
    other = SimpleNamespace(**{**vars(MODEL), "preprocessing": params_for("thorax", "petct", 64).to_dict()})
    with pytest.raises(SystemExit, match="trained for"):
        UadRows.load(root / "out", other, [])
    with pytest.raises(SystemExit, match="shares patients"):
        calibrate_uad(MODEL, [], root / "val", TrainCohort(root / "val"), root / "leak", seconds=1.0)
