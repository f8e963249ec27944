"""Choose the "demo" preset by measurement: CPU speed vs validation quality on a small budget.

For each candidate 128-px gated U-Net (depth / widths) this measures parameters (MB, float32),
forward FLOPs per image, training images/s (batch 8, paper loss, perceptual off and random-VGG),
inference images/s (batch 16), then trains it for the same wall-clock budget on real head-and-neck
CT slices (bench/hnct_slices.py) and reports validation MSE/PSNR/SSIM (0–255, fixed holes).
Also reports the paper preset's per-image inference FLOPs. Writes bench/results/model_presets.md.

    .venv/bin/python bench/train_throughput.py --budget-min 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from autopaint.model.flops import flops_per_image
from autopaint.model.holes import fixed_masks
from autopaint.model.losses import InpaintingLoss, LossWeights
from autopaint.model.networks import PRESETS, build_network, count_parameters, preset_config
from autopaint.model.train import TrainConfig, train, train_step
from autopaint.model.vgg import build_vgg
from bench import hnct_slices

CANDIDATES: dict[str, dict] = {
    "d5-w16-128": {"depth": 5, "base_width": 16, "max_width": 128},
    "d6-w16-128": {"depth": 6, "base_width": 16, "max_width": 128},
    "d6-w32-128": {"depth": 6, "base_width": 32, "max_width": 128},
    "d6-w24-192": {"depth": 6, "base_width": 24, "max_width": 192},
}


def speed(overrides: dict, channels: int = 2, steps: int = 4) -> dict:
    cfg = preset_config("demo", "gconv_lap", channels, **overrides)
    torch.manual_seed(0)
    net = build_network(cfg)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(8, channels, cfg.size, cfg.size)
    m = torch.from_numpy(fixed_masks(8, cfg.size))
    res = {"params_mb": count_parameters(net) * 4 / 1e6, "gflops": flops_per_image(cfg) / 1e9}
    for name, vgg in (("off", None), ("random", build_vgg("random"))):
        loss = InpaintingLoss(LossWeights(), vgg)
        net.train()
        train_step(net, loss, opt, x, m, torch.device("cpu"))
        t = time.perf_counter()
        for _ in range(steps):
            train_step(net, loss, opt, x, m, torch.device("cpu"))
        res[f"train_ips_{name}"] = 8 * steps / (time.perf_counter() - t)
    net.eval()
    xi = torch.rand(16, channels, cfg.size, cfg.size)
    mi = torch.from_numpy(fixed_masks(16, cfg.size))
    with torch.no_grad():
        net(xi, mi)
        t = time.perf_counter()
        for _ in range(3):
            net(xi * mi, mi)
    res["infer_ips"] = 48 / (time.perf_counter() - t)
    return res


def quality(ds: Path, work: Path, name: str, overrides: dict, budget_min: float, perceptual: str = "off",
            arch: str = "gconv_lap") -> dict:
    cfg = TrainConfig(dataset=str(ds), out=str(work / f"{name}-{perceptual}"), arch=arch, modality="ct",
                      preset="demo", epochs=1000, device="cpu", perceptual=perceptual, max_val=72,
                      time_budget_min=budget_min, model_overrides=overrides)
    s = train(cfg, progress=False)
    v = s["val_metrics"]
    return {"steps": s["steps"], "psnr": v["psnr"], "psnr_std": v["psnr_std"], "ssim": v["ssim"], "mse": v["mse"],
            "history": [(h["step"], round(h["val"]["psnr"], 3)) for h in s["history"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-min", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/autopaint-bench-model"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_presets.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = hnct_slices.build(args.work / "hnct")
    paper = {a: flops_per_image(preset_config("paper", a, 2)) / 1e9 for a in ("gconv_lap", "pconv")}
    rows = {}
    for name, ov in CANDIDATES.items():
        rows[name] = speed(ov)
        print(name, json.dumps({k: round(v, 3) for k, v in rows[name].items()}), flush=True)
    for name, ov in CANDIDATES.items():
        rows[name]["quality"] = quality(ds, args.work, name, ov, args.budget_min)
        print(name, rows[name]["quality"], flush=True)
    (args.work / "model_presets.json").write_text(json.dumps(rows, indent=1))
    n_train = len(np.load(ds / "train.npz")["images"])
    lines = [
        "# Demo preset choice (measured)", "",
        f"Machine: {os.cpu_count()} CPU cores shared with the team (load average at end "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__}, {args.threads} torch threads. "
        f"Input 128x128, gconv_lap (2-channel for speed rows). Quality: each candidate trained for "
        f"{args.budget_min} min wall clock (batch 8, lr 1e-4, perceptual off) on {n_train} real healthy "
        "OpenKBP head-and-neck CT slices (bench/hnct_slices.py), validated on 72 val slices of other "
        "patients with fixed seeded holes; MSE/PSNR/SSIM on the 0-255 scale of the composite.", "",
        "| candidate | params (MB) | GFLOPs/img | train img/s (VGG off) | train img/s (random VGG) "
        "| infer img/s | steps in budget | val PSNR | val SSIM | val MSE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        q = r["quality"]
        lines.append(f"| {name} | {r['params_mb']:.1f} | {r['gflops']:.2f} | {r['train_ips_off']:.1f} | "
                     f"{r['train_ips_random']:.1f} | {r['infer_ips']:.1f} | {q['steps']} | {q['psnr']:.2f} | "
                     f"{q['ssim']:.4f} | {q['mse']:.1f} |")
    # shipped weights must stay <= 25 MB (2-channel float32 state_dict)
    best = max((k for k in rows if rows[k]["params_mb"] <= 25), key=lambda k: rows[k]["quality"]["psnr"])
    demo = PRESETS["demo"]
    lines += ["", f"Best val PSNR within the budget: **{best}**. Shipped demo preset: depth {demo.depth}, "
              f"widths {demo.base_width}->{demo.max_width}.", "",
              f"Paper preset (512 px, depth 8, widths 64->512) inference cost per image: "
              f"gconv_lap {paper['gconv_lap']:.1f} GFLOPs, pconv {paper['pconv']:.1f} GFLOPs "
              "(FlopCounterMode, FLOPs = 2 x MACs).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
