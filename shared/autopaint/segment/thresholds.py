"""Residual -> binary mask: one threshold, or the paper's sweep 0 ... 0.8 step 0.02 with a label.

A voxel is positive when ``residual > t`` (strict, so t = 0 selects every changed voxel and never
the untouched background). The sweep is vectorised: voxel values inside the label and the changed
voxels outside it are sorted once and every threshold's confusion counts come from
``np.searchsorted`` (no per-threshold pass over the volume). numpy only — no torch, so the API
can re-threshold on CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autopaint.segment.metrics import from_counts

#: Fallback when the model card has no ``default_threshold``: residuals are in [0, 1] of the
#: windowed intensities; 0.1 is a tenth of the window (e.g. 1.2 SUV on the [0, 12] SUV window).
FALLBACK_THRESHOLD = 0.1


def sweep_thresholds(start: float = 0.0, stop: float = 0.8, step: float = 0.02) -> np.ndarray:
    """The paper's thresholds 0, 0.02, ..., 0.8 (inclusive), rounded to 1e-9 to avoid float drift."""
    n = int(round((stop - start) / step)) + 1
    return np.round(start + step * np.arange(n), 9)


def apply_threshold(residual: np.ndarray, t: float) -> np.ndarray:
    """Binary mask ``residual > t`` (same shape, uint8 0/1)."""
    return (np.asarray(residual) > t).astype(np.uint8)


def resolve_threshold(threshold: float | None, card_default: float | None) -> tuple[float, str]:
    """Explicit threshold, else the model card's default, else :data:`FALLBACK_THRESHOLD`."""
    if threshold is not None:
        return float(threshold), "explicit"
    if card_default is not None:
        return float(card_default), "model_card"
    return FALLBACK_THRESHOLD, "fallback"


def sweep(residual: np.ndarray, label: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, Any]:
    """Dice, precision, recall, sensitivity, specificity for every threshold, and the best one.

    ``residual`` float array and ``label`` bool array of the same shape (any shape; the reference
    grid (I, J, K) in the pipeline). Returns ``{"thresholds": [...], "dice": [...], ...,
    "best": {"threshold", "dice", "precision", ...}}`` (best = highest Dice, lowest threshold on
    ties) — the paper's [·] numbers.
    """
    r = np.asarray(residual, dtype=np.float64).ravel()
    g = np.asarray(label, dtype=bool).ravel()
    if r.shape != g.shape:
        raise ValueError(f"residual {residual.shape} and label {label.shape} differ")
    ts = sweep_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    pos = np.sort(r[g])
    neg = np.sort(r[~g & (r > ts.min())]) if ts.size else np.zeros(0)
    tp = pos.size - np.searchsorted(pos, ts, side="right")
    fp = neg.size - np.searchsorted(neg, ts, side="right")
    fn = pos.size - tp
    tn = r.size - tp - fp - fn
    m = from_counts(tp, fp, fn, tn)
    best = int(np.argmax(m["dice"]))
    out: dict[str, Any] = {"thresholds": [float(t) for t in ts]}
    out.update({k: [float(x) for x in v] for k, v in m.items()})
    out["best"] = {"threshold": float(ts[best]), **{k: float(v[best]) for k, v in m.items()}}
    return out
