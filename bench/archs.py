"""Equal-budget inpainting comparison of the paper's three networks (paper Tables 1-2, issue #4).

For each cohort the shipped GconvLap model's recorded training configuration (its checkpoint's
``training_summary.train_config``: dataset, epochs, phase-2 epoch, batch, learning rates, seed,
perceptual setting) is THE budget; its Gconv and Pconv siblings (``models/<cohort>-petct-gconv-128``,
``models/<cohort>-petct-pconv-128``) are trained with exactly that configuration, only ``arch``
changed, so all three saw the same images for the same number of steps. ``--train`` trains a missing
sibling here (about 25-30 min each on one core of this CPU); the shipped siblings make the table
reproducible without it.

Evaluation (the same code as bench/quality.py's Tables 1-2, ``bench/quality_inpaint.py``): the
held-out test patients' healthy slices of the same dataset, one fixed seeded irregular hole per image
(``model.holes.fixed_masks``), MSE / PSNR / SSIM on the 0-255 scale per channel (CT, PET, both),
scikit-image biharmonic inpainting on the same holes, Wilcoxon signed-rank p-values (paired by image)
against GconvLap.

    .venv/bin/python bench/archs.py [--cohort thorax --cohort headneck --cohort ibsi-sts] [--train] [--max-images 400]

Needs the datasets the shipped models were trained on (README, "Shipped models"): work/ds-thorax-petct-128,
work/ds-headneck-petct-128 and work/ds-ibsi-petct-128. Writes bench/results/archs.md and archs.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench.quality_inpaint import SHIPPED, inpainting_quality, shipped_name, test_holes
from bench.quality_report import inpainting_table

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
ARCH_NAME = {"gconv_lap": "GconvLap", "gconv": "Gconv", "pconv": "Pconv"}
HOLE_SEED = 2024

log = logging.getLogger("bench.archs")


def budget_of(model_dir: Path) -> dict[str, Any]:
    """The training configuration recorded in a model's checkpoint (the equal budget), its dataset
    path made absolute (checkpoints record it as given, relative to the repository root)."""
    from autopaint.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model_dir / "model.pt")
    cfg = dict(ckpt["training_summary"].get("train_config") or {})
    if not cfg:
        raise SystemExit(f"{model_dir} records no train_config: cannot reproduce its budget")
    dataset = Path(cfg["dataset"])
    cfg["dataset"] = str(dataset if dataset.is_absolute() else REPO / dataset)
    return cfg


def train_sibling(budget: dict[str, Any], arch: str, out: Path, threads: int) -> None:
    """Train ``arch`` with the reference model's configuration (dataset, epochs, schedule, seed)."""
    import torch

    from autopaint.model.train import TrainConfig, train

    torch.set_num_threads(threads)
    fields = {**budget, "arch": arch, "out": str(out), "resume": None}
    # the reference's wall-clock cap must not cut a slower architecture short: epochs are the budget
    fields["time_budget_min"] = None
    valid = set(TrainConfig.__dataclass_fields__)
    train(TrainConfig(**{k: v for k, v in fields.items() if k in valid}), progress=False)


def train_throughput(archs: list[str], steps: int = 8, rounds: int = 3) -> dict[str, dict[int, float]]:
    """Training images/s of the demo preset per architecture (batch 8, PET/CT, the paper loss without
    perceptual terms), measured side by side: rounds alternate the architectures, best round kept,
    with 1 thread and with all cores."""
    import numpy as np
    import torch

    from autopaint.model.holes import fixed_masks
    from autopaint.model.losses import InpaintingLoss, LossWeights
    from autopaint.model.networks import build_network, preset_config
    from autopaint.model.train import train_step

    cpu = torch.device("cpu")
    x = torch.from_numpy(np.random.default_rng(0).random((8, 2, 128, 128), dtype=np.float32))
    m = torch.from_numpy(fixed_masks(8, 128, 1)).float()
    out: dict[str, dict[int, float]] = {a: {} for a in archs}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        nets = {}
        for a in archs:
            torch.manual_seed(0)
            net = build_network(preset_config("demo", a, 2))
            weights = LossWeights.for_arch(a)
            nets[a] = (net, InpaintingLoss(weights), torch.optim.Adam(net.parameters(), 1e-4))
            train_step(*nets[a], x, m, cpu)  # warm-up
        for _ in range(rounds):
            for a in archs:
                t0 = time.perf_counter()
                for _ in range(steps):
                    train_step(*nets[a], x, m, cpu)
                out[a][threads] = max(out[a].get(threads, 0.0), steps * 8 / (time.perf_counter() - t0))
    return out


def summary_of(model_dir: Path) -> dict[str, Any]:
    from autopaint.model.inpainter import Inpainter

    inp = Inpainter.load(model_dir, device="cpu")
    ts = inp.training_summary
    cfg = ts.get("train_config") or {}
    steps = int(ts.get("steps") or 0)
    wall = float(ts.get("wall_time_s") or 0.0)
    return {"path": str(model_dir), "arch": inp.arch, "steps": steps, "epochs": ts.get("epochs_completed"),
            "epochs_planned": ts.get("epochs_planned"),
            "batch_size": cfg.get("batch_size"), "seed": ts.get("seed"), "dataset": cfg.get("dataset"),
            "train_s": wall, "train_images_per_s": steps * int(cfg.get("batch_size") or 8) / wall if wall else None,
            "val": ts.get("val_metrics"), "gflop_per_image": inp.flops_per_image / 1e9,
            "size_mb": (model_dir / "model.pt").stat().st_size / 1e6, "sha256": inp.sha256}


