"""Reproduce, in structure, the paper's Tables 1-7 on our cohorts; writes bench/results/quality.md + PNGs.

    .venv/bin/python bench/quality.py --budget small      # ~30-40 min on a 2-core CPU
    .venv/bin/python bench/quality.py --budget paper      # GPU-sized (see quality_config.PAPER)

Per cohort (phantom thorax, phantom head-and-neck, real IBSI soft-tissue sarcoma PET/CT): generate /
find the cases, build the healthy-slice dataset (split by patient), train (time-budgeted) or reuse the
inpainting models and the dAE / VAE baselines, measure inpainting quality on test patients' healthy
slices (Tables 1-2), segment validation + test patients with every method (Tables 3-4, 6-7: fast-mode
autoinpainting through ``run_pipeline``, dAE, VAE, SUV >= 2.5, 41 % SUVmax, windowed-PET sweep),
choose each method's global threshold on validation patients, compare exact vs fast mode on a few
tumour slices, and run Wilcoxon signed-rank tests against GconvLap. Everything a run computes is
kept in ``quality.json`` (per image / per patient), the report is rendered from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.imaging.modality import PET_CT_CHANNELS
from bench.quality_config import ARCH_NAMES, BUDGETS, MODALITY_NAMES, Budget, CohortPlan

log = logging.getLogger("bench.quality")
REPO = Path(__file__).resolve().parents[1]


def method_name(arch: str, modality: str) -> str:
    return f"{ARCH_NAMES.get(arch, arch)}-{MODALITY_NAMES[modality]}"


def _cohort_dir(plan: CohortPlan, work: Path) -> Path | None:
    from autopaint.data.phantom import write_cohort
    from autopaint.paths import data_dir

    if plan.source != "phantom":
        d = data_dir() / plan.source
        return d if d.is_dir() else None
    d = work / "cohorts" / plan.name
    if not (d / "cases.json").is_file():
        write_cohort(plan.kind, plan.n, plan.seed, d, size=plan.phantom_size, healthy_fraction=plan.healthy_fraction)
    return d


def _dataset(plan: CohortPlan, cohort_dir: Path, work: Path, size: int) -> tuple[Path, dict[str, Any]]:
    from autopaint.data.datasets import build_dataset

    d = work / "datasets" / plan.name
    if not (d / "manifest.json").is_file():
        build_dataset(cohort_dir, plan.preset, "petct", size, d, split=plan.split, seed=0, ct_window=plan.ct_window)
    return d, json.loads((d / "manifest.json").read_text())


def split_ids(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Case ids per split from the dataset manifest (``cases``: list of {case_id, split} or a dict)."""
    cases = manifest.get("cases", [])
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    items = cases.items() if isinstance(cases, dict) else ((c.get("case_id"), c) for c in cases)
    for cid, c in items:
        split = c if isinstance(c, str) else c.get("split")
        if split in out:
            out[split].append(str(cid))
    for v in out.values():
        v.sort()
    return out


def _load_cases(cohort_dir: Path, ids: list[str]) -> list[Any]:
    from autopaint.data.cohorts import discover, load_case

    refs = {r.case_id: r for r in discover(cohort_dir)}
    return [load_case(refs[cid]) for cid in ids]


def _segment_cases(plan: CohortPlan, cases: list[Any], split: str, pp: Any, inpainters: dict[str, Any],
                   levels: dict[str, float | None], uads: dict[str, Any], records: dict[str, list[dict[str, Any]]],
                   device: str, thresholds: dict[str, float | None] | None = None) -> None:
    """Every method on each case (one case in memory at a time). ``thresholds``: the methods' global
    thresholds (test patients): the records then also get the lesion-wise numbers at them."""
    from bench.quality_seg import autopaint_record, baseline_records, case_grid, uad_record

    ts = thresholds or {}
    for case in cases:
        t0 = time.perf_counter()
        grid = case_grid(case, pp, plan.preset)
        per: dict[str, dict[str, Any]] = {}
        for name, inp in inpainters.items():
            per[name] = autopaint_record(case, grid, inp, plan.preset, screen_level=levels.get(name),
                                         threshold=ts.get(name))
        for name, model in uads.items():
            per[name] = uad_record(model, [0, 1], grid, device, threshold=ts.get(name))
        per.update(baseline_records(grid, thresholds))
        for name, rec in per.items():
            rec.update(case_id=case.case_id, split=split, healthy=grid.healthy, voxel_ml=grid.voxel_ml)
            records.setdefault(name, []).append(rec)
        log.info("%s %s %s (%s): %s [%.0fs]", plan.name, split, case.case_id, "healthy" if grid.healthy else "tumour",
                 ", ".join(f"{k}={v['dice_best']:.2f}" for k, v in per.items()), time.perf_counter() - t0)


