"""Held-out evaluation of a shipped model: every case of a cohort (or of a dataset split) through
``run_pipeline``; Dice at the card's single threshold and [Dice] (per-case best of the sweep
0 ... 0.8 step 0.02), mean +- std over the tumour cases, and the false-positive volume (ml) on the
healthy cases (every predicted voxel is a false positive there) and outside the label on tumour cases.

    .venv/bin/python bench/eval_demo.py --cohort work/phantom-thorax-eval              # demo model
    .venv/bin/python bench/eval_demo.py --model ibsi-petct-gconvlap-128 --cohort /work/shared/data/ibsi-sts \
        --split-of work/ds-ibsi-petct-128 --split test --out bench/results/eval_ibsi.md

Writes the markdown report (and a .json beside it) with the command line and the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.data.cohorts import discover, load_case
from autopaint.segment.pipeline import PipelineInputs, PipelineParams, run_pipeline

RESULTS = Path(__file__).resolve().parent / "results"


def case_ids(cohort: Path, split_of: Path | None, split: str) -> list[str]:
    """All cohort cases, or those of ``split`` in a dataset manifest (``split_of/manifest.json``)."""
    ids = [r.case_id for r in discover(cohort)]
    if split_of is None:
        return ids
    man = json.loads((split_of / "manifest.json").read_text())
    keep = {c["case_id"] for c in man["cases"] if c.get("split") == split}
    return [c for c in ids if c in keep]


def evaluate_case(inp: Any, ref: Any, params: PipelineParams, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    c = load_case(ref)
    inputs = PipelineInputs.from_case(c)
    res = run_pipeline(inputs, params, inp, out)
    wall = time.perf_counter() - t0
    rep = res.report
    assert c.label is not None and c.ct is not None
    label = np.asarray(c.label.data) > 0  # on the CT grid = the reference grid
    pred = res.mask > 0
    ml = c.ct.voxel_volume_ml
    m = rep["metrics"]
    healthy = not label.any()
    return {"case": c.case_id, "healthy": healthy, "dice": None if healthy else m["at_threshold"]["dice"],
            "best_dice": None if healthy else m["sweep"]["best"]["dice"],
            "best_threshold": None if healthy else m["sweep"]["best"]["threshold"],
            "hit_rate": None if healthy else m["slice_hit_rate"],
            "tumour_ml": float(label.sum() * ml), "pred_ml": float(pred.sum() * ml),
            "fp_ml": float((pred & ~label).sum() * ml), "lesions": len(res.lesions),
            "images": rep["forward_passes"]["total"], "wall_s": wall, "threshold": res.threshold}


def _ms(vals: list[float]) -> str:
    if not vals:
        return "-"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="thorax-petct-gconvlap-128")
    ap.add_argument("--cohort", type=Path, default=Path("work/phantom-thorax-eval"))
    ap.add_argument("--split-of", type=Path, default=None, help="dataset dir whose manifest split selects cases")
    ap.add_argument("--split", default="test")
    ap.add_argument("--mode", default="fast", choices=("fast", "exact"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "eval_demo.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from autopaint.model.inpainter import Inpainter

    inp = Inpainter.load(args.model, device=args.device)
    refs = {r.case_id: r for r in discover(args.cohort)}
    ids = case_ids(args.cohort, args.split_of, args.split)
    params = PipelineParams(mode=args.mode, write_preview=False)  # type: ignore[arg-type]
    rows = []
    with tempfile.TemporaryDirectory(prefix="autopaint-eval-") as tmp:
        for cid in ids:
            rows.append(evaluate_case(inp, refs[cid], params, Path(tmp) / cid))
            logging.info("%s: %s", cid, rows[-1])
    write_report(rows, args, inp)


def write_report(rows: list[dict[str, Any]], args: Any, inp: Any) -> None:
    tum = [r for r in rows if not r["healthy"]]
    hea = [r for r in rows if r["healthy"]]
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    cal = inp.card.get("threshold_calibration") or {}
    lines = [f"# Held-out evaluation: {inp.card.get('name')} on {args.cohort}"
             + (f" ({args.split} split of {args.split_of})" if args.split_of else ""), "",
             f"Command: `{cmd}`  ",
             f"Model sha256 {inp.sha256[:12]}; mode {args.mode}; single threshold {inp.default_threshold} "
             f"(card, calibrated on {cal.get('cases')} in {cal.get('mode')} mode); screen level "
             f"{inp.card.get('screen_level')}.", "",
             f"**Tumour cases ({len(tum)}): Dice {_ms([r['dice'] for r in tum])}, [Dice] "
             f"{_ms([r['best_dice'] for r in tum])}, slice hit rate {_ms([r['hit_rate'] for r in tum])}.**  ",
             f"**Healthy cases ({len(hea)}): false-positive volume {_ms([r['fp_ml'] for r in hea])} ml "
             f"(max {max((r['fp_ml'] for r in hea), default=float('nan')):.2f} ml).**  ",
             f"Tumour cases: false-positive volume outside the label {_ms([r['fp_ml'] for r in tum])} ml.", "",
             "| case | healthy | tumour ml | pred ml | FP ml | Dice | [Dice] @ t | hit rate | lesions | images | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = "-" if r["healthy"] else f"{r['dice']:.3f}"
        b = "-" if r["healthy"] else f"{r['best_dice']:.3f} @ {r['best_threshold']:.2f}"
        h = "-" if r["healthy"] else f"{r['hit_rate']:.2f}"
        lines.append(f"| {r['case']} | {'yes' if r['healthy'] else 'no'} | {r['tumour_ml']:.1f} | {r['pred_ml']:.1f} | "
                     f"{r['fp_ml']:.2f} | {d} | {b} | {h} | {r['lesions']} | {r['images']} | {r['wall_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": cmd, "model": inp.card.get("name"), "model_sha256": inp.sha256, "mode": args.mode,
         "threshold": inp.default_threshold, "rows": rows}, indent=2) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
