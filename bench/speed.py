"""Exact vs fast autoinpainting, side by side in one run, on full-size thorax phantoms not used in
training (the tumour cases of work/phantom-thorax-eval), end to end through ``run_pipeline``.

For each volume and mode: images inpainted (the inpainter's counter), FLOPs (images x
flops_per_image), wall time (load -> files written) split by stage (load, prepare, organ mask,
screen / grouped / search / ladder, threshold + lesions, write), the share of tumour slices whose
top-k union touches the tumour ("hit rate"), Dice vs the label at the card's single threshold and
the best sweep Dice [Dice]; then the ratios and the Dice between the two modes' masks.
All fast runs go first (their wall times are the ones the <= 60 s target is about; the machine's
load average is recorded with each), then the exact runs. ``--ablate N`` also runs fast mode on the
first N cases with each source switched off in turn (its contribution).

    .venv/bin/python bench/speed.py --cohort work/phantom-thorax-eval --n 5 [--ablate 1] \
        [--set complete_groups=false] [--no-exact]

Writes bench/results/speed.md and speed.json (with the command line and the machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.segment.engine import FAST_SOURCES
from autopaint.segment.metrics import dice
from autopaint.segment.pipeline import PipelineParams, load_inputs, run_pipeline
from autopaint.segment.types import SearchParams

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("load", "prepare", "organ_mask", "autoinpaint_screen", "autoinpaint_grouped", "autoinpaint_search",
          "autoinpaint_ladder", "threshold_lesions", "write")


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def tumour_cases(cohort: Path, n: int) -> list[str]:
    doc = json.loads((cohort / "cases.json").read_text())
    return [c["case_id"] for c in doc["cases"] if not c.get("healthy")][:n]


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        key, val = it.split("=", 1)
        try:
            out[key] = json.loads(val.lower() if val.lower() in ("true", "false") else val)
        except json.JSONDecodeError:
            out[key] = val  # a bare string, e.g. unflagged=coarse
    return out


def run_case(inp: Any, case_dir: Path, params: PipelineParams, out: Path) -> dict[str, Any]:
    """One pipeline run, load included; the mask is kept for the mode-vs-mode Dice."""
    load1 = os.getloadavg()[0]
    t0 = time.perf_counter()
    inputs = load_inputs(case_dir / "ct.nii.gz", case_dir / "pet.nii.gz", None, case_dir / "label.nii.gz",
                         suv_already=True)
    t_load = time.perf_counter() - t0
    before = inp.images_inpainted
    res = run_pipeline(inputs, params, inp, out)
    wall = time.perf_counter() - t0
    rep = res.report
    m = rep["metrics"]
    timings = {"load": t_load, **rep["timings_s"]}
    return {"images": inp.images_inpainted - before, "by_stage": rep["forward_passes"], "flops": rep["flops"],
            "wall_s": wall, "timings": {k: round(float(v), 2) for k, v in timings.items()},
            "hit_rate": m["slice_hit_rate"], "dice": m["at_threshold"]["dice"],
            "best_dice": m["sweep"]["best"]["dice"], "best_threshold": m["sweep"]["best"]["threshold"],
            "threshold": res.threshold, "mask": res.mask > 0, "load_avg_1min": load1,
            "ooi_slices": rep["ooi"]["slices"], "tumour_slices": m["tumour_slices"],
            "flagged": sum(1 for s in rep["slices"] if s.get("flagged")),
            "grown": sum(1 for s in rep["slices"] if s.get("grown")),
            "kept": sum(1 for s in rep["slices"] if s.get("kept")), "screen": rep["screen"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", type=Path, default=Path("work/phantom-thorax-eval"))
    ap.add_argument("--n", type=int, default=5, help="first n tumour cases of the cohort")
    ap.add_argument("--model", default="thorax-petct-gconvlap-128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=None, help="images per forward pass (default: the device's)")
    ap.add_argument("--set", action="append", default=[], help="SearchParams override, e.g. rescore_k=4")
    ap.add_argument("--ablate", type=int, default=0, help="ablate fast-mode sources on the first N cases")
    ap.add_argument("--no-exact", action="store_true", help="fast mode only")
    ap.add_argument("--profile", default="paper", choices=("paper", "default"),
                    help="paper: the paper's search (fast = screened sweep); default: the model card's "
                         "configuration (fast = hot spots only, exact = exhaustive sweep + hot spots)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from autopaint.model.inpainter import Inpainter

    inp = Inpainter.load(args.model, device=args.device, max_batch=args.max_batch)
    base = PipelineParams(profile=args.profile).accuracy(inp).search  # type: ignore[arg-type]
    search = replace(base, **parse_sets(args.set))
    fast_p = PipelineParams(mode="fast", search=search, write_preview=True, profile=args.profile)  # type: ignore[arg-type]
    exact_p = PipelineParams(mode="exact", search=search, write_preview=True, profile=args.profile)  # type: ignore[arg-type]
    ids = tumour_cases(args.cohort, args.n)
    rows: dict[str, dict[str, Any]] = {cid: {"case": cid} for cid in ids}
    with tempfile.TemporaryDirectory(prefix="autopaint-speed-") as tmp:
        for cid in ids:  # fast runs first: their wall times are measured on a quiet machine
            rows[cid]["fast"] = run_case(inp, args.cohort / cid, fast_p, Path(tmp) / cid / "fast")
            logging.info("%s fast: %s", cid, {k: rows[cid]["fast"][k] for k in ("images", "wall_s", "hit_rate", "dice")})
        write_report(list(rows.values()), args, inp, search)  # partial reports: exact mode takes long
        if not args.no_exact:
            for cid in ids:
                rows[cid]["exact"] = run_case(inp, args.cohort / cid, exact_p, Path(tmp) / cid / "exact")
                rows[cid]["mask_dice"] = dice(rows[cid]["fast"]["mask"], rows[cid]["exact"]["mask"])
                logging.info("%s exact: %s", cid, {k: rows[cid]["exact"][k] for k in ("images", "wall_s", "hit_rate")})
                write_report(list(rows.values()), args, inp, search)
        for cid in ids[: args.ablate]:
            rows[cid]["ablation"] = {}
            for off in sorted(FAST_SOURCES):
                r = _ablated(inp, args.cohort / cid, fast_p, frozenset(FAST_SOURCES - {off}), Path(tmp) / cid / off)
                rows[cid]["ablation"][f"without {off}"] = r
    write_report(list(rows.values()), args, inp, search)


def _ablated(inp: Any, case_dir: Path, params: PipelineParams, sources: frozenset[str], out: Path) -> dict[str, Any]:
    """Fast mode with some sources off, through the same pipeline."""
    r = run_case(inp, case_dir, replace(params, sources=tuple(sorted(sources))), out)
    return {k: r[k] for k in ("images", "wall_s", "hit_rate", "dice", "best_dice", "flagged")}


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def _mean(rows: list[dict[str, Any]], mode: str, key: str) -> float:
    vals = [r[mode][key] for r in rows if mode in r and r[mode][key] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def write_report(rows: list[dict[str, Any]], args: Any, inp: Any, search: SearchParams) -> None:
    mach = machine()
    fpi = int(inp.flops_per_image)
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    head = [f"# Exact vs fast autoinpainting, end to end ({len(rows)} full-size thorax phantoms of {args.cohort})", "",
            f"Command: `{cmd}`  ", f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']} "
            f"({mach['torch_threads']} threads), device {args.device}, max batch {inp.max_batch}.  ",
            f"Model: {inp.card.get('name')} (sha256 {inp.sha256[:12]}), {fpi / 1e9:.3f} GFLOP/image; threshold "
            f"{inp.default_threshold} (card); screen level {inp.card.get('screen_level')} (card).  ",
            f"Search: {json.dumps(search.to_dict())}", "",
            "| case | OOI sl | tumour sl | flagged (grown) | fast img | exact img | img ratio | fast TFLOP | exact TFLOP "
            "| fast s | exact s | time ratio | fast hit | exact hit | fast Dice | exact Dice | fast [Dice] | exact [Dice] "
            "| mask Dice |", "|" + "---|" * 19]
    tot = {"fi": 0, "ei": 0, "fs": 0.0, "es": 0.0}
    for r in rows:
        if "fast" not in r:
            continue
        f, e = r["fast"], r.get("exact")
        tot["fi"] += f["images"]
        tot["fs"] += f["wall_s"]
        if e:
            tot["ei"] += e["images"]
            tot["es"] += e["wall_s"]
        head.append(
            f"| {r['case']} | {f['ooi_slices']} | {f['tumour_slices']} | {f['flagged']} ({f['grown']}) | {f['images']} | "
            f"{e['images'] if e else '-'} | {_f(e['images'] / f['images'], 1) if e else '-'} | {f['flops'] / 1e12:.2f} | "
            f"{_f(e['flops'] / 1e12, 2) if e else '-'} | {f['wall_s']:.1f} | {_f(e['wall_s'], 1) if e else '-'} | "
            f"{_f(e['wall_s'] / f['wall_s'], 1) if e else '-'} | {_f(f['hit_rate'])} | {_f(e['hit_rate']) if e else '-'} | "
            f"{_f(f['dice'])} | {_f(e['dice']) if e else '-'} | {_f(f['best_dice'])} | {_f(e['best_dice']) if e else '-'} | "
            f"{_f(r.get('mask_dice'))} |")
    has_e = all("exact" in r for r in rows)
    head.append(f"| **mean** | | | | {tot['fi'] / len(rows):.0f} | {_f(tot['ei'] / len(rows), 0) if has_e else '-'} | "
                f"{_f(tot['ei'] / tot['fi'], 1) if has_e else '-'} | | | {tot['fs'] / len(rows):.1f} | "
                f"{_f(tot['es'] / len(rows), 1) if has_e else '-'} | {_f(tot['es'] / tot['fs'], 1) if has_e else '-'} | "
                f"{_f(_mean(rows, 'fast', 'hit_rate'))} | {_f(_mean(rows, 'exact', 'hit_rate'))} | "
                f"{_f(_mean(rows, 'fast', 'dice'))} | {_f(_mean(rows, 'exact', 'dice'))} | "
                f"{_f(_mean(rows, 'fast', 'best_dice'))} | {_f(_mean(rows, 'exact', 'best_dice'))} | "
                f"{_f(float(np.mean([r['mask_dice'] for r in rows])) if has_e else None)} |")
    head += ["", "Where the time goes (s, end to end; load average at the start of each run):", "",
             "| case | mode | " + " | ".join(s.replace("autoinpaint_", "") for s in STAGES) + " | total | load avg |",
             "|" + "---|" * (len(STAGES) + 4)]
    for r in rows:
        for mode in ("fast", "exact"):
            if mode in r:
                t = r[mode]["timings"]
                head.append(f"| {r['case']} | {mode} | " + " | ".join(_f(t.get(s), 1) for s in STAGES)
                            + f" | {r[mode]['wall_s']:.1f} | {r[mode]['load_avg_1min']:.2f} |")
    head += ["", "Fast images by stage: " + "; ".join(f"{r['case']}: {r['fast']['by_stage']}" for r in rows)]
    for r in rows:
        if "ablation" in r:
            head += ["", f"Ablation, {r['case']} (fast mode with one source off; full fast: {r['fast']['images']} "
                     f"images, {r['fast']['wall_s']:.1f} s, hit {_f(r['fast']['hit_rate'])}, Dice {_f(r['fast']['dice'])}):", "",
                     "| variant | images | s | hit | Dice | [Dice] | flagged |", "|---|---|---|---|---|---|---|"]
            for k, v in r["ablation"].items():
                head.append(f"| {k} | {v['images']} | {v['wall_s']:.1f} | {_f(v['hit_rate'])} | {_f(v['dice'])} | "
                            f"{_f(v['best_dice'])} | {v['flagged']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head) + "\n")
    clean = [{k: ({kk: vv for kk, vv in v.items() if kk != "mask"} if isinstance(v, dict) else v)
              for k, v in r.items()} for r in rows]
    doc = {"command": cmd, "machine": mach, "model": inp.card.get("name"), "model_sha256": inp.sha256,
           "flops_per_image": fpi, "search": search.to_dict(), "rows": clean}
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