def run_cohort(plan: CohortPlan, budget: Budget, work: Path, results: dict[str, Any], device: str = "cpu") -> None:
    """Everything for one cohort; fills ``results`` in place (models, inpainting, segmentation, timings)."""
    timings = results["timings"].setdefault(plan.name, {})
    t = time.perf_counter()
    cohort_dir = _cohort_dir(plan, work)
    if cohort_dir is None:
        results["skipped"][plan.name] = f"data folder {plan.source!r} not found"
        return
    data = _prepare_data(plan, budget, cohort_dir, work, results)
    timings["data"] = time.perf_counter() - t
    t = time.perf_counter()
    model_info, uads = _train_models(plan, budget, work, data, device)
    results["models"][plan.name] = model_info
    timings["training"] = time.perf_counter() - t
    t = time.perf_counter()
    _inpainting_tables(plan, budget, data, model_info, results, device)
    timings["inpainting"] = time.perf_counter() - t
    t = time.perf_counter()
    inpainters, levels = _calibrate_levels(plan, budget, data, model_info, device)
    timings["calibration"] = time.perf_counter() - t
    test_cases = _segmentation_tables(plan, data, inpainters, levels, uads, results, timings, device)
    t = time.perf_counter()
    _exact_vs_fast_rows(plan, budget, data, inpainters, test_cases, results)
    timings["exact_vs_fast"] = time.perf_counter() - t


@dataclass(frozen=True)
class _CohortData:
    """A cohort's slice dataset, split ids, preprocessing and manifest."""

    cohort_dir: Path
    dataset: Path
    manifest: dict[str, Any]
    ids: dict[str, list[str]]
    pp: Any  # PreprocessParams


def _prepare_data(plan: CohortPlan, budget: Budget, cohort_dir: Path, work: Path,
                  results: dict[str, Any]) -> _CohortData:
    from autopaint.data.datasets import load_split
    from autopaint.imaging.preprocess import PreprocessParams

    dataset, manifest = _dataset(plan, cohort_dir, work, budget.size)
    ids = split_ids(manifest)
    results["cohorts"][plan.name] = {"dir": str(cohort_dir), "preset": plan.preset, "source": plan.source,
                                     "splits": {k: len(v) for k, v in ids.items()}, "split_ids": ids,
                                     "slices": {s: int(len(load_split(dataset, s).images)) for s in ("train", "val", "test")}}
    return _CohortData(cohort_dir, dataset, manifest, ids, PreprocessParams.from_dict(manifest["preprocessing"]))


