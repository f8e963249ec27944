"""Perceptual-loss ablation without ImageNet weights: seeded random-weight VGG16 vs terms off.

ImageNet VGG16 weights cannot be downloaded here, so the two available choices are compared:
the demo gconv_lap net is trained for the same number of steps (same seed, same batches and holes)
with ``perceptual="random"`` and ``perceptual="off"`` (and ``"imagenet"`` when ``--vgg-weights``
is given) on real head-and-neck CT slices (bench/hnct_slices.py); validation PSNR/SSIM/MSE (0–255,
fixed holes) and wall time are reported in bench/results/vgg_ablation.md.

    .venv/bin/python bench/vgg_ablation.py --steps 60 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from autopaint.model.train import TrainConfig, train
from bench import hnct_slices


def run(ds: Path, work: Path, perceptual: str, steps: int, vgg_weights: str | None = None) -> dict:
    cfg = TrainConfig(dataset=str(ds), out=str(work / f"vgg-{perceptual}"), arch="gconv_lap", modality="ct",
                      preset="demo", epochs=1000, device="cpu", perceptual=perceptual, max_val=72,
                      max_steps=steps, vgg_weights=vgg_weights, seed=0)
    t = time.perf_counter()
    s = train(cfg, progress=False)
    return {"wall_s": time.perf_counter() - t, **s["val_metrics"], "steps": s["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vgg-weights", default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/autopaint-bench-model"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vgg_ablation.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = hnct_slices.build(args.work / "hnct")
    choices = ["off", "random"] + (["imagenet"] if args.vgg_weights else [])
    res = {c: run(ds, args.work, c, args.steps, args.vgg_weights if c == "imagenet" else None) for c in choices}
    lines = ["# Perceptual/style loss ablation (VGG16 without ImageNet weights)", "",
             f"demo gconv_lap (128 px, 1-channel CT), {args.steps} steps of batch 8 "
             f"({8 * args.steps} images) per run, lr 1e-4, seed 0, identical batches and holes; "
             f"validation on 72 real OpenKBP H&N CT slices with fixed holes; {os.cpu_count()} shared CPU "
             f"cores, {args.threads} torch thread(s). A small budget: early-training behaviour only.", "",
             "| perceptual | val PSNR | val SSIM | val MSE | wall (s) |", "|---|---|---|---|---|"]
    for c, r in res.items():
        lines.append(f"| {c} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.4f} | {r['mse']:.1f} | {r['wall_s']:.0f} |")
    best = max(res, key=lambda c: res[c]["psnr"])
    lines += ["", f"Highest validation PSNR: **{best}**.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
