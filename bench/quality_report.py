"""Statistics and markdown tables for bench/quality.py (no torch; reads the results dict only).

Result layout (``bench/results/quality.json``, written by quality.py):

- ``inpainting[cohort][method][channel] = {"mse": [...], "psnr": [...], "ssim": [...]}`` per test
  image (0-255 scale; ``channel`` is "CT", "PET" or "Multi" (both channels of a PET/CT model) for the
  PET/CT models and "CT"/"PET" single-modality models keep their own names, see quality.py).
- ``segmentation[cohort][method] = {"cases": [{"case_id", "dice_best", "precision_best",
  "recall_best", "t_best", "dice_global", "lesion"}...], "global_threshold": float|None, "healthy":
  [{"case_id", "fp_ml", "fp_components"}...], "seconds": float}``; ``lesion``: the autoPET
  lesion-wise numbers of ``segment.metrics.lesion_metrics`` at the global threshold (fixed rules: their
  mask), absent when no threshold was chosen (and in results written before they existed).

Paired tests: scipy.stats.wilcoxon (two-sided signed-rank; exact for small n without ties) between
the reference method (GconvLap on PET/CT, or GconvLap in the inpainting tables) and each other method, paired by case (segmentation) or image
(inpainting). ``nan`` is reported as "n/a" (fewer than 2 pairs, or all differences zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

REFERENCE = "GconvLap-PET/CT"
INPAINT_REFERENCE = "GconvLap"


def mean_std(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """``"m±s"`` of the finite values (population std, like the paper's μ±σ); "n/a" when none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.{digits}f}±{v.std():.{digits}f}"


def paired_wilcoxon(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples; pairs with a non-finite value are dropped.

    Returns nan when fewer than 2 pairs remain or all differences are zero (the test is undefined).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.all(x == y):
        return float("nan")
    return float(wilcoxon(x, y).pvalue)


def format_p(p: float) -> str:
    """p-value as the paper prints it: "< 0.0001", else 3 significant decimals; nan -> "n/a"."""
    if not math.isfinite(p):
        return "n/a"
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.4f}" if p < 0.001 else f"{p:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; cells are str()-ed, '|' escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _case_values(entry: dict[str, Any], key: str, ids: list[str]) -> np.ndarray:
    by_id = {c["case_id"]: c.get(key) for c in entry.get("cases", [])}
    return np.array([np.nan if by_id.get(i) is None else float(by_id[i]) for i in ids], dtype=np.float64)


def pooled_ratio(recs: Sequence[dict[str, Any]], num: str, den: str, empty: str = "n/a") -> str:
    """``"r (n/d)"`` of sums over records (e.g. lesions found / lesions, pooled over patients); ``empty``
    when the denominator is 0."""
    n = sum(int(r.get(num, 0)) for r in recs)
    d = sum(int(r.get(den, 0)) for r in recs)
    return f"{n / d:.3f} ({n}/{d})" if d else empty


def lesion_cells(entry: dict[str, Any]) -> list[str]:
    """Lesion-wise cells of a method at its global threshold (autoPET definitions): sensitivity for
    lesions >= 1 ml and for all lesions (pooled over tumour patients), FP components per patient (all
    test patients, healthy included), FPV and FNV (ml, mean±std over tumour patients); "n/a" without
    lesion numbers (no threshold chosen, or results from before they existed)."""
    les = [c["lesion"] for c in entry.get("cases", []) if c.get("lesion")]
    fpc = [float(c["fp_components"]) for c in les]
    fpc += [float(h["fp_components"]) for h in entry.get("healthy", []) if h.get("fp_components") is not None]
    if not les:
        return ["n/a"] * 5
    return [pooled_ratio(les, "lesions_found_ge_min", "lesions_ge_min"), pooled_ratio(les, "lesions_found", "lesions"),
            f"{np.mean(fpc):.2f}", mean_std([c["fp_volume_ml"] for c in les], 1),
            mean_std([c["fn_volume_ml"] for c in les], 1)]


def segmentation_rows(methods: dict[str, dict[str, Any]], reference: str = REFERENCE) -> list[list[str]]:
    """Rows: method, [Dice], [Precision], [Recall], Dice@t (t), the lesion-wise cells at t
    (:func:`lesion_cells`), healthy FP ml, n, p([Dice] vs reference).

    Cases are paired by ``case_id`` over the union of all methods' test cases.
    """
    ids = sorted({c["case_id"] for m in methods.values() for c in m.get("cases", [])})
    ref = methods.get(reference)
    rows = []
    for name, entry in methods.items():
        best = _case_values(entry, "dice_best", ids)
        glob = _case_values(entry, "dice_global", ids)
        t = entry.get("global_threshold")
        fp = [h["fp_ml"] for h in entry.get("healthy", [])]
        if ref is None or name == reference:
            p = "—"
        else:
            p = format_p(paired_wilcoxon(_case_values(ref, "dice_best", ids), best))
        rows.append([
            name,
            mean_std(best),
            mean_std(_case_values(entry, "precision_best", ids)),
            mean_std(_case_values(entry, "recall_best", ids)),
            mean_std(glob) + (f" (t={t:.2f})" if t is not None else ""),
            *lesion_cells(entry),
            mean_std(fp, 1) if fp else "n/a",
            str(int(np.isfinite(best).sum())),
            p,
        ])
    return rows


SEG_HEADERS = ["Method", "[Dice]", "[Precision]", "[Recall]", "Dice @ global t", "Lesion sens. >= 1 ml @ t",
               "Lesion sens. all @ t", "FP comp. / patient @ t", "FPV (ml) @ t", "FNV (ml) @ t", "Healthy FP (ml)",
               "n", "p vs reference ([Dice])"]


def segmentation_table(methods: dict[str, dict[str, Any]], reference: str = REFERENCE) -> str:
    return markdown_table(SEG_HEADERS, segmentation_rows(methods, reference))


INP_HEADERS = ["Model-Data", "MSE", "PSNR", "SSIM", "n", "p MSE", "p PSNR", "p SSIM"]


def inpainting_rows(methods: dict[str, dict[str, dict[str, list[float]]]], reference: str = INPAINT_REFERENCE) -> list[list[str]]:
    """Rows per (method, channel): MSE/PSNR/SSIM mean±std and Wilcoxon p vs the reference's same channel."""
    rows = []
    for name, channels in methods.items():
        for ch, m in channels.items():
            ref = methods.get(reference, {}).get(ch)
            ps = []
            for k in ("mse", "psnr", "ssim"):
                if ref is None or name == reference or len(ref[k]) != len(m[k]):
                    ps.append("—")
                else:
                    ps.append(format_p(paired_wilcoxon(ref[k], m[k])))
            digits = {"mse": 3, "psnr": 3, "ssim": 4}
            rows.append([f"{name}-{ch}", *(mean_std(m[k], digits[k]) for k in ("mse", "psnr", "ssim")),
                         str(len(m["mse"])), *ps])
    return rows


def inpainting_table(methods: dict[str, dict[str, dict[str, list[float]]]], reference: str = INPAINT_REFERENCE) -> str:
    return markdown_table(INP_HEADERS, inpainting_rows(methods, reference))


def best_method(methods: dict[str, dict[str, Any]], key: str = "dice_best") -> tuple[str, float]:
    """The method with the highest mean ``key`` over its cases (ties: first listed)."""
    best, val = "", -math.inf
    for name, entry in methods.items():
        v = np.array([c[key] for c in entry.get("cases", []) if c.get(key) is not None], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size and v.mean() > val:
            best, val = name, float(v.mean())
    return best, val