def run_cohort(cohort: str, args: argparse.Namespace) -> dict[str, Any]:
    from autopaint.data.datasets import load_split
    from autopaint.paths import models_dir

    ref_dir = models_dir() / SHIPPED[cohort]
    budget = budget_of(ref_dir)
    dataset = Path(budget["dataset"])
    if not (dataset / "test.npz").is_file():
        raise SystemExit(f"{dataset} is missing: build it first (README, 'Shipped models')")
    dirs = {"gconv_lap": ref_dir}
    for arch in ("gconv", "pconv"):
        d = models_dir() / str(shipped_name(cohort, arch))
        if not (d / "model.pt").is_file():
            if not args.train:
                raise SystemExit(f"{d} is missing: run with --train (trains it with {SHIPPED[cohort]}'s budget)")
            log.info("training %s with the budget of %s", d.name, ref_dir.name)
            train_sibling(budget, arch, d, args.threads)
        dirs[arch] = d
    models = {ARCH_NAME[a]: summary_of(d) for a, d in dirs.items()}
    test = load_split(dataset, "test")
    images, masks = test_holes(test.images, args.max_images, HOLE_SEED)
    t0 = time.perf_counter()
    quality = inpainting_quality({ARCH_NAME[a]: str(d) for a, d in dirs.items()}, images, masks)
    log.info("%s: evaluated %d test images in %.0f s", cohort, len(images), time.perf_counter() - t0)
    return {"reference": SHIPPED[cohort], "budget": budget, "dataset": str(dataset), "models": models,
            "n_images": int(len(images)), "n_test_patients": int(len(set(test.case_ids[:].tolist()))),
            "test_patients": sorted(set(test.case_ids.tolist())), "quality": quality}


def _f(x: Any, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render(results: dict[str, Any], cmd: str) -> str:
    lines = ["# Equal-budget inpainting: GconvLap vs Gconv vs Pconv vs biharmonic (paper Tables 1-2)", "",
             f"Command: `{cmd}`  ",
             "Each Gconv / Pconv model was trained with the shipped GconvLap model's recorded configuration "
             "(same dataset, epochs, phase-2 epoch, batch, learning rates, seed; only the architecture differs). "
             f"Test: the held-out test patients' healthy slices, one fixed irregular hole per image (seed {HOLE_SEED}); "
             "values on the 0-255 scale, mean±std over images; p: two-sided Wilcoxon signed-rank vs GconvLap, "
             "paired by image.", ""]
    for cohort, r in results.items():
        b = r["budget"]
        lines += [f"## {cohort}: {r['n_images']} healthy test slices of {r['n_test_patients']} patients "
                  f"({', '.join(r['test_patients'])})", "",
                  f"Budget ({r['reference']}): {b.get('epochs')} epochs, phase 2 from epoch {b.get('phase2_epoch')}, "
                  f"batch {b.get('batch_size')}, lr {b.get('lr')} / {b.get('lr_phase2')}, seed {b.get('seed')}, "
                  f"perceptual {b.get('perceptual')}, dataset `{r['dataset']}`.", "",
                  "| model | epochs planned | kept checkpoint: epoch / steps | train min (its run) | GFLOP/image "
                  "| size MB | val PSNR | sha256 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in r["models"].items():
            val = (m.get("val") or {}).get("psnr")
            lines.append(f"| {name} | {m['epochs_planned']} | {m['epochs']} / {m['steps']} | {_f(m['train_s'] / 60)} | "
                         f"{m['gflop_per_image']:.3f} | {m['size_mb']:.1f} | {_f(val, 2)} | {m['sha256'][:12]} |")
        lines += ["", "The kept checkpoint is the best validation epoch of the planned ones. Training wall times "
                  "come from each model's own run, under different loads (README, 'Shipped models'): compare "
                  "speed in the throughput table below.", ""]
        q = {k: v for k, v in r["quality"].items() if not k.startswith("_")}
        secs = r["quality"]["_seconds"]
        lines += ["", inpainting_table(q), "",
                  "Inference time for the whole test set (s, CPU): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", action="append", choices=sorted(SHIPPED), default=None)
    ap.add_argument("--train", action="store_true", help="train missing Gconv/Pconv siblings")
    ap.add_argument("--threads", type=int, default=1, help="torch threads when training")
    ap.add_argument("--only-train", choices=["gconv", "pconv"], default=None,
                    help="train this sibling of each --cohort (if missing) and exit: run one process per "
                         "architecture to use several cores")
    ap.add_argument("--max-images", type=int, default=400, help="evenly spaced test images per cohort")
    ap.add_argument("--out", type=Path, default=RESULTS / "archs.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cohorts = args.cohort or sorted(SHIPPED, reverse=True)
    if args.only_train:
        from autopaint.paths import models_dir

        for c in cohorts:
            d = models_dir() / str(shipped_name(c, args.only_train))
            if not (d / "model.pt").is_file():
                train_sibling(budget_of(models_dir() / SHIPPED[c]), args.only_train, d, args.threads)
        return
    results = {c: run_cohort(c, args) for c in cohorts}
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    load = os.getloadavg()[0]
    speed = train_throughput(list(ARCH_NAME))
    text = render(results, cmd)
    text += ("\n## Training throughput, demo preset (128², batch 8, PET/CT), this CPU, side by side\n\n"
             f"Images/s, best of 3 alternating rounds of 8 steps; load average before: {load:.2f}.\n\n"
             "| model | 1 thread | all cores |\n|---|---|---|\n"
             + "".join(f"| {ARCH_NAME[a]} | {v.get(1, 0):.1f} | {v.get(max(v), 0):.1f} ({max(v)} threads) |\n"
                       for a, v in speed.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    doc = {"command": cmd, "load_avg": os.getloadavg(), "train_images_per_s": speed, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
