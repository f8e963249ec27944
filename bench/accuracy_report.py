"""Markdown tables of ``bench/accuracy.py evaluate``: methods side by side on the same patients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from bench.quality_report import pooled_ratio

ABLATION = ("paper", "hotspot", "+hyper", "+gating", "+coverage", "+delineation", "default")
BASELINES = ("SUV >= 2.5", "41 % SUVmax", "41 % SUVmax per lesion", "PERCIST (1.5 x ref + 2 SD)",
             "PET window sweep (oracle)")
UAD = ("dAE", "VAE")  # reconstruction baselines (bench/accuracy_uad.py), when evaluate had them


def _ms(vals: list[Any]) -> str:
    v = [x for x in vals if x is not None and np.isfinite(x)]
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "-"


def summary_row(name: str, recs: list[dict[str, Any]]) -> str:
    tum = [r for r in recs if not r["healthy"]]
    hea = [r for r in recs if r["healthy"]]
    if "lesions" not in (tum or recs)[0]:  # oracle: Dice only
        return f"| {name} | {_ms([r['dice'] for r in tum])} | - | - | - | - | - | - | - | - | - |"
    best = [r.get("best_dice") for r in tum if r.get("best_dice") is not None]
    return (f"| {name} | {_ms([r['dice'] for r in tum])} | {_ms(best) if best else '-'} | "
            f"{pooled_ratio(tum, 'lesions_found_ge_min', 'lesions_ge_min', '-')} | "
            f"{pooled_ratio(tum, 'lesions_found', 'lesions', '-')} | "
            f"{np.mean([r['fp_components'] for r in recs]):.2f} | {np.mean([r['fp_volume_ml'] for r in tum]):.2f} | "
            f"{np.mean([r['fn_volume_ml'] for r in tum]):.2f} | "
            f"{np.median([r['pred_volume_ml'] for r in hea]) if hea else float('nan'):.2f} | "
            f"{np.mean([r['images'] for r in recs]):.0f} | {np.mean([r['seconds'] for r in recs]):.1f} |")


HEADER = ("| method | Dice (tumour patients) | [Dice] | lesion sensitivity >= 1 ml | all lesions | FP components "
          "/ patient | FPV ml | FNV ml | healthy FP ml (median) | images / volume | s / volume |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def wilcoxon_rows(records: dict[str, list[dict[str, Any]]], ref: str = "default") -> list[str]:
    out = ["| default vs | mean Dice difference | pairs | Wilcoxon p (two-sided) |", "|---|---|---|---|"]
    base = {r["case"]: r["dice"] for r in records[ref] if not r["healthy"]}
    for name in (*BASELINES, *UAD, "paper"):
        if name not in records:
            continue
        other = {r["case"]: r["dice"] for r in records[name] if not r["healthy"]}
        keys = sorted(set(base) & set(other))
        a = np.array([base[k] for k in keys])
        b = np.array([other[k] for k in keys])
        p = float(stats.wilcoxon(a, b).pvalue) if len(keys) >= 2 and np.any(a != b) else float("nan")
        out.append(f"| {name} | {np.mean(a - b):+.3f} | {len(keys)} | {p:.2g} |")
    return out


def _uad_lines(uad: dict[str, Any] | None) -> list[str]:
    if not uad:
        return []
    tr = uad["training"]
    return [f"dAE / VAE: trained on the healthy slices of `{uad['train_cohort_command']}` "
            f"({uad['slices']['train']} train / {uad['slices']['val']} val slices; "
            + ", ".join(f"{k} {t['steps']} steps in {t['train_seconds']:.0f} s, val L1 "
                        + ("n/a" if t.get("val_l1") is None else f"{t['val_l1']:.4f}") for k, t in tr.items())
            + f"), residual |x - x_hat| (mean of CT and PET) in the organ of interest, thresholds "
            f"{ {k: round(v, 2) for k, v in uad['thresholds'].items()} } chosen on the validation patients "
            f"(validation Dice { {k: round(v, 3) for k, v in uad['val_dice'].items()} }; `{uad['command']}`).  "]


def write_report(path: Path, meta: dict[str, Any], records: dict[str, list[dict[str, Any]]],
                 exact: list[dict[str, Any]]) -> None:
    n_t = sum(not r["healthy"] for r in records["default"])
    n_h = sum(r["healthy"] for r in records["default"])
    cal = meta["calibration"]
    lines = [f"# Accuracy: {meta['model']} on {meta['cohort']}", "",
             f"Command: `{meta['command']}`  ",
             f"Held-out cohort generated once by: `{meta['cohort_command']}`  " if meta.get("cohort_command") else "",
             f"Model sha256 {meta['model_sha256'][:12]}; {n_t} patients with tumour, {n_h} without; "
             f"machine: {meta['machine']}; wall {meta['wall_s'] / 60:.1f} min.  ",
             f"Every threshold and level was chosen on the validation patients {cal['cases']} of "
             f"{cal['cohort']} (`{cal['command']}`): gate {cal.get('gate_scope', 'lesion')} level {cal['gate_level']:.4f} "
             f"(budget {cal['fp_budget_per_patient']} false-positive lesions per patient), residual thresholds "
             f"{ {k: round(v, 2) for k, v in cal['thresholds'].items()} }.", *_uad_lines(meta.get("uad")),
             *([f"Note: {meta['note']}  "] if meta.get("note") else []), "",
             "Dice: single threshold/level from validation, mean ± SD over patients with tumour; [Dice]: per-patient "
             "best residual threshold of the paper's sweep (residual-threshold rows only); lesion-wise numbers as "
             "autoPET defines them (cc3d components, 18-connectivity): a true lesion is found when any predicted "
             "voxel touches it; FPV/FNV = mean false-positive/false-negative volume per tumour patient; FP "
             "components counted over all patients; healthy FP = predicted volume on the patients without tumour.",
             "", "## Methods on the same patients", "", HEADER]
    for name in ("default", "paper", *BASELINES, *UAD):
        if name in records:
            lines.append(summary_row(name, records[name]))
    lines += ["", "## Wilcoxon signed-rank (Dice, patients with tumour)", "", *wilcoxon_rows(records), "",
              "## Ablation: each row adds one part to the row above", "", HEADER]
    for name in ABLATION:
        if name in records:
            lines.append(summary_row(name, records[name]))
    if exact:
        lines += ["", "## Fast vs exact (default configuration; exact = the paper's exhaustive sweep + hot spots)", "",
                  "| case | images fast | images exact | images paper exact | hit fast | hit exact | Dice fast | "
                  "Dice exact | Dice paper exact | s fast | s exact |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in exact:
            lines.append(f"| {e['case']} | {e['fast_images']} | {e['exact_images']} | {e['paper_exact_images']} | "
                         f"{e['fast_hit']:.3f} | {e['exact_hit']:.3f} | {e['fast_dice']:.3f} | {e['exact_dice']:.3f} | "
                         f"{e['paper_exact_dice']:.3f} | {e['fast_s']:.1f} | {e['exact_s']:.1f} |")
        fi = np.mean([e["fast_images"] for e in exact])
        pi = np.mean([e["paper_exact_images"] for e in exact])
        lines += ["", f"Mean images: fast {fi:.0f}, paper exact {pi:.0f} ({pi / max(fi, 1):.1f}x less work); "
                  f"hit rate fast {np.mean([e['fast_hit'] for e in exact]):.3f} vs exact "
                  f"{np.mean([e['exact_hit'] for e in exact]):.3f}; Dice fast "
                  f"{np.mean([e['fast_dice'] for e in exact]):.3f} vs exact {np.mean([e['exact_dice'] for e in exact]):.3f}."]
    lines += ["", "## Per patient (Dice; healthy: predicted ml)", ""]
    names = [n for n in ("default", "paper", "SUV >= 2.5", "41 % SUVmax", "PERCIST (1.5 x ref + 2 SD)", *UAD)
             if n in records]
    lines += ["| case | tumour ml | lesions | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for i, r in enumerate(records["default"]):
        cells = []
        for n in names:
            x = records[n][i]
            cells.append(f"{x['pred_volume_ml']:.2f} ml" if x["healthy"] else f"{x['dice']:.3f}")
        lines.append(f"| {r['case']} | {r['tumour_ml']:.1f} | {r['lesions_found']}/{r['lesions']} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(line for line in lines if line is not None) + "\n")
