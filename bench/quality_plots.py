"""PNG plots of bench/quality.py's results dict (matplotlib, Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.quality_seg import THRESHOLDS  # noqa: E402


def plot_inpainting(results: dict[str, Any], path: Path) -> Path | None:
    """Box plots of per-image PSNR (0-255 scale) by method: one row per cohort, one column per channel."""
    inp = results.get("inpainting", {})
    cohorts = [c for c, methods in inp.items() if any(not k.startswith("_") for k in methods)]
    if not cohorts:
        return None
    channels = ("CT", "PET", "Multi")
    fig, axes = plt.subplots(len(cohorts), 3, figsize=(11, 3.4 * len(cohorts)), squeeze=False)
    for r, cohort in enumerate(cohorts):
        for c, ch in enumerate(channels):
            ax = axes[r, c]
            methods = {k: v for k, v in inp[cohort].items() if not k.startswith("_") and ch in v}
            if not methods:
                ax.axis("off")
                continue
            ax.boxplot([methods[k][ch]["psnr"] for k in methods], showfliers=False)
            ax.set_xticks(range(1, len(methods) + 1), list(methods), rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{cohort} - {ch}", fontsize=9)
            ax.set_ylabel("PSNR (dB, 0-255)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_segmentation(results: dict[str, Any], path: Path) -> Path | None:
    """Per-patient [Dice] (best threshold per subject) as dots + mean bar, one panel per cohort/modality."""
    seg = results.get("segmentation", {})
    panels = [c for c, methods in seg.items() if methods]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), squeeze=False)
    for ax, cohort in zip(axes[:, 0], panels, strict=True):
        methods = seg[cohort]
        names = list(methods)
        for i, name in enumerate(names):
            vals = [c["dice_best"] for c in methods[name].get("cases", []) if c.get("dice_best") is not None]
            rule = "SUV" in name or name == "PET window sweep"
            ax.bar(i, np.mean(vals) if vals else 0.0, color="#fdae6b" if rule else "#9ecae1", width=0.7)
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.2, 0.2, len(vals)) if vals else [], vals, s=10, c="k")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("[Dice]")
        ax.set_title(f"{cohort}: per-patient best-threshold Dice (test patients; orange = SUV rules)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_threshold_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Mean test Dice vs threshold for the swept methods, with each method's validation-chosen threshold."""
    seg = results.get("segmentation", {})
    panels = [c for c, methods in seg.items() if methods]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, cohort in zip(axes[0], panels, strict=True):
        for name, entry in seg[cohort].items():
            curves = [c["curve"]["dice"] for c in entry.get("cases", []) if "curve" in c]
            if not curves:
                continue
            mean = np.mean(np.asarray(curves), axis=0)
            (line,) = ax.plot(THRESHOLDS, mean, label=name, lw=1.2)
            t = entry.get("global_threshold")
            if t is not None:
                ax.plot([t], [mean[int(np.argmin(np.abs(THRESHOLDS - t)))]], "o", color=line.get_color(), ms=4)
        ax.set_xlabel("residual threshold t")
        ax.set_ylabel("mean test Dice")
        ax.set_title(f"{cohort} (dots: threshold chosen on validation)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """All plots into ``out_dir`` (quality_*.png); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        plot_inpainting(results, out_dir / "quality_inpainting.png"),
        plot_segmentation(results, out_dir / "quality_segmentation.png"),
        plot_threshold_curves(results, out_dir / "quality_threshold_curves.png"),
    ]
    return [p for p in made if p is not None]
