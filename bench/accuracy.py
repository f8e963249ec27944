"""Accuracy of autopaint against the SUV-threshold baselines, with the ablation of issue #11.

    # 1. choose every threshold / level on VALIDATION patients only, write them to the model card
    .venv/bin/python bench/accuracy.py calibrate --model thorax-petct-gconvlap-128 \
        --cohort work/cohorts/thorax-val --write
    # 1b. the dAE / VAE baselines (bench/accuracy_uad.py): trained on the healthy slices of a TRAINING
    #     phantom cohort (generated when missing), thresholds chosen on the validation patients
    .venv/bin/python bench/accuracy.py calibrate-uad --model thorax-petct-gconvlap-128 \
        --cohort work/cohorts/thorax-val --train-cohort work/cohorts/thorax-train --uad-seconds 180
    # 2. evaluate on HELD-OUT patients (never trained or tuned on): tables + Wilcoxon + per-case rows
    #    (+ rows dAE and VAE when work/uad/<model> exists, or --uad DIR)
    .venv/bin/python bench/accuracy.py evaluate --model thorax-petct-gconvlap-128 \
        --cohort work/cohorts/thorax-test --exact 5 --out bench/results/accuracy_thorax.md

Ablation ladder (each row adds one part to the row above): ``paper`` (the paper's organ-wide sweep,
residual threshold = the card's ``default_threshold``) -> ``hotspot`` (circles seeded on PET hot spots,
|residual| of both channels) -> ``+hyper`` (PET excess only: max(scan - repaint, 0)) -> ``+gating``
(a 3-D hot spot counts only when its lesion score exceeds a level set on the healthy hot spots of
validation patients for a false-positive budget of 0, 0.1, 0.25, 0.5 or 1 per patient; the score is its
best slice's mean residual (scope "lesion") or the peak residual of the region joining hot fragments
(scope "region"); the scope and budget with the best validation Dice win) -> ``+coverage`` (unions grown and
re-inpainted while their border stays hot, <= 2 passes) -> ``+delineation`` (background-corrected
fraction of the lesion's own SUVmax, optionally without aerated-lung voxels) -> ``default``
(+ 3-D consolidation: components under a minimum volume dropped, and lesions whose peak stands less
than a minimum contrast above their local background dropped). Residual-threshold rows get their
threshold from the validation Dice curves; the delineation fraction, CT rule, minimum volume and
minimum contrast are chosen on the validation patients too, and the model card's default becomes the row with the best
validation Dice (``calibration.chosen``; the ``default`` row of the tables is that configuration).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.segment.calibrate import choose_threshold
from autopaint.segment.delineate import DelineationParams
from autopaint.segment.pipeline import PipelineInputs, PipelineParams, hot_spots
from autopaint.segment.profile import HotspotGate
from autopaint.segment.thresholds import sweep_thresholds
from autopaint.segment.types import SearchParams
from bench.accuracy_cases import (
    Prepared,
    baselines,
    cohort_command,
    iter_cases,
    lesion_scores,
    prepare,
    run_config,
)
from bench.accuracy_report import write_report

log = logging.getLogger("bench.accuracy")
TS = sweep_thresholds()
FP_BUDGETS = (0.0, 0.1, 0.25, 0.5, 1.0)  # false-positive hot spots per validation patient allowed through the gate
PROBE = DelineationParams(fraction=0.3, solid_hu=-500.0)  # fixed delineation while the budget is chosen
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
SOLID = (None, -500.0)
DET_T = (0.02, 0.1)
MIN_ML = (0.0, 0.1, 0.3, 0.5, 1.0)
MIN_CONTRAST = (0.0, 4.0, 5.0, 6.0, 7.0)  # lesion peak / local background SUV below which it is dropped
HOT = HotspotGate(k=0.0, floor_suv=2.0)
NO_DELINEATION = DelineationParams(method="residual")  # the thresholded detection as it is
GATE_SCOPES = ("lesion", "region")  # how a hot spot is scored for the gate (segment.guided)


def engine_rows(level: float | None, scope: str = "lesion") -> dict[str, SearchParams]:
    """The engine configurations of the ablation ladder (search only); ``scope``: the gate's."""
    hot = SearchParams(candidates="hotspot")
    hyper = replace(hot, sign="hyper", channel_weights=(0.0, 1.0), combine="max", gate_scope=scope)  # type: ignore[arg-type]
    rows = {"hotspot": hot, "+hyper": hyper}
    if level is not None:
        rows["+gating"] = replace(hyper, gate_level=level)
        rows["+coverage"] = replace(hyper, gate_level=level, coverage_passes=2)
    return rows


