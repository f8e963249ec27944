"""Render bench/quality.py's results dict as bench/results/quality.md (tables, summary, limits)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.quality_report import (
    INPAINT_REFERENCE,
    REFERENCE,
    format_p,
    inpainting_table,
    markdown_table,
    paired_wilcoxon,
    segmentation_table,
)

COHORT_TITLES = {
    "thorax": "synthetic thorax PET/CT phantoms (lung OOI; stands in for the paper's NSCLC set)",
    "headneck": "synthetic head-and-neck PET/CT phantoms (stands in for the paper's HN set)",
    "ibsi-sts": "real FDG-PET/CT, IBSI soft-tissue sarcoma of the limbs (20 patients, CC BY 3.0)",
}
SUV_RULES = ("SUV≥2.5", "41% SUVmax", "41% SUVmax per lesion", "PET window sweep")


def _mean(entry: dict[str, Any], key: str) -> float:
    v = np.array([c[key] for c in entry.get("cases", []) if c.get(key) is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _paired(seg: dict[str, Any], a: str, b: str, key: str = "dice_best") -> float:
    ids = sorted({c["case_id"] for c in seg[a]["cases"]} & {c["case_id"] for c in seg[b]["cases"]})
    va = {c["case_id"]: c[key] for c in seg[a]["cases"]}
    vb = {c["case_id"]: c[key] for c in seg[b]["cases"]}
    return paired_wilcoxon([va[i] for i in ids], [vb[i] for i in ids])


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{d}f}"


def headline(results: dict[str, Any]) -> list[str]:
    """Plain sentences: who wins where (by mean [Dice] and by Dice at the validation threshold)."""
    out = []
    for cohort, seg in results.get("segmentation", {}).items():
        if not seg:
            continue
        means = {m: _mean(e, "dice_best") for m, e in seg.items()}
        glob = {m: _mean(e, "dice_global") for m, e in seg.items()}
        best = max(means, key=lambda m: -1 if math.isnan(means[m]) else means[m])
        bestg = max(glob, key=lambda m: -1 if math.isnan(glob[m]) else glob[m])
        n = len(seg[best]["cases"])
        s = (f"**{cohort}** ({n} test patients with tumour): best [Dice] {best} {_f(means[best])}; best Dice at the "
             f"validation-chosen threshold {bestg} {_f(glob[bestg])}.")
        if REFERENCE in seg:
            ref = means[REFERENCE]
            for rule in ("SUV≥2.5", "41% SUVmax", "VAE-PET/CT", "dAE-PET/CT"):
                if rule in seg:
                    verdict = "beats" if ref > means[rule] else "loses to" if ref < means[rule] else "ties"
                    s += (f" {REFERENCE} ({_f(ref)}) {verdict} {rule} ({_f(means[rule])}, Wilcoxon p = "
                          f"{format_p(_paired(seg, REFERENCE, rule))}).")
        out.append(s)
    for cohort, inp in results.get("inpainting", {}).items():
        psnr = {m: float(np.mean(v["Multi"]["psnr"])) for m, v in inp.items() if not m.startswith("_") and "Multi" in v}
        if psnr:
            best = max(psnr, key=lambda m: psnr[m])
            out.append(f"**{cohort}** inpainting (PET/CT, held-out healthy slices, fixed holes): highest PSNR {best} "
                       f"{psnr[best]:.2f} dB (" + ", ".join(f"{m} {v:.2f}" for m, v in psnr.items()) + ").")
    return out


def _setup_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Setup", ""]
    rows = []
    for cohort, c in results.get("cohorts", {}).items():
        sp, sl = c["splits"], c.get("slices", {})
        rows.append([cohort, COHORT_TITLES.get(cohort, c.get("source", "")), c["preset"],
                     f"{sp['train']}/{sp['val']}/{sp['test']}", f"{sl.get('train', '?')}/{sl.get('val', '?')}/{sl.get('test', '?')}"])
    lines += [markdown_table(["Cohort", "Data", "Preset", "Patients train/val/test", "Healthy slices train/val/test"], rows), ""]
    rows = []
    for cohort, models in results.get("models", {}).items():
        for name, info in models.items():
            cal = info.get("screen_calibration") or {}
            rows.append([cohort, name, info.get("source"), info.get("steps"), _f(info.get("train_seconds"), 0),
                         _f(info.get("val_psnr"), 2) if info.get("val_psnr") is not None else _f(info.get("val_l1"), 4),
                         f"{_f(cal.get('screen_level'), 2)} ({cal.get('n_slices')} slices)" if cal else "—"])
    lines += ["Models (source: shipped = models/ reused, trained = this run, cached = an earlier run's work folder; "
              "screen level = fast mode's screening level calibrated on healthy validation slices, "
              "`segment.fast.calibrate_screen`):", "",
              markdown_table(["Cohort", "Model", "Source", "Steps", "Train s", "Val PSNR (dB) / val L1", "Screen level"],
                             rows), ""]
    return lines


def _exact_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for cohort, cases in results.get("exact_vs_fast", {}).items():
        for r in cases:
            rows.append([cohort, r["case_id"], len(r["slices"]), _f(r["exact"]["dice_best"]), _f(r["fast"]["dice_best"]),
                         _f(r["mask_agreement_dice"]), r["exact"]["forward_passes"], r["fast"]["forward_passes"],
                         _f(r["exact"]["seconds"], 1), _f(r["fast"]["seconds"], 1)])
    if not rows:
        return []
    return ["## Exact vs fast autoinpainting (GconvLap-PET/CT, tumour slices)", "",
            "Both modes on the same slices (the ones with most tumour); fast mode here without its screening "
            "pass (grouped scoring + exact re-scoring + early-stopping ladder + batching). [Dice] on those slices, "
            "model grid.", "",
            markdown_table(["Cohort", "Case", "Slices", "[Dice] exact", "[Dice] fast", "Dice(fast mask, exact mask)",
                            "Passes exact", "Passes fast", "s exact", "s fast"], rows), ""]


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    wall = meta.get("wall_s", float("nan"))
    lines = [f"# Quality benchmark (budget `{meta['budget']}`)", "",
             f"Generated by `{meta['command']}` on {meta['started']} ({meta.get('cpu_count')} CPU cores, torch "
             f"{meta.get('torch')}, {meta.get('torch_threads')} threads). **Wall time of this run: {wall:.0f} s "
             f"({wall / 60:.1f} min).**" + (f" 1-min load average at start / end: {meta['loadavg_start']:.1f} / "
                                             f"{meta.get('loadavg_end', float('nan')):.1f} (other processes shared the CPU "
                                             "when it exceeds the core count)." if "loadavg_start" in meta else ""),
             "", "## Summary", ""]
    lines += [f"- {s}" for s in headline(results)]
    ts = meta.get("train_seconds", {})
    lines += ["", "What the numbers come from and what they do not show: the thorax and head-and-neck cohorts are "
              "synthetic phantoms generated by `autopaint.data.phantom` (not patients; their tumours, uptake and "
              "anatomy are simplified), the real cohort is IBSI soft-tissue sarcoma of the limbs (not chest or "
              "head-and-neck; each study is cropped 5 cm around the tumour, so few healthy slices), splits are by "
              "patient and only healthy slices train the networks. Models marked \"shipped\" in the table below are "
              "the registered models of `models/` (per cohort: GconvLap and its Gconv / Pconv siblings trained "
              "with the same recorded configuration, bench/archs.py - an equal budget of a few epochs, trained "
              "on other patients than the ones here); every other network is trained here for a fixed wall-clock "
              f"time (inpainting networks {ts.get('gconv_lap', '?'):.0f} s, dAE/VAE {ts.get('dae', '?'):.0f} s), "
              "far too short to judge them by. Images are 128 x 128, test sets have a handful of patients, so "
              "p-values are weak "
              "(with 5 pairs the smallest possible two-sided Wilcoxon p is 0.0625). Reproduce with the command "
              "above.", ""]
    if results.get("errors") or results.get("skipped"):
        lines += ["**Incomplete:** " + "; ".join(f"{k}: {v}" for k, v in {**results.get("errors", {}),
                                                                          **results.get("skipped", {})}.items()), ""]
    lines += _setup_section(results)
    lines += ["## Inpainting quality (paper Tables 1-2)", "",
              "MSE / PSNR (dB) / SSIM on the 0-255 scale, mean±std over held-out test patients' healthy slices, one "
              "fixed seeded irregular hole per image (`model/holes.fixed_masks`, seed "
              "2024), composite vs original, per channel of the PET/CT models (CT, PET, Multi = both). "
              f"p: Wilcoxon signed-rank vs {INPAINT_REFERENCE} on the same images.", ""]
    for cohort, inp in results.get("inpainting", {}).items():
        methods = {k: v for k, v in inp.items() if not k.startswith("_")}
        lines += [f"### {cohort}", "", inpainting_table(methods), ""]
    lines += ["## Segmentation (paper Tables 3-4 and 6-7)", "",
              "Per test patient with tumour, on the CT grid inside the organ of interest: [Dice]/[Precision]/[Recall] "
              "at the patient's best threshold of the sweep 0..0.8 (step 0.02, `residual > t`); Dice at ONE threshold "
              "per method chosen on validation patients (max mean Dice); at that threshold (fixed rules: their mask) the "
              "lesion-wise numbers as autoPET defines them (`segment.metrics.lesion_metrics`, cc3d components, "
              "18-connectivity): a true lesion is found when a predicted voxel touches it, sensitivity pooled over "
              "the tumour patients' lesions (>= 1 ml, and all), false-positive components (touching no lesion) per "
              "test patient (healthy ones included), FPV / FNV = false-positive / missed-lesion volume per tumour "
              "patient; healthy FP = volume (ml) flagged in healthy "
              f"test patients at that threshold. p: Wilcoxon signed-rank on per-patient [Dice] vs {REFERENCE}. "
              "Autoinpainting = `run_pipeline` in fast mode. Fixed rules (SUV≥2.5, 41% SUVmax) have no threshold to "
              "pick: [Dice] = Dice. PET window sweep = the PET (SUV/12 in the OOI) thresholded like a residual, i.e. "
              "the best SUV cut-off per patient (an oracle). 41% SUVmax: voxels >= 0.41 x the OOI's SUVmax, only "
              "when SUVmax >= 2.5 (per lesion: one isocontour per SUV≥2.5 component).", ""]
    for cohort, seg in results.get("segmentation", {}).items():
        lines += [f"### {cohort}", "", segmentation_table(seg), ""]
        any_entry: dict[str, Any] = next(iter(seg.values()), {})
        n_val = any_entry.get("val_tumour_cases", 0)
        n_healthy = len(any_entry.get("healthy", []))
        note = (f"Global thresholds chosen on {n_val} validation patient(s) with tumour"
                + (" (none: 'Dice @ global t' is n/a)" if n_val == 0 else "")
                + f"; {n_healthy} healthy test patient(s) for the FP volume"
                + (" (none: n/a)" if n_healthy == 0 else "") + ".")
        costs = [f"{m}: {e['forward_passes'] / max(len(e['cases']) + n_healthy, 1):.0f} forward passes, "
                 f"{e['seconds'] / max(len(e['cases']) + n_healthy, 1):.0f} s per test patient"
                 for m, e in seg.items() if e.get("forward_passes")]
        lines += [note + (" Autoinpainting cost (fast mode): " + "; ".join(costs) + "." if costs else ""), ""]
    lines += _exact_section(results)
    keys = ("data", "training", "inpainting", "calibration", "segment_val", "segment_test", "exact_vs_fast")
    rows = [[c, *(_f(t.get(k), 0) for k in keys)] for c, t in results.get("timings", {}).items()]
    lines += ["## Timings (s)", "", markdown_table(["Cohort", "Data", "Training", "Inpainting", "Screen calibration",
                                                   "Segment val", "Segment test", "Exact vs fast"], rows), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in meta.get("plots", [])] + [""]
    return "\n".join(lines)
