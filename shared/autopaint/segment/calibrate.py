"""Calibration of the single global residual threshold (the model card's ``default_threshold``).

The paper reports Dice at one threshold chosen on validation patients and [Dice], the per-case best
of the sweep 0 ... 0.8 step 0.02. Here every validation patient's full volume goes through
:func:`run_pipeline` (the same code path as production, fast or exact mode), each case's sweep Dice
curve is read from its report, and the threshold with the highest mean Dice over the patients that
have a tumour wins (lowest threshold on ties). Healthy patients cannot vote (their Dice is 1 for
any threshold that selects nothing, which would only push the threshold up); their false-positive
volume at the chosen threshold is recorded instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.segment.pipeline import PipelineInputs, PipelineParams, run_pipeline
from autopaint.segment.thresholds import sweep_thresholds
from autopaint.segment.types import InpainterLike

log = logging.getLogger(__name__)

CaseSource = Iterable[tuple[str, PipelineInputs]]


def split_cases(card: dict[str, Any], split: str) -> list[str]:
    """Case ids of ``split`` ("train" | "val" | "test") recorded in a model card's ``split``."""
    ids = (card.get("split") or {}).get(split)
    if not ids:
        raise ValueError(f"model card has no {split!r} split (keys: {sorted(card.get('split') or {})})")
    return [str(c) for c in ids]


def choose_threshold(curves: dict[str, list[float]], thresholds: np.ndarray) -> tuple[float, np.ndarray]:
    """(threshold with the highest mean Dice over the cases, the mean Dice per threshold).

    ``curves``: case id -> Dice at each of ``thresholds`` (same length). Lowest threshold on ties.
    """
    if not curves:
        raise ValueError("no case with a tumour to calibrate the threshold on")
    dice = np.asarray(list(curves.values()), dtype=np.float64)
    if dice.shape[1] != thresholds.size:
        raise ValueError(f"Dice curves have {dice.shape[1]} points, thresholds {thresholds.size}")
    mean = dice.mean(axis=0)
    return float(thresholds[int(np.argmax(mean))]), mean


def calibrate_threshold(inpainter: InpainterLike, cases: CaseSource, params: PipelineParams,
                        out_root: str | Path, on_case: Callable[[str, dict[str, Any]], None] | None = None,
                        ) -> dict[str, Any]:
    """Run :func:`run_pipeline` on each labelled case and pick the global threshold.

    ``cases``: (case id, inputs with ``label``) pairs, loaded lazily one at a time (full volumes are
    large). Each case's result files go to ``out_root/<case id>``. Returns the calibration record
    stored on the card: ``threshold``, ``mean_dice`` (at it), ``thresholds``, ``mean_dice_per_threshold``,
    ``cases`` (tumour cases that voted), ``healthy_cases``, ``per_case`` (best threshold and Dice,
    Dice at the chosen threshold, slice hit rate; healthy: false-positive ml at the chosen threshold),
    ``mode``, ``screen_level``.
    """
    ts = sweep_thresholds()
    root = Path(out_root)
    curves: dict[str, list[float]] = {}
    per_case: dict[str, dict[str, Any]] = {}
    healthy_resid: dict[str, tuple[np.ndarray, float]] = {}
    screen: float | None = None
    for case_id, inputs in cases:
        if inputs.label is None:
            raise ValueError(f"case {case_id} has no label")
        res = run_pipeline(inputs, params, inpainter, root / case_id)
        rep = res.report
        screen = rep["screen"]["level"]
        voxel_ml = float(abs(np.linalg.det(np.asarray(rep["inputs"]["reference_affine"])[:3, :3]))) / 1000.0
        if not np.any(np.asarray(inputs.label.data) > 0):
            # healthy: keep the residual's positive values to measure FP volume at the chosen threshold
            r = res.residual[res.residual > 0]
            healthy_resid[case_id] = (np.sort(r), voxel_ml)
            per_case[case_id] = {"healthy": True}
        else:
            curves[case_id] = list(rep["metrics"]["sweep"]["dice"])
            per_case[case_id] = {"healthy": False, "best_threshold": rep["metrics"]["sweep"]["best"]["threshold"],
                                 "best_dice": rep["metrics"]["sweep"]["best"]["dice"],
                                 "slice_hit_rate": rep["metrics"]["slice_hit_rate"]}
        log.info("calibration case %s done (%s)", case_id, per_case[case_id])
        if on_case is not None:
            on_case(case_id, per_case[case_id])
    threshold, mean = choose_threshold(curves, ts)
    i = int(np.flatnonzero(ts == threshold)[0])
    for cid, curve in curves.items():
        per_case[cid]["dice_at_threshold"] = float(curve[i])
    for cid, (vals, ml) in healthy_resid.items():
        n_fp = vals.size - int(np.searchsorted(vals, threshold, side="right"))
        per_case[cid]["fp_ml_at_threshold"] = float(n_fp * ml)
    return {"threshold": threshold, "mean_dice": float(mean[i]), "thresholds": [float(t) for t in ts],
            "mean_dice_per_threshold": [round(float(d), 6) for d in mean], "cases": sorted(curves),
            "healthy_cases": sorted(healthy_resid), "per_case": per_case, "mode": params.mode,
            "screen_level": screen, "search": params.accuracy(inpainter).search.to_dict()}