def gate_levels(cases: list[Prepared], inp: Any, scope: str) -> tuple[dict[float, float], int, int]:
    """Gate level per false-positive budget for ``scope``, from the lesion scores of the ungated
    engine (with coverage, as the gated one runs) on the validation patients' 3-D hot spots that
    touch no tumour; also (healthy, tumour) hot-spot counts."""
    healthy: list[float] = []
    tumour: list[float] = []
    ungated = replace(engine_rows(None, scope)["+hyper"], coverage_passes=2)
    for p in cases:
        _, eng, _ = run_config(p, _params(ungated, 0.0), inp, curve_on=None)
        _, hot_model, _, _ = hot_spots(p.case, p.ooi, _params(ungated, 0.0).accuracy(inp))
        for s, is_t in lesion_scores(eng, hot_model, p.label_model):  # type: ignore[arg-type]
            (tumour if is_t else healthy).append(s)
    hs = sorted(healthy, reverse=True)
    levels = {b: float(hs[int(np.floor(b * len(cases)))]) if len(hs) > int(np.floor(b * len(cases))) else 0.0
              for b in FP_BUDGETS}
    return levels, len(hs), len(tumour)


def load(cohort: Path, ids: list[str] | None) -> list[tuple[str, PipelineInputs]]:
    return list(iter_cases(cohort, ids))


def _params(search: SearchParams, threshold: float, delin: DelineationParams | None = None,
            mode: str = "fast") -> PipelineParams:
    return PipelineParams(mode=mode, threshold=threshold, search=search, delineation=delin,  # type: ignore[arg-type]
                          hotspot=HOT, write_preview=False)


