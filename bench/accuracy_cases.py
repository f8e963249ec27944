"""One case through every accuracy configuration and baseline (used by ``bench/accuracy.py``).

A case is prepared once (PET on the CT grid, model images, organ of interest, label); each
configuration then runs :func:`autopaint.segment.pipeline.segment_prepared` — the product's own code
path without the file writing — and the baselines run on the same SUV volume and organ of interest.
Per method a record keeps Dice, the lesion-wise numbers (autoPET definitions), the predicted volume,
images inpainted and seconds, and for residual-threshold methods the Dice curve over the paper's
thresholds (so a global threshold can be chosen on validation patients afterwards).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np

from autopaint.imaging.preprocess import PreparedCase, PreprocessParams, prepare_case
from autopaint.imaging.resample import mask_on_grid
from autopaint.segment.baselines import (
    percist_threshold,
    pet_window_map,
    suv_fixed_threshold,
    suvmax_fraction_threshold,
)
from autopaint.segment.engine import AutoinpaintResult
from autopaint.segment.metrics import dice, lesion_metrics
from autopaint.segment.pipeline import (
    PipelineInputs,
    PipelineParams,
    organ_of_interest,
    segment_prepared,
)
from autopaint.segment.thresholds import sweep


@dataclass
class Prepared:
    case_id: str
    case: PreparedCase
    ooi: np.ndarray
    ooi_model: np.ndarray
    label: np.ndarray
    label_model: np.ndarray
    voxel_ml: float
    prepare_s: float

    @property
    def healthy(self) -> bool:
        return not bool(self.label.any())


def iter_cases(cohort: Path, ids: list[str] | None) -> Iterator[tuple[str, PipelineInputs]]:
    """(case id, inputs) of a cohort folder (only ``ids`` when given), loaded one at a time."""
    from autopaint.data.cohorts import discover, load_case

    refs = discover(cohort)
    if ids is not None:
        refs = [r for r in refs if r.case_id in set(ids)]
    for r in refs:
        c = load_case(r)
        yield c.case_id, PipelineInputs.from_case(c)


def cohort_command(cohort: Path) -> str | None:
    """The ``autopaint phantom`` command that generated a phantom cohort (None for other folders)."""
    f = cohort / "cases.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    return (f"autopaint phantom --kind {d['kind']} --n {d['n']} --seed {d['seed']} --size {d['size']} "
            f"--healthy-fraction {d['healthy_fraction']} --out {cohort}")


def prepare(case_id: str, inputs: PipelineInputs, inpainter: Any, preset: str | None) -> Prepared:
    t0 = time.perf_counter()
    pp = PreprocessParams.from_dict(inpainter.preprocessing)
    case = prepare_case(inputs.ct, inputs.pet, pp)
    ooi = organ_of_interest(inputs, case.reference, preset or pp.preset)
    assert inputs.label is not None
    label = mask_on_grid(inputs.label, case.reference)
    return Prepared(case_id, case, ooi, case.mask_to_model(ooi), label, case.mask_to_model(label),
                    case.reference.voxel_volume_ml, time.perf_counter() - t0)


def score_mask(p: Prepared, mask: np.ndarray) -> dict[str, Any]:
    lw = lesion_metrics(mask, p.label, p.voxel_ml)
    return {"dice": None if p.healthy else dice(mask, p.label), **lw}


def run_config(p: Prepared, params: PipelineParams, inpainter: Any, engine: AutoinpaintResult | None = None,
               curve_on: str | None = "residual") -> tuple[dict[str, Any], AutoinpaintResult, np.ndarray]:
    """One configuration on a prepared case: (record, engine result, detection-ready residual)."""
    t0 = time.perf_counter()
    before = inpainter.images_inpainted
    seg = segment_prepared(p.case, p.ooi, p.ooi_model, params, inpainter, engine=engine)
    rec = score_mask(p, seg.mask > 0)
    resid = seg.residual
    if seg.accuracy.search.candidates == "hotspot" and seg.hot is not None:
        resid = np.where(seg.hot, resid, 0.0)  # what the pipeline detects: residual inside hot spots
    if curve_on == "residual" and not p.healthy:
        sw = sweep(resid, p.label)
        rec["curve"] = sw["dice"]
        rec["best_dice"] = sw["best"]["dice"]
    rec.update(images=inpainter.images_inpainted - before, seconds=time.perf_counter() - t0,
               threshold=seg.threshold, gate_suv=seg.gate_suv,
               reference=None if seg.reference is None else seg.reference.region,
               hit_rate=None if p.healthy else _hit(seg.engine.unions, p.label_model))
    return rec, seg.engine, resid


def _hit(unions: np.ndarray, label_model: np.ndarray) -> float:
    tumour = label_model.reshape(len(label_model), -1).any(axis=1)
    hit = (unions & label_model).reshape(len(label_model), -1).any(axis=1)
    return float(hit[tumour].mean()) if tumour.any() else float("nan")


def baselines(p: Prepared) -> dict[str, dict[str, Any]]:
    """SUV >= 2.5, 41 % SUVmax (global and per lesion), PERCIST reference threshold, oracle PET sweep."""
    assert p.case.pet_on_ref is not None
    suv = np.asarray(p.case.pet_on_ref.data)
    ct = None if p.case.ct_on_ref is None else np.asarray(p.case.ct_on_ref.data)
    out: dict[str, dict[str, Any]] = {}
    for name, fn in (("SUV >= 2.5", lambda: suv_fixed_threshold(suv, p.ooi)),
                     ("41 % SUVmax", lambda: suvmax_fraction_threshold(suv, p.ooi)),
                     ("41 % SUVmax per lesion", lambda: suvmax_fraction_threshold(suv, p.ooi, mode="per_lesion"))):
        t0 = time.perf_counter()
        out[name] = {**score_mask(p, fn()), "seconds": time.perf_counter() - t0, "images": 0}
    t0 = time.perf_counter()
    mask, t, region = percist_threshold(suv, p.ooi, ct, p.case.reference.affine)
    out["PERCIST (1.5 x ref + 2 SD)"] = {**score_mask(p, mask), "seconds": time.perf_counter() - t0, "images": 0,
                                         "threshold_suv": t, "reference": region}
    if not p.healthy:
        sw = sweep(pet_window_map(suv, p.ooi), p.label)
        out["PET window sweep (oracle)"] = {"dice": sw["best"]["dice"], "best_dice": sw["best"]["dice"],
                                            "seconds": 0.0, "images": 0}
    return out


def lesion_scores(engine: AutoinpaintResult, hot_model: np.ndarray, label_model: np.ndarray
                  ) -> list[tuple[float, bool]]:
    """(lesion score, touches a tumour) per 3-D hot component of the model grid (the lesion score
    of the engine's gate scope: see ``segment.guided``)."""
    cands = engine.extra.get("candidates") or []
    if not cands:
        return []
    comp = cc3d.connected_components(hot_model.astype(np.uint8), connectivity=26)
    best: dict[int, float] = {}
    for c in cands:
        r, col = int(round(c["centre"][0])), int(round(c["centre"][1]))
        i = int(comp[c["k"], r, col])
        if i:
            score = c["score"] if c.get("lesion_score") is None else c["lesion_score"]
            best[i] = max(best.get(i, -np.inf), float(score))
    tumour = set(np.unique(comp[label_model]).tolist())
    return [(s, i in tumour) for i, s in best.items()]
