"""Segmentation metrics from confusion counts (paper §2.7: DSC, precision, recall; supplement:
sensitivity, specificity). Written from the confusion counts so one vectorised threshold sweep
can reuse them; conventions for empty sets are fixed here (see :func:`from_counts`)."""

from __future__ import annotations

from typing import Literal

import numpy as np

ArrayOrInt = np.ndarray | int


def _ratio(num: ArrayOrInt, den: ArrayOrInt, empty: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def from_counts(tp: ArrayOrInt, fp: ArrayOrInt, fn: ArrayOrInt, tn: ArrayOrInt) -> dict[str, np.ndarray]:
    """Dice, precision, recall (= sensitivity) and specificity from voxel counts (scalars or arrays).

    Empty-set conventions: Dice = 1 when prediction and label are both empty; precision = 0 when
    nothing is predicted; recall = 0 when the label is empty; specificity = 1 when there are no
    negatives.
    """
    return {
        "dice": _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn, 1.0),
        "precision": _ratio(tp, np.asarray(tp) + fp, 0.0),
        "recall": _ratio(tp, np.asarray(tp) + fn, 0.0),
        "sensitivity": _ratio(tp, np.asarray(tp) + fn, 0.0),
        "specificity": _ratio(tn, np.asarray(tn) + fp, 1.0),
    }


def confusion(pred: np.ndarray, label: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts of two same-shape bool arrays."""
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(label, dtype=bool)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    return tp, fp, fn, int(p.size - tp - fp - fn)


def segmentation_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Dice, precision, recall, sensitivity, specificity of a binary prediction vs a label."""
    return {k: float(v) for k, v in from_counts(*confusion(pred, label)).items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool arrays (1.0 when both are empty)."""
    return segmentation_metrics(a, b)["dice"]


def slice_hit_rate(candidates: np.ndarray, label: np.ndarray, slices: np.ndarray | None = None) -> float:
    """Share of tumour slices whose candidate mask touches the tumour.

    ``candidates``, ``label``: (K, N, N) bool on the model grid (slice axis first). ``slices``:
    optional bool (K,) restricting the slices considered. NaN when there is no tumour slice.
    """
    tumour = label.reshape(label.shape[0], -1).any(axis=1)
    if slices is not None:
        tumour &= slices
    if not tumour.any():
        return float("nan")
    hit = (candidates & label).reshape(label.shape[0], -1).any(axis=1)
    return float(hit[tumour].mean())


#: autoPET's component connectivity for the lesion-wise metrics.
LESION_CONNECTIVITY: Literal[18] = 18


def lesion_metrics(pred: np.ndarray, label: np.ndarray, voxel_ml: float, min_ml: float = 1.0) -> dict[str, float | int]:
    """Lesion-wise numbers as autoPET defines them (components with cc3d, 18-connectivity).

    ``pred``, ``label``: same-shape bool arrays (reference grid); ``voxel_ml``: one voxel's volume.
    ``fp_volume_ml``: predicted components that touch no true lesion; ``fn_volume_ml``: true lesions
    touched by no prediction; ``lesions`` / ``lesions_found`` (and ``_ge_min`` for true lesions of at
    least ``min_ml``); ``sensitivity`` / ``sensitivity_ge_min`` (NaN without such lesions);
    ``fp_components``; ``pred_volume_ml`` (on a healthy case every predicted voxel is a false positive).
    """
    import cc3d

    p = np.asarray(pred, dtype=bool)
    g = np.asarray(label, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and label {g.shape} differ")
    pl = cc3d.connected_components(p.astype(np.uint8), connectivity=LESION_CONNECTIVITY)
    gl = cc3d.connected_components(g.astype(np.uint8), connectivity=LESION_CONNECTIVITY)
    n_p, n_g = int(pl.max()), int(gl.max())
    p_sizes = np.bincount(pl.ravel(), minlength=n_p + 1)
    g_sizes = np.bincount(gl.ravel(), minlength=n_g + 1)
    both = p & g
    p_hit = np.zeros(n_p + 1, dtype=bool)
    g_hit = np.zeros(n_g + 1, dtype=bool)
    p_hit[np.unique(pl[both])] = True
    g_hit[np.unique(gl[both])] = True
    fp = [i for i in range(1, n_p + 1) if not p_hit[i]]
    fn = [i for i in range(1, n_g + 1) if not g_hit[i]]
    big = [i for i in range(1, n_g + 1) if g_sizes[i] * voxel_ml >= min_ml]
    found = sum(1 for i in range(1, n_g + 1) if g_hit[i])
    found_big = sum(1 for i in big if g_hit[i])
    return {
        "fp_volume_ml": float(sum(p_sizes[i] for i in fp) * voxel_ml),
        "fn_volume_ml": float(sum(g_sizes[i] for i in fn) * voxel_ml),
        "fp_components": len(fp),
        "lesions": n_g, "lesions_found": found,
        "lesions_ge_min": len(big), "lesions_found_ge_min": found_big,
        "sensitivity": float(found / n_g) if n_g else float("nan"),
        "sensitivity_ge_min": float(found_big / len(big)) if big else float("nan"),
        "pred_volume_ml": float(p.sum() * voxel_ml),
        "min_ml": float(min_ml),
    }