def _mean_dice(recs: list[dict[str, Any]], all_patients: bool = False) -> float:
    vals = []
    for r in recs:
        if r["dice"] is not None:
            vals.append(r["dice"])
        elif all_patients:
            vals.append(1.0 if r["pred_volume_ml"] == 0 else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


def calibrate(args: argparse.Namespace) -> None:
    from autopaint.model.inpainter import Inpainter

    inp = Inpainter.load(args.model, device=args.device)
    cases = [prepare(cid, x, inp, args.preset) for cid, x in load(args.cohort, args.ids)]
    log.info("%d validation patients (%d with tumour)", len(cases), sum(not p.healthy for p in cases))
    # gate scope x false-positive budget: levels from the healthy hot spots, the best validation Dice wins
    by_gate: dict[tuple[str, float], list[dict[str, Any]]] = {}
    levels: dict[str, dict[float, float]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for scope in GATE_SCOPES:
        levels[scope], n_h, n_t = gate_levels(cases, inp, scope)
        counts[scope] = (n_h, n_t)
        for b, lev in levels[scope].items():
            for p in cases:
                rec, _, _ = run_config(p, _params(engine_rows(lev, scope)["+coverage"], 0.05, PROBE), inp,
                                       curve_on=None)
                by_gate.setdefault((scope, b), []).append(rec)
    scope, budget = max(by_gate, key=lambda g: (_mean_dice(by_gate[g], all_patients=True), -g[1]))
    level = levels[scope][budget]
    log.info("gate %s level %.4f for %.2f FP hot spots / patient (levels %s; healthy/tumour hot spots %s)",
             scope, level, budget, levels, counts)
    rows = engine_rows(level, scope)
    engines_cov = {p.case_id: run_config(p, _params(rows["+coverage"], 0.05), inp, curve_on=None)[1] for p in cases}
    curves: dict[str, dict[str, list[float]]] = {name: {} for name in rows}
    for p in cases:
        for name, search in rows.items():
            rec, _, _ = run_config(p, _params(search, 0.0), inp,
                                   engine=engines_cov[p.case_id] if name == "+coverage" else None)
            if "curve" in rec:
                curves[name][p.case_id] = rec["curve"]
    thresholds: dict[str, float] = {}
    val_dice: dict[str, float] = {}
    for name, c in curves.items():
        t_row, mean = choose_threshold(c, TS)
        thresholds[name], val_dice[name] = t_row, float(mean.max())
    # delineation on the +coverage engine: fraction x CT rule x detection threshold, then min volume
    grid: dict[tuple[float, float | None, float], list[dict[str, Any]]] = {}
    for p in cases:
        for f in FRACTIONS:
            for solid in SOLID:
                for t in DET_T:
                    d = DelineationParams(fraction=f, solid_hu=solid)
                    rec, _, _ = run_config(p, _params(rows["+coverage"], t, d), inp, engine=engines_cov[p.case_id],
                                           curve_on=None)
                    grid.setdefault((f, solid, t), []).append(rec)
    best = max(grid, key=lambda k: (_mean_dice(grid[k]), -k[2]))
    f, solid, t = best
    mins: dict[float, list[dict[str, Any]]] = {}
    for p in cases:
        for m in MIN_ML:
            d = DelineationParams(fraction=f, solid_hu=solid, min_ml=m)
            rec, _, _ = run_config(p, _params(rows["+coverage"], t, d), inp, engine=engines_cov[p.case_id], curve_on=None)
            mins.setdefault(m, []).append(rec)
    min_ml = max(MIN_ML, key=lambda m: (_mean_dice(mins[m], all_patients=True), -m))
    contrasts: dict[float, list[dict[str, Any]]] = {}
    for p in cases:
        for c in MIN_CONTRAST:
            d = DelineationParams(fraction=f, solid_hu=solid, min_ml=min_ml, min_contrast=c)
            rec, _, _ = run_config(p, _params(rows["+coverage"], t, d), inp, engine=engines_cov[p.case_id], curve_on=None)
            contrasts.setdefault(c, []).append(rec)
    min_contrast = max(MIN_CONTRAST, key=lambda c: (_mean_dice(contrasts[c], all_patients=True), -c))
    delin = DelineationParams(fraction=f, solid_hu=solid)
    val_dice["+delineation"] = _mean_dice(grid[best])
    val_dice["default"] = _mean_dice(contrasts[min_contrast])
    # the product's default is the ladder row with the best validation Dice (ties: the later row)
    order = [*rows, "+delineation", "default"]
    chosen = max(order, key=lambda n: (round(val_dice[n], 6), order.index(n)))
    if chosen in rows:
        default = {"search": rows[chosen].to_dict(), "delineation": None, "threshold": thresholds[chosen]}
    else:
        d_chosen = replace(delin, min_ml=min_ml, min_contrast=min_contrast) if chosen == "default" else delin
        default = {"search": rows["+coverage"].to_dict(), "delineation": d_chosen.to_dict(), "threshold": t}
    cal = {
        "cohort": str(args.cohort), "cases": [p.case_id for p in cases], "command": _command(),
        "fp_budget_per_patient": budget, "gate_level": level, "gate_scope": scope,
        "gate_levels_by_budget": {sc: {str(b): v for b, v in lv.items()} for sc, lv in levels.items()},
        "val_dice_by_gate": {f"{sc}|{b}": _mean_dice(v, all_patients=True) for (sc, b), v in by_gate.items()},
        "healthy_hot_spots": counts[scope][0], "tumour_hot_spots": counts[scope][1],
        "thresholds": thresholds,
        "delineation_grid": {f"{k[0]}|{k[1]}|{k[2]}": _mean_dice(v) for k, v in grid.items()},
        "min_ml_grid": {str(m): _mean_dice(v, all_patients=True) for m, v in mins.items()},
        "min_contrast_grid": {str(c): _mean_dice(v, all_patients=True) for c, v in contrasts.items()},
        "ablation": {
            **{name: {"search": s.to_dict(), "delineation": None, "threshold": thresholds[name]}
               for name, s in rows.items()},
            "+delineation": {"search": rows["+coverage"].to_dict(), "delineation": delin.to_dict(), "threshold": t},
        },
    }
    cal["val_dice"] = val_dice
    cal["chosen"] = chosen
    default = {**default, "hotspot": HOT.to_dict(), "calibration": cal}
    print(json.dumps({k: v for k, v in cal.items() if k not in ("delineation_grid",)}, indent=1))
    print(f"default = {chosen} (val Dice {val_dice[chosen]:.3f}; per row {val_dice}); delineation: fraction {f}, "
          f"solid_hu {solid}, detection threshold {t}, min_ml {min_ml}, min_contrast {min_contrast}")
    if args.write:
        from autopaint.commands.segment import _update_card

        print(f"wrote {_update_card(inp, accuracy=default)}")


def _command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def calibrate_uad(args: argparse.Namespace) -> None:
    """Train the dAE / VAE baselines and choose their thresholds on the validation cohort (accuracy_uad)."""
    from autopaint.model.inpainter import Inpainter
    from bench.accuracy_uad import TrainCohort, default_dir
    from bench.accuracy_uad import calibrate_uad as run

    if args.train_cohort is None:
        raise SystemExit("calibrate-uad needs --train-cohort (a phantom folder; generated when missing)")
    inp = Inpainter.load(args.model, device=args.device)
    out = args.uad or default_dir(str(inp.card.get("name") or args.model))
    kind = json.loads((args.cohort / "cases.json").read_text())["kind"] if (args.cohort / "cases.json").is_file() \
        else "thorax"
    train = TrainCohort(args.train_cohort, kind=kind, n=args.train_n, seed=args.train_seed,
                        healthy_fraction=args.train_healthy_fraction)
    meta = run(inp, iter_cases(args.cohort, args.ids), args.cohort, train, out, seconds=args.uad_seconds,
               width=args.uad_width, device=args.device, preset=args.preset, command=_command())
    print(json.dumps({k: v for k, v in meta.items() if k not in ("per_case", "mean_dice_per_threshold", "train_cases")},
                     indent=1))
    print(f"wrote {out}: thresholds {meta['thresholds']}, validation Dice {meta['val_dice']}")


def evaluate(args: argparse.Namespace) -> None:
    from autopaint.data.cohorts import discover
    from autopaint.model.inpainter import Inpainter
    from bench.accuracy_uad import UadRows, resolve

    inp = Inpainter.load(args.model, device=args.device)
    acc = (inp.card or {}).get("accuracy")
    if not acc:
        raise SystemExit(f"{args.model}: no accuracy calibration on the card (run `calibrate --write` first)")
    uad_dir = None if args.no_uad else resolve(args.uad, str(inp.card.get("name") or args.model))
    uad = None if uad_dir is None else UadRows.load(uad_dir, inp, [r.case_id for r in discover(args.cohort)],
                                                    args.device)
    abl = acc["calibration"]["ablation"]
    configs: dict[str, PipelineParams] = {"paper": PipelineParams(profile="paper", write_preview=False)}
    for name, row in abl.items():
        d = row["delineation"]
        # a row without delineation must say so: None would mean "the card's" (profile.resolve)
        configs[name] = _params(SearchParams.from_dict(row["search"]), row["threshold"],
                                NO_DELINEATION if d is None else DelineationParams.from_dict(d))
    configs["default"] = PipelineParams(write_preview=False)
    records: dict[str, list[dict[str, Any]]] = {}
    exact: list[dict[str, Any]] = []
    t_start = time.time()
    for cid, x in load(args.cohort, args.ids):
        p = prepare(cid, x, inp, args.preset)
        per: dict[str, dict[str, Any]] = {}
        for name, params in configs.items():
            per[name], _, _ = run_config(p, params, inp)
        per.update(baselines(p))
        if uad is not None:
            per.update(uad.rows(p))
        for name, rec in per.items():
            rec.pop("curve", None)
            records.setdefault(name, []).append({"case": cid, "healthy": p.healthy, "prepare_s": p.prepare_s,
                                                 "tumour_ml": float(p.label.sum() * p.voxel_ml), **rec})
        log.info("%s: %s", cid, ", ".join(f"{k}={v['dice'] if v['dice'] is None else round(v['dice'], 3)}"
                                          for k, v in per.items()))
        del p
    meta = {"command": _command(), "model": inp.card.get("name"), "model_sha256": inp.sha256,
            "cohort": str(args.cohort), "cohort_command": cohort_command(args.cohort),
            "calibration": {k: v for k, v in acc["calibration"].items() if k != "delineation_grid"},
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"load average at end {os.getloadavg()[0]:.2f}",
            "wall_s": time.time() - t_start, "note": args.note}
    if uad is not None and uad_dir is not None:
        meta["uad"] = uad.summary(uad_dir)
    _write(args.out, meta, records, exact)
    # exact vs fast last (slow): the main tables are on disk even if this part is stopped
    exact_ids = [r["case"] for r in records["default"] if not r["healthy"]][: max(args.exact, 0)]
    for cid, x in load(args.cohort, exact_ids) if exact_ids else []:
        p = prepare(cid, x, inp, args.preset)
        fast = next(r for r in records["default"] if r["case"] == cid)
        exact.append(_exact_vs_fast(p, inp, {**fast, "seconds": fast["seconds"]}))
        log.info("exact vs fast %s: %s", cid, exact[-1])
        _write(args.out, meta, records, exact)
    print(args.out.read_text())


def _write(out: Path, meta: dict[str, Any], records: dict[str, list[dict[str, Any]]],
           exact: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records, "exact": exact},
                                                   indent=1, default=float) + "\n")
    write_report(out, meta, records, exact)


