"""Exact vs fast autoinpainting, side by side, on full-size thorax phantoms (seeds not used in training).

For each volume: images inpainted (the inpainter's counter), FLOPs (images x flops_per_image), wall
time, the ratios, the share of tumour slices whose top-k union touches the tumour ("hit rate"),
Dice vs the label at the single threshold and the best sweep Dice, and Dice between the two modes'
masks. ``--ablate`` also runs fast mode with each source switched off in turn (its contribution).

    .venv/bin/python bench/speed.py --n 5 --seed0 900 [--model NAME] [--size full] [--ablate]

Uses the demo model (models/thorax-petct-gconvlap-128) when it exists, else a randomly initialised
demo network (timings and pass counts are real; detection numbers are then meaningless).
Writes bench/results/speed.md (and speed.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from autopaint.data.phantom import generate_case
from autopaint.imaging.organs import ooi_mask
from autopaint.imaging.preprocess import params_for, prepare_case
from autopaint.segment.engine import FAST_SOURCES, autoinpaint
from autopaint.segment.metrics import dice, segmentation_metrics, slice_hit_rate
from autopaint.segment.search import candidate_grid
from autopaint.segment.thresholds import apply_threshold, resolve_threshold, sweep
from autopaint.segment.types import Geometry, SearchParams

RESULTS = Path(__file__).resolve().parent / "results"


def load_model(name: str, device: str) -> tuple[Any, str]:
    from autopaint.model.inpainter import Inpainter

    try:
        return Inpainter.load(name, device=device), name
    except Exception as exc:  # noqa: BLE001 - any load failure falls back to the random network
        logging.warning("model %s not loadable (%s): using a random demo network", name, exc)
    import torch
    from autopaint.model.networks import build_network, preset_config

    torch.manual_seed(0)
    cfg = preset_config("demo", "gconv_lap", 2)
    ckpt = {"preprocessing": params_for("thorax", "petct", cfg.size).to_dict(), "training_summary": {}}
    inp = Inpainter(build_network(cfg), cfg, ckpt, {"modality": "petct", "name": "random-demo"},
                    "random", torch.device(device if device != "auto" else "cpu"))
    return inp, "random-demo (untrained)"


def run_mode(inp: Any, images: np.ndarray, ooi_m: np.ndarray, case: Any, ooi_ref: np.ndarray,
             label_ref: np.ndarray, label_m: np.ndarray, mode: str, sources: frozenset[str] | None,
             screen_level: float | None) -> dict[str, Any]:
    before = inp.images_inpainted
    t0 = time.perf_counter()
    res = autoinpaint(images, ooi_m, inp, mode=mode, sources=sources, screen_level=screen_level)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    resid = np.clip(case.to_reference(res.residual, order=1), 0, 1)
    resid[~ooi_ref] = 0
    thr, _ = resolve_threshold(None, inp.default_threshold)
    mask = apply_threshold(resid, thr) > 0
    return {"images": inp.images_inpainted - before, "by_stage": res.counters.images, "flops": res.flops,
            "wall_s": wall, "hit_rate": slice_hit_rate(res.unions, label_m, ooi_m.any(axis=(1, 2))),
            "dice": segmentation_metrics(mask, label_ref)["dice"], "best_dice": sweep(resid, label_ref)["best"]["dice"],
            "threshold": thr, "mask": mask, "flagged": sum(s["flagged"] for s in res.slices),
            "ooi_slices": len(res.slices)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=900)
    ap.add_argument("--size", default="full")
    ap.add_argument("--model", default="thorax-petct-gconvlap-128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--no-exact", action="store_true", help="fast mode only (timing)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    inp, model_name = load_model(args.model, args.device)
    level = inp.card.get("screen_level") if inp.card else None
    rows = []
    for seed in range(args.seed0, args.seed0 + args.n):
        ph = generate_case("thorax", seed=seed, size=args.size)
        t0 = time.perf_counter()
        pp = params_for("thorax", inp.modality, inp.size)
        case = prepare_case(ph.ct, ph.pet, replace(pp))
        ooi_ref = np.asarray(ooi_mask(ph.ct, "thorax"), bool)
        ooi_m = case.mask_to_model(ooi_ref)
        label_ref = ph.label.data > 0
        label_m = case.mask_to_model(label_ref)
        prep = time.perf_counter() - t0
        common = (inp, case.images, ooi_m, case, ooi_ref, label_ref, label_m)
        geom = Geometry.for_size(SearchParams(), inp.size)
        n_ooi = int(ooi_m.any(axis=(1, 2)).sum())
        # exact mode's pass count is fixed by the geometry: every candidate circle + every ladder rung
        exact_count = sum(len(candidate_grid(o, geom.stride)[0]) for o in ooi_m if o.any()) \
            + n_ooi * (1 + len(geom.ladder_widths))
        row: dict[str, Any] = {"seed": seed, "prep_s": prep, "ct_shape": list(ph.ct.shape),
                               "tumour_slices": int(label_m.any(axis=(1, 2)).sum()),
                               "exact_images_by_geometry": exact_count}
        row["fast"] = run_mode(*common, "fast", None, level)
        if not args.no_exact:
            row["exact"] = run_mode(*common, "exact", None, None)
            row["mask_dice"] = dice(row["fast"]["mask"], row["exact"]["mask"])
        if args.ablate:
            row["ablation"] = {}
            for off in sorted(FAST_SOURCES):
                r = run_mode(*common, "fast", FAST_SOURCES - {off}, level)
                row["ablation"][f"without {off}"] = {k: r[k] for k in ("images", "wall_s", "hit_rate", "dice")}
        logging.info("seed %d: %s", seed, {m: {k: row[m][k] for k in ("images", "wall_s")}
                                           for m in ("fast", "exact") if m in row})
        rows.append(row)
    write_report(rows, model_name, args, inp.flops_per_image, level)


def _f(x: float) -> str:
    return "nan" if x != x else f"{x:.3f}"


def write_report(rows: list[dict[str, Any]], model_name: str, args: Any, fpi: int, level: Any) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Exact vs fast autoinpainting ({args.size} thorax phantoms, seeds {args.seed0}..{args.seed0 + args.n - 1})",
             "", f"Model: {model_name}; {fpi / 1e9:.3f} GFLOP/image; device {args.device}; screen level: "
             f"{level if level is not None else 'volume fallback (median + 6 MAD)'}.", "",
             "| seed | OOI slices | tumour slices | flagged | fast images | exact images | ratio | fast s | exact s | "
             "fast hit | exact hit | fast Dice | exact Dice | fast best | exact best | mask Dice |",
             "|" + "---|" * 16]
    for r in rows:
        f, e = r["fast"], r.get("exact")
        ratio = e["images"] / max(f["images"], 1) if e else float("nan")
        lines.append(f"| {r['seed']} | {f['ooi_slices']} | {r['tumour_slices']} | {f['flagged']} | {f['images']} | "
                     f"{e['images'] if e else '-'} | {_f(ratio)} | {f['wall_s']:.1f} | {e['wall_s'] if e else float('nan'):.1f} | "
                     f"{_f(f['hit_rate'])} | {_f(e['hit_rate']) if e else '-'} | {_f(f['dice'])} | {_f(e['dice']) if e else '-'} | "
                     f"{_f(f['best_dice'])} | {_f(e['best_dice']) if e else '-'} | {_f(r.get('mask_dice', float('nan')))} |")
    lines += ["", "Exact images from the geometry (circles + ladder rungs, no network run): "
              + "; ".join(f"seed {r['seed']}: {r['exact_images_by_geometry']} "
                          f"({r['exact_images_by_geometry'] / max(r['fast']['images'], 1):.1f}x fast)" for r in rows)]
    lines += ["", "Fast images by stage: " + "; ".join(f"seed {r['seed']}: {r['fast']['by_stage']}" for r in rows)]
    for r in rows:
        if "ablation" in r:
            lines += ["", f"Ablation, seed {r['seed']} (fast with one source off): " + json.dumps(
                {k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                 for k, v in r["ablation"].items()})]
    args.out.write_text("\n".join(lines) + "\n")
    clean = [{k: ({kk: vv for kk, vv in v.items() if kk != "mask"} if isinstance(v, dict) else v)
              for k, v in r.items()} for r in rows]
    args.out.with_suffix(".json").write_text(json.dumps(clean, indent=2, default=float) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
