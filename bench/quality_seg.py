"""Segmentation evaluation of one case with every method, on the case's reference (CT) grid.

Every method produces either a residual-like map in [0, 1] (autoinpainting, dAE, VAE, the windowed
PET) that is swept over the paper's thresholds 0..0.8 (step 0.02, ``residual > t``), or a fixed
binary mask (SUV >= 2.5, 41 % of SUVmax). All maps are compared with the label on the same grid and
inside the same organ of interest (the pipeline's :func:`organ_of_interest`).

A case record keeps the whole curve (Dice/precision/recall and the positive-voxel count per
threshold), so the global threshold can be chosen on validation patients afterwards
(:func:`apply_global_threshold`) without re-running anything. The autoPET lesion-wise numbers
(``segment.metrics.lesion_metrics``) need the mask itself, so they are computed while the case's map
is in memory, at a threshold known beforehand: bench/quality.py segments the validation patients
first, chooses each method's global threshold, and passes it when it segments the test patients
(``threshold=`` / ``thresholds=``; the record then has ``lesion``; fixed masks get it with ``lesion=True``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.data.cohorts import Case
from autopaint.imaging.modality import PET_CT_CHANNELS
from autopaint.imaging.preprocess import PreparedCase, PreprocessParams, prepare_case
from autopaint.imaging.resample import mask_on_grid
from autopaint.model.uad import DenseAutoencoder, residual_maps
from autopaint.segment.baselines import pet_window_map, suv_fixed_threshold, suvmax_fraction_threshold
from autopaint.segment.calibrate import choose_threshold
from autopaint.segment.engine import FAST_SOURCES, autoinpaint
from autopaint.segment.metrics import lesion_metrics, segmentation_metrics
from autopaint.segment.pipeline import PipelineInputs, PipelineParams, organ_of_interest, run_pipeline
from autopaint.segment.thresholds import sweep, sweep_thresholds

log = logging.getLogger(__name__)

THRESHOLDS = sweep_thresholds()


@dataclass
class CaseGrid:
    """What every method shares: the prepared PET/CT case, the OOI and the label on the reference grid."""

    prepared: PreparedCase
    ooi: np.ndarray        # bool (I, J, K)
    label: np.ndarray      # bool (I, J, K)
    voxel_ml: float

    @property
    def healthy(self) -> bool:
        return not bool(self.label.any())


def case_grid(case: Case, params: PreprocessParams, preset: str) -> CaseGrid:
    """Prepare ``case`` with ``params`` (a PET/CT preprocessing) and put OOI and label on its grid."""
    prepared = prepare_case(case.ct, case.pet, params)
    ref = prepared.reference
    ooi = organ_of_interest(PipelineInputs.from_case(case), ref, preset)
    label = np.zeros(ref.shape, dtype=bool) if case.label is None else mask_on_grid(case.label, ref)
    return CaseGrid(prepared, ooi, label, ref.voxel_volume_ml)


def curve_record(residual: np.ndarray, grid: CaseGrid, threshold: float | None = None) -> dict[str, Any]:
    """Sweep a reference-grid map: best-threshold metrics plus per-threshold curves (lists of 41);
    with ``threshold`` (the method's global one) also the lesion-wise numbers of ``residual > threshold``."""
    sw = sweep(residual, grid.label, THRESHOLDS)
    r = np.sort(np.asarray(residual, dtype=np.float64).ravel())
    positives = r.size - np.searchsorted(r, THRESHOLDS, side="right")
    best = sw["best"]
    return {
        "dice_best": best["dice"], "precision_best": best["precision"], "recall_best": best["recall"],
        "t_best": best["threshold"],
        "curve": {"dice": sw["dice"], "precision": sw["precision"], "recall": sw["recall"],
                  "positives": [int(p) for p in positives]},
        **({} if threshold is None else {"lesion": lesion_metrics(residual > threshold, grid.label, grid.voxel_ml)}),
    }


def fixed_record(mask: np.ndarray, grid: CaseGrid, lesion: bool = False) -> dict[str, Any]:
    """Metrics of a fixed binary mask (no threshold to choose: [Dice] = Dice); ``lesion``: also the
    lesion-wise numbers."""
    m = segmentation_metrics(mask, grid.label)
    return {"dice_best": m["dice"], "precision_best": m["precision"], "recall_best": m["recall"],
            "t_best": None, "dice_global": m["dice"], "fp_ml": float(np.count_nonzero(mask & ~grid.label)) * grid.voxel_ml,
            **({"lesion": lesion_metrics(mask, grid.label, grid.voxel_ml)} if lesion else {})}


def reference_map(stack: np.ndarray, prepared: PreparedCase, ooi: np.ndarray) -> np.ndarray:
    """A model-grid map ``(K, N, N)`` in [0, 1] back on the reference grid (linear), 0 outside ``ooi``."""
    res = np.clip(prepared.to_reference(stack, order=1), 0.0, 1.0).astype(np.float32)
    res[~ooi] = 0.0
    return res


def uad_residual(model: DenseAutoencoder, prepared: PreparedCase, ooi: np.ndarray, channels: list[int] | None = None,
                 device: str = "cpu") -> np.ndarray:
    """dAE / VAE residual |x - x_hat| (mean over ``channels``, default all) of every model slice, inside
    the organ of interest ``ooi`` (reference grid, bool), mapped back to the reference grid."""
    images = prepared.images if channels is None else prepared.images[:, channels]
    res = residual_maps(model, images, prepared.mask_to_model(ooi), device=device)
    return reference_map(res, prepared, ooi)


def uad_record(model: DenseAutoencoder, channels: list[int], grid: CaseGrid, device: str = "cpu",
               threshold: float | None = None) -> dict[str, Any]:
    """dAE / VAE residual (:func:`uad_residual`) swept like every residual (``threshold``: see :func:`curve_record`)."""
    t0 = time.perf_counter()
    res = uad_residual(model, grid.prepared, grid.ooi, channels, device)
    seconds = time.perf_counter() - t0
    rec = curve_record(res, grid, threshold)
    rec["seconds"] = seconds
    return rec


def baseline_records(grid: CaseGrid, thresholds: dict[str, float | None] | None = None) -> dict[str, dict[str, Any]]:
    """SUV >= 2.5, 41 % of SUVmax (global and per lesion), and the windowed-PET sweep.

    ``thresholds`` (method -> global threshold, None: not chosen): when given, the records get the
    lesion-wise numbers (fixed masks as they are, the sweep at its threshold)."""
    pet = grid.prepared.pet_on_ref
    assert pet is not None, "SUV baselines need a PET"
    suv = np.asarray(pet.data, dtype=np.float32)
    lesion = thresholds is not None
    out = {
        "SUV≥2.5": fixed_record(suv_fixed_threshold(suv, grid.ooi), grid, lesion),
        "41% SUVmax": fixed_record(suvmax_fraction_threshold(suv, grid.ooi), grid, lesion),
        "41% SUVmax per lesion": fixed_record(suvmax_fraction_threshold(suv, grid.ooi, mode="per_lesion"), grid,
                                              lesion),
        "PET window sweep": curve_record(pet_window_map(suv, grid.ooi), grid,
                                         (thresholds or {}).get("PET window sweep")),
    }
    return out


def autopaint_record(case: Case, grid: CaseGrid, inpainter: Any, preset: str, mode: str = "fast",
                     screen_level: float | None = None, threshold: float | None = None) -> dict[str, Any]:
    """Run the product's :func:`run_pipeline` (files to a temp dir, discarded) and sweep its residual.

    ``screen_level``: fast mode's calibrated screening level (None: the volume's own fallback);
    ``threshold``: see :func:`curve_record`."""
    tmp = Path(tempfile.mkdtemp(prefix="quality-seg-"))
    try:
        t0 = time.perf_counter()
        params = PipelineParams(preset=preset, mode=mode, screen_level=screen_level, write_preview=False,  # type: ignore[arg-type]
                                profile="paper")  # the paper's tables: the paper's search
        res = run_pipeline(PipelineInputs.from_case(case), params, inpainter, tmp)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if res.residual.shape != grid.label.shape:
        raise RuntimeError(f"pipeline residual {res.residual.shape} != reference {grid.label.shape}")
    rec = curve_record(np.where(grid.ooi, res.residual, 0.0), grid, threshold)
    flagged = sum(1 for s in res.engine.slices if s.get("flagged"))
    rec.update(seconds=seconds, forward_passes=int(res.report["forward_passes"]["total"]), flagged_slices=flagged,
               kept_slices=sum(1 for s in res.engine.slices if s.get("kept")))
    return rec


def calibrate(inpainter: Any, images: np.ndarray, ooi: np.ndarray, max_slices: int) -> dict[str, Any]:
    """Fast mode's screen level on healthy validation slices (``segment.fast.calibrate_screen``).

    ``images`` (n, C, N, N) with the model's channels, ``ooi`` (n, N, N) bool; evenly subsampled."""
    from autopaint.segment.fast import calibrate_screen

    idx = np.linspace(0, len(images) - 1, min(max_slices, len(images))).round().astype(int)
    t0 = time.perf_counter()
    cal = calibrate_screen(inpainter, images[idx], ooi[idx])
    cal["seconds"] = time.perf_counter() - t0
    return cal


def choose_global_threshold(val_records: list[dict[str, Any]]) -> float | None:
    """The threshold maximising the mean Dice over validation cases with a tumour (ties: lowest).

    None when there is no such case or the method finds nothing on any of them (all-zero mean curve:
    every threshold is equally bad, so none is "chosen")."""
    curves = {str(i): r["curve"]["dice"] for i, r in enumerate(val_records) if not r.get("healthy") and "curve" in r}
    if not curves:
        return None
    threshold, mean = choose_threshold(curves, THRESHOLDS)
    return threshold if float(mean.max()) > 0.0 else None


def apply_global_threshold(records: list[dict[str, Any]], t: float | None) -> None:
    """Fill ``dice_global`` (tumour cases) and ``fp_ml`` (all cases) at threshold ``t`` in place."""
    if t is None:
        return
    i = int(np.argmin(np.abs(THRESHOLDS - t)))
    for r in records:
        if "curve" not in r:
            continue
        r["dice_global"] = None if r.get("healthy") else r["curve"]["dice"][i]
        if r.get("healthy"):
            r["fp_ml"] = r["curve"]["positives"][i] * r["voxel_ml"]


def exact_vs_fast(grid: CaseGrid, inpainter: Any, n_slices: int | None) -> dict[str, Any]:
    """Exact vs fast autoinpainting on the ``n_slices`` OOI slices with the most tumour (model grid).

    Fast mode runs without its screening source here: on a handful of slices a volume-level screen
    level is meaningless (the whole-volume comparison is the main table's fast mode). Returns per mode
    [Dice] on those slices, seconds, forward passes, and the Dice between the two best-threshold masks.
    """
    prep = grid.prepared
    images = prep.images if inpainter.in_channels == prep.images.shape[1] else prep.images[:, PET_CT_CHANNELS[inpainter.modality]]
    ooi = prep.mask_to_model(grid.ooi)
    lab = prep.mask_to_model(grid.label) & ooi
    area = lab.reshape(lab.shape[0], -1).sum(axis=1)
    order = np.argsort(-area, kind="stable")
    keep = [int(k) for k in order if area[k] > 0][: n_slices or len(order)]
    keep.sort()
    out: dict[str, Any] = {"slices": keep}
    masks = {}
    for mode, sources in (("exact", frozenset()), ("fast", FAST_SOURCES - {"screen"})):
        before = inpainter.images_inpainted
        t0 = time.perf_counter()
        eng = autoinpaint(images[keep], ooi[keep], inpainter, mode=mode, sources=sources)  # type: ignore[arg-type]
        secs = time.perf_counter() - t0
        sw = sweep(eng.residual, lab[keep], THRESHOLDS)
        masks[mode] = eng.residual > sw["best"]["threshold"]
        out[mode] = {"dice_best": sw["best"]["dice"], "t_best": sw["best"]["threshold"], "seconds": secs,
                     "forward_passes": inpainter.images_inpainted - before}
    out["mask_agreement_dice"] = segmentation_metrics(masks["fast"], masks["exact"])["dice"]
    return out