def _exact_vs_fast(p: Prepared, inp: Any, fast: dict[str, Any]) -> dict[str, Any]:
    ex, _, _ = run_config(p, PipelineParams(mode="exact", write_preview=False), inp, curve_on=None)
    paper_ex, _, _ = run_config(p, PipelineParams(mode="exact", profile="paper", write_preview=False), inp,
                                curve_on=None)
    return {"case": p.case_id, "fast_images": fast["images"], "exact_images": ex["images"],
            "paper_exact_images": paper_ex["images"], "fast_dice": fast["dice"], "exact_dice": ex["dice"],
            "fast_hit": fast["hit_rate"], "exact_hit": ex["hit_rate"], "fast_s": fast["seconds"] + p.prepare_s,
            "exact_s": ex["seconds"] + p.prepare_s, "paper_exact_dice": paper_ex["dice"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("calibrate", "evaluate", "calibrate-uad"))
    ap.add_argument("--model", default="thorax-petct-gconvlap-128")
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--ids", nargs="*", default=None, help="only these case ids (e.g. a model card's split)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true", help="calibrate: store the result on the model card")
    ap.add_argument("--exact", type=int, default=0, help="evaluate: exact vs fast on this many tumour patients")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "accuracy.md")
    ap.add_argument("--uad", type=Path, default=None,
                    help="dAE/VAE folder (calibrate-uad writes it, evaluate reads it; default work/uad/<model>)")
    ap.add_argument("--no-uad", action="store_true", help="evaluate: no dAE/VAE rows")
    ap.add_argument("--note", default=None, help="evaluate: a sentence for the report's header (e.g. which "
                    "evaluation of this held-out cohort this is)")
    ap.add_argument("--train-cohort", type=Path, default=None,
                    help="calibrate-uad: phantom cohort of the dAE/VAE healthy training slices (generated when missing)")
    ap.add_argument("--train-n", type=int, default=20, help="calibrate-uad: patients of a generated training cohort")
    ap.add_argument("--train-seed", type=int, default=11,
                    help="calibrate-uad: seed of a generated training cohort (not a val/test cohort's seed)")
    ap.add_argument("--train-healthy-fraction", type=float, default=0.25)
    ap.add_argument("--uad-seconds", type=float, default=180.0, help="calibrate-uad: training budget per network (s)")
    ap.add_argument("--uad-width", type=int, default=16, help="calibrate-uad: channels of the first encoder stage")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("autopaint").setLevel(logging.WARNING)
    {"calibrate": calibrate, "evaluate": evaluate, "calibrate-uad": calibrate_uad}[args.what](args)


if __name__ == "__main__":
    main()