def _train_models(plan: CohortPlan, budget: Budget, work: Path, data: _CohortData, device: str
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The inpainting models (shipped when they fit and do not leak, else trained) and the dAE/VAE."""
    from autopaint.data.datasets import load_split
    from bench.quality_inpaint import ensure_inpainting_model, ensure_uad_model

    ids = data.ids
    wanted = {(a, "petct") for a in plan.inpaint_archs} | {(a, m) for m, archs in plan.seg.items() for a in archs}
    model_info: dict[str, dict[str, Any]] = {}
    held_out = frozenset(ids["val"] + ids["test"])
    for arch, modality in sorted(wanted):
        info = ensure_inpainting_model(work, data.dataset, plan.name, arch, modality, budget.train_seconds[arch],
                                       budget.epochs, budget.reuse_shipped, budget.size, device, held_out,
                                       test_ids=frozenset(ids["test"]))
        model_info[method_name(arch, modality)] = info
    ref_name = method_name("gconv_lap", "petct")
    if (model_info.get(ref_name, {}).get("source") == "shipped" and "gconv" in plan.inpaint_archs
            and model_info.get(method_name("gconv", "petct"), {}).get("source") != "shipped"):
        # the shipped model had far more training than Gconv/Pconv here: add a GconvLap with their budget
        # (not needed when the equal-budget shipped siblings of bench/archs.py are used)
        secs = budget.train_seconds["gconv"]
        info = ensure_inpainting_model(work, data.dataset, plan.name, "gconv_lap", "petct", secs, budget.epochs,
                                       False, budget.size, device, held_out, tag="-short")
        model_info[f"{ref_name} ({secs:.0f} s)"] = {**info, "inpainting_only": True}
    uads: dict[str, Any] = {}
    if plan.uad:
        train = load_split(data.dataset, "train")
        val = load_split(data.dataset, "val")
        for kind, label in (("dae", "dAE"), ("vae", "VAE")):
            model, info = ensure_uad_model(work, plan.name, kind, train.images, val.images, budget.train_seconds[kind],
                                           budget.size, data.pp.to_dict(), budget.uad_width, device)
            uads[f"{label}-PET/CT"] = model
            model_info[f"{label}-PET/CT"] = info
    return model_info, uads


def _inpainting_tables(plan: CohortPlan, budget: Budget, data: _CohortData, model_info: dict[str, dict[str, Any]],
                       results: dict[str, Any], device: str) -> None:
    """Tables 1-2: inpainting quality on the test patients' healthy slices."""
    from autopaint.data.datasets import load_split
    from bench.quality_inpaint import inpainting_quality, test_holes

    test = load_split(data.dataset, "test")
    if not len(test.images):
        return
    images, masks = test_holes(test.images, budget.max_inpaint_images, budget.hole_seed)
    dirs = {ARCH_NAMES[a]: model_info[method_name(a, "petct")]["path"] for a in plan.inpaint_archs}
    dirs.update({name.replace("-PET/CT", ""): info["path"] for name, info in model_info.items()
                 if info.get("inpainting_only")})
    results["inpainting"][plan.name] = inpainting_quality(dirs, images, masks, device)


def _calibrate_levels(plan: CohortPlan, budget: Budget, data: _CohortData, model_info: dict[str, dict[str, Any]],
                      device: str) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The segmentation models, loaded, and their fast-mode screening levels from validation slices."""
    from autopaint.data.datasets import load_split
    from autopaint.model.inpainter import Inpainter
    from bench.quality_seg import calibrate

    seg_names = {method_name(a, m) for m, archs in plan.seg.items() for a in archs}
    inpainters = {name: Inpainter.load(info["path"], device=device) for name, info in model_info.items()
                  if name in seg_names}
    val = load_split(data.dataset, "val")
    levels: dict[str, float | None] = {}
    for name, inp in inpainters.items():
        if len(val.images) == 0:
            levels[name] = None
            continue
        cal = calibrate(inp, val.images[:, PET_CT_CHANNELS[inp.modality]], val.ooi, budget.calib_slices)
        levels[name] = cal["screen_level"]
        model_info[name]["screen_calibration"] = {k: cal[k] for k in ("screen_level", "n_slices", "seconds")}
    return inpainters, levels


def _segmentation_tables(plan: CohortPlan, data: _CohortData, inpainters: dict[str, Any],
                         levels: dict[str, float | None], uads: dict[str, Any], results: dict[str, Any],
                         timings: dict[str, float], device: str) -> list[Any]:
    """Tables 3-4, 6-7: validation patients choose each method's global threshold, test patients are
    scored at it (Dice from the curves, lesion-wise numbers from the mask at it). Returns the loaded
    test cases."""
    from bench.quality_seg import apply_global_threshold, choose_global_threshold

    t = time.perf_counter()
    # healthy validation patients carry no threshold information: segment only those with a tumour
    tumour_ids = {c["case_id"] for c in data.manifest.get("cases", []) if c.get("has_tumour")}
    val_ids = [c for c in data.ids["val"] if c in tumour_ids]
    val_ids = val_ids[: plan.max_val_cases] if plan.max_val_cases else val_ids
    test_ids = data.ids["test"][: plan.max_test_cases] if plan.max_test_cases else data.ids["test"]
    val_rec: dict[str, list[dict[str, Any]]] = {}
    test_rec: dict[str, list[dict[str, Any]]] = {}
    _segment_cases(plan, _load_cases(data.cohort_dir, val_ids), "val", data.pp, inpainters, levels, uads, val_rec,
                   device)
    timings["segment_val"] = time.perf_counter() - t
    t = time.perf_counter()
    thresholds = {name: choose_global_threshold(recs) for name, recs in val_rec.items()}
    test_cases = _load_cases(data.cohort_dir, test_ids)
    _segment_cases(plan, test_cases, "test", data.pp, inpainters, levels, uads, test_rec, device, thresholds)
    timings["segment_test"] = time.perf_counter() - t
    seg: dict[str, Any] = {}
    for name, recs in test_rec.items():
        thr = thresholds.get(name)
        apply_global_threshold(recs, thr)
        seg[name] = {
            "cases": [r for r in recs if not r["healthy"]], "global_threshold": thr,
            "healthy": [{"case_id": r["case_id"], "fp_ml": r.get("fp_ml"),
                         "fp_components": r.get("lesion", {}).get("fp_components")} for r in recs if r["healthy"]
                        and r.get("fp_ml") is not None],
            "val_tumour_cases": sum(1 for r in val_rec.get(name, []) if not r["healthy"]),
            "seconds": float(sum(r.get("seconds", 0.0) for r in recs)),
            "forward_passes": int(sum(r.get("forward_passes", 0) for r in recs)),
        }
    results["segmentation"][plan.name] = seg
    return test_cases


def _exact_vs_fast_rows(plan: CohortPlan, budget: Budget, data: _CohortData, inpainters: dict[str, Any],
                        test_cases: list[Any], results: dict[str, Any]) -> None:
    """Exact vs fast autoinpainting on the tumour slices of a few test patients."""
    from bench.quality_seg import case_grid, exact_vs_fast

    ref = method_name("gconv_lap", "petct")
    if not (plan.exact and budget.exact_cases and ref in inpainters):
        return
    rows: list[dict[str, Any]] = []
    for case in test_cases:
        if len(rows) >= budget.exact_cases:
            break
        grid = case_grid(case, data.pp, plan.preset)
        if grid.healthy:
            continue
        rows.append({"case_id": case.case_id, **exact_vs_fast(grid, inpainters[ref], budget.exact_slices)})
    results["exact_vs_fast"][plan.name] = rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--work", type=Path, default=None, help="cohorts, datasets, models (default work/quality-<budget>)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first (no cached models)")
    ap.add_argument("--cohorts", default=None, help="comma-separated subset of the budget's cohorts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (training and inference)")
    ap.add_argument("--render-only", action="store_true",
                    help="only re-render quality.md and the plots from an existing <out>/quality.json")
    args = ap.parse_args(argv)
    if args.render_only:
        from bench.quality_markdown import render_markdown
        from bench.quality_plots import write_plots

        saved = json.loads((args.out / "quality.json").read_text())
        saved["meta"]["plots"] = [p.name for p in write_plots(saved, args.out)]
        (args.out / "quality.md").write_text(render_markdown(saved))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("autopaint.segment", "autopaint.model.train", "autopaint.imaging", "autopaint.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from bench.quality_markdown import render_markdown
    from bench.quality_plots import write_plots

    if args.threads:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    work = args.work or REPO / "work" / f"quality-{budget.name}"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    plans = [p for p in budget.cohorts if not args.cohorts or p.name in args.cohorts.split(",")]
    cmd = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "meta": {"budget": budget.name, "command": cmd.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                 "torch_threads": torch.get_num_threads(), "image_size": budget.size, "device": device,
                 "train_seconds": budget.train_seconds, "fresh": bool(args.fresh),
                 "loadavg_start": os.getloadavg()[0]},
        "cohorts": {}, "models": {}, "inpainting": {}, "segmentation": {}, "exact_vs_fast": {},
        "timings": {}, "skipped": {}, "errors": {},
    }
    t0 = time.perf_counter()
    for plan in plans:
        log.info("=== cohort %s ===", plan.name)
        try:
            run_cohort(plan, budget, work, results, device)
        except Exception as exc:  # keep the other cohorts' results; the error is in the report
            log.exception("cohort %s failed", plan.name)
            results["errors"][plan.name] = f"{type(exc).__name__}: {exc}"
        results["meta"]["wall_s"] = time.perf_counter() - t0
        (args.out / "quality.json").write_text(json.dumps(results, indent=1, default=_json_default))
    results["meta"]["wall_s"] = time.perf_counter() - t0
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    results["meta"]["plots"] = [p.name for p in write_plots(results, args.out)]
    (args.out / "quality.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (args.out / "quality.md").write_text(render_markdown(results))
    log.info("wrote %s (wall %.0fs)", args.out / "quality.md", results["meta"]["wall_s"])
    return 1 if results["errors"] else 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


if __name__ == "__main__":
    sys.exit(main())
