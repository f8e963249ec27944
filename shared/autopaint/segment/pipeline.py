"""``run_pipeline``: the ONE entry point used by the CLI, the worker and the tests.

inputs (Volumes + sha256) -> prepare (PET on the CT grid, SUV, windows, model-grid slices) -> OOI
-> autoinpaint (exact or fast) -> residual on the reference grid -> threshold / sweep -> lesions
-> files in ``out_dir`` (atomic) -> :class:`PipelineResult`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autopaint.errors import Cancelled, InvalidInput, ModelError
from autopaint.fsutil import sha256_file
from autopaint.imaging.modality import check_roles
from autopaint.imaging.volume import Volume
from autopaint.progress import ProgressEvent, ProgressFn, Stage, Unit
from autopaint.segment.delineate import DelineationParams, delineate
from autopaint.segment.engine import AutoinpaintResult, autoinpaint
from autopaint.segment.hotspot import ReferenceUptake, hot_map, reference_uptake
from autopaint.segment.lesions import lesion_table
from autopaint.segment.metrics import lesion_metrics, segmentation_metrics, slice_hit_rate
from autopaint.segment.profile import Accuracy, HotspotGate, Profile, resolve
from autopaint.segment.thresholds import resolve_threshold, sweep
from autopaint.segment.types import CancelFn, InpainterLike, Mode, SearchParams

if TYPE_CHECKING:
    from autopaint.data.cohorts import Case
    from autopaint.imaging.preprocess import PreparedCase
    from autopaint.imaging.validate import Role

log = logging.getLogger(__name__)

REPORT_VERSION = 1


@dataclass(frozen=True)
class PipelineInputs:
    """CT (HU) and/or PET (SUV, any grid), optional organ mask and label (any grid; nearest-neighbour
    resampled onto the reference), the sha256 of each input by role and, for DICOM inputs, the series."""

    ct: Volume | None = None
    pet: Volume | None = None
    organ_mask: Volume | None = None
    label: Volume | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    dicom: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Role -> the DICOM series it was read from (``files`` in slice order, UIDs); NIfTI inputs: absent."""

    @classmethod
    def from_case(cls, case: Case) -> PipelineInputs:
        """The inputs of a loaded cohort case (:func:`autopaint.data.cohorts.load_case`)."""
        return cls(ct=case.ct, pet=case.pet, organ_mask=case.organ_mask, label=case.label)


@dataclass(frozen=True)
class PipelineParams:
    """``preset`` thorax|headneck|custom picks the automatic OOI (lungs, head-and-neck region, body);
    None = the model's own preset (its checkpoint's preprocessing; thorax when it has none). The CT
    window and every other preprocessing parameter always come from the checkpoint. ``mode``
    fast|exact; ``threshold`` None = model card default (else :data:`thresholds.FALLBACK_THRESHOLD`);
    ``screen_level`` None = the card's ``screen_level`` (else the volume's own fallback); ``profile``
    "default" (the model card's measured accuracy configuration, :mod:`.profile`) or "paper" (the
    paper's search and residual-threshold mask); ``search``/``delineation``/``hotspot``: explicit
    parts that replace the profile's; ``sources``: fast-mode sources to use (None = all; ablations)."""

    preset: str | None = None
    mode: Mode = "fast"
    threshold: float | None = None
    screen_level: float | None = None
    profile: Profile = "default"
    search: SearchParams | None = None
    delineation: DelineationParams | None = None
    hotspot: HotspotGate | None = None
    write_preview: bool = True
    sources: tuple[str, ...] | None = None
    dicom_out: bool | None = None
    """DICOM SEG + RTSTRUCT of the mask on the CT series: None = when the CT was a DICOM series."""

    def accuracy(self, inpainter: InpainterLike) -> Accuracy:
        """The resolved accuracy configuration for a model. Exact mode always runs the paper's
        exhaustive sweep: a hot-spot-only search becomes "both" (sweep + hot spots) there."""
        acc = resolve(self.profile, inpainter.card, self.search, self.delineation, self.hotspot,
                      inpainter.default_threshold)
        if self.mode == "exact" and acc.search.candidates == "hotspot":
            acc = replace(acc, search=replace(acc.search, candidates="both"))
        return acc

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "mode": self.mode, "threshold": self.threshold,
                "screen_level": self.screen_level, "profile": self.profile,
                "write_preview": self.write_preview,
                "sources": None if self.sources is None else sorted(self.sources)}


@dataclass
class PipelineResult:
    """Paths of the written files, the report dict, the threshold used, the lesion rows, and the
    reference-grid arrays ``mask`` (uint8 (I, J, K)) and ``residual`` (float32 (I, J, K))."""

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any]
    threshold: float
    lesions: list[dict[str, Any]]
    mask: np.ndarray
    residual: np.ndarray
    engine: AutoinpaintResult


def load_inputs(ct_path: str | Path | None = None, pet_path: str | Path | None = None,
                organ_mask_path: str | Path | None = None, label_path: str | Path | None = None,
                suv: Mapping[str, Any] | None = None, suv_already: bool | None = None,
                known_sha256: Mapping[str, str] | None = None, series_uids: Mapping[str, str] | None = None,
                check_units: bool = True) -> PipelineInputs:
    """Validate, read and hash the inputs; the PET in SUV by one rule for every path.

    CT and PET: a NIfTI file or a DICOM series folder (:func:`imaging.io.read_dicom_series`, checked
    geometry; ``series_uids[role]`` picks one series of several); masks and labels: NIfTI. NIfTI files
    are validated header first (:func:`imaging.validate.validate_nifti`). ``known_sha256``: roles read
    and hashed already (the service's stored inputs).

    PET units: the one rule of :func:`imaging.suv.pet_in_suv` (DICOM headers, or the caller's
    statement for a NIfTI: ``suv_already`` / the Bq/mL ``suv`` tags; then the plausibility guard unless
    ``check_units`` is False). The calibration (factor, inputs, source) is in
    ``pet.meta["suv_calibration"]``.
    """
    from autopaint.imaging.suv import pet_in_suv

    check_roles(None, [r for r, p in (("ct", ct_path), ("pet", pet_path)) if p is not None])
    known, uids = dict(known_sha256 or {}), dict(series_uids or {})
    vols: dict[str, Volume | None] = {}
    hashes: dict[str, str] = {}
    dicom: dict[str, dict[str, Any]] = {}
    roles: tuple[tuple[str, str | Path | None, Role], ...] = (
        ("ct", ct_path, "ct"), ("pet", pet_path, "pet"), ("organ_mask", organ_mask_path, "mask"),
        ("label", label_path, "mask"))
    for role, path, vrole in roles:
        if path is None:
            vols[role] = None
        elif Path(path).is_dir() and role in ("ct", "pet"):
            vols[role], dicom[role] = _read_series(role, Path(path), uids.get(role))
            hashes[role] = known.get(role) or _series_sha256(dicom[role]["files"])
        else:
            vols[role], hashes[role] = _read_nifti(role, Path(path), vrole, known.get(role))
    pet = vols["pet"]
    if pet is not None:
        pet = pet_in_suv(pet, dicom.get("pet"), suv, suv_already, check_units)
    return PipelineInputs(ct=vols["ct"], pet=pet, organ_mask=vols["organ_mask"], label=vols["label"],
                          sha256=hashes, dicom={r: _series_record(t) for r, t in dicom.items()})


def _read_nifti(role: str, path: Path, vrole: Role, known: str | None) -> tuple[Volume, str]:
    from autopaint.imaging.io import read_volume
    from autopaint.imaging.validate import validate_nifti

    if not path.is_file():
        raise InvalidInput(f"{role} file not found" + (" (a DICOM folder is read for CT and PET only)"
                                                       if path.is_dir() else ""), code="file_not_found")
    if known is None:
        validate_nifti(path, role=vrole)
    return read_volume(path), known or sha256_file(path)


def _read_series(role: str, path: Path, series_uid: str | None) -> tuple[Volume, dict[str, Any]]:
    from autopaint.imaging.io import read_dicom_series

    vol, tags = read_dicom_series(path, series_uid)
    modality = str(tags.get("modality") or "").upper()
    expected = {"ct": {"CT"}, "pet": {"PT"}}[role]
    if modality and modality not in expected:
        raise InvalidInput(f"the {role.upper()} folder holds a {modality} series", code="modality_mismatch")
    return vol, tags


def _series_sha256(files: list[str]) -> str:
    """sha256 over the series' files in slice order (the sha256 of each file, concatenated)."""
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def _series_record(tags: Mapping[str, Any]) -> dict[str, Any]:
    """What the results need of a DICOM input: its files (the SEG/RTSTRUCT reference them) and UIDs."""
    return {k: tags.get(k) for k in ("files", "series_instance_uid", "study_instance_uid",
                                     "frame_of_reference_uid", "modality", "series_description")}


def _check(should_cancel: CancelFn | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("job cancelled")


def _preprocess_params(inpainter: InpainterLike, preset: str | None) -> tuple[Any, str]:
    """(PreprocessParams, OOI preset). The checkpoint's preprocessing (CT window included, e.g. a
    custom window) drives preprocessing; ``preset`` None takes the model's preset for the OOI."""
    from autopaint.imaging.preprocess import PreprocessParams, params_for

    if inpainter.preprocessing:
        pp = PreprocessParams.from_dict(inpainter.preprocessing)
        if preset is not None and pp.preset != preset:
            log.warning("model was trained with preset %s, running the %s organ mask", pp.preset, preset)
        return pp, preset or pp.preset
    preset = preset or "thorax"
    return params_for(preset, inpainter.modality, inpainter.size), preset


def organ_of_interest(inputs: PipelineInputs, reference: Volume, preset: str) -> np.ndarray:
    """Bool (I, J, K) OOI on the reference grid: the user's mask, else ``organs.ooi_mask``."""
    from autopaint.imaging.resample import mask_on_grid

    if inputs.organ_mask is not None:
        ooi = mask_on_grid(inputs.organ_mask, reference)
    elif inputs.ct is not None:
        from autopaint.imaging.organs import ooi_mask

        ooi = np.asarray(ooi_mask(inputs.ct, preset), dtype=bool)
    else:
        raise InvalidInput("PET-only input needs an organ mask (--organ-mask)", code="missing_organ_mask")
    if not ooi.any():
        raise InvalidInput("the organ-of-interest mask is empty", code="empty_organ_mask")
    return ooi


def _screen_level(params: PipelineParams, search: SearchParams, inpainter: InpainterLike) -> float | None:
    """Explicit level, else the card's when it was calibrated with the same search geometry."""
    if params.screen_level is not None:
        return params.screen_level
    card = inpainter.card or {}
    level = card.get("screen_level")
    if level is None:
        return None
    cal = (card.get("screen_calibration") or {}).get("search") or {}
    keys = ("radius_px", "stride_px", "group_period", "screen_subsample", "score")
    mine = search.to_dict()
    if cal and any(cal.get(k) != mine[k] for k in keys):
        log.warning("card screen_level was calibrated with other search parameters; using fallback")
        return None
    return float(level)


def run_pipeline(inputs: PipelineInputs, params: PipelineParams, inpainter: InpainterLike,
                 out_dir: str | Path, progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> PipelineResult:
    """Segment one case and write the result files (see :mod:`autopaint.segment.outputs`)."""
    from autopaint.imaging.preprocess import prepare_case
    from autopaint.segment.results import write_results

    out = Path(out_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    check_roles(inpainter.modality, [r for r in ("ct", "pet") if getattr(inputs, r) is not None])
    pp, preset = _preprocess_params(inpainter, params.preset)
    if pp.size != inpainter.size or pp.modality != inpainter.modality:
        raise ModelError(f"model preprocessing ({pp.modality}, {pp.size}px) does not match the network"
                         f" ({inpainter.modality}, {inpainter.size}px)", code="modality_mismatch")
    if progress:
        progress(ProgressEvent(Stage.preprocessing, 0, 1, Unit.volumes))
    case = prepare_case(inputs.ct, inputs.pet, pp)  # a PET given to a CT model still feeds SUV stats
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ooi = organ_of_interest(inputs, case.reference, preset)
    ooi_model = case.mask_to_model(ooi)
    if not ooi_model.any():
        raise InvalidInput("the organ-of-interest mask is too small for the model grid", code="empty_organ_mask")
    timings["organ_mask"] = time.perf_counter() - t0
    _check(should_cancel)

    seg = segment_prepared(case, ooi, ooi_model, params, inpainter, progress, should_cancel)
    eng, residual, mask, threshold = seg.engine, seg.residual, seg.mask, seg.threshold
    timings.update(seg.timings)
    t1 = time.perf_counter()
    ref = case.reference
    suv = case.pet_on_ref
    lesions = lesion_table(ref.with_data(mask), suv)
    metrics: dict[str, Any] | None = None
    if inputs.label is not None:
        from autopaint.imaging.resample import mask_on_grid

        lab = mask_on_grid(inputs.label, ref)
        lab_model = case.mask_to_model(lab)
        metrics = {"at_threshold": segmentation_metrics(mask > 0, lab), "sweep": sweep(residual, lab),
                   "lesionwise": lesion_metrics(mask > 0, lab, ref.voxel_volume_ml),
                   "slice_hit_rate": slice_hit_rate(eng.unions, lab_model, np.asarray(ooi_model.any(axis=(1, 2)))),
                   "tumour_slices": int(lab_model.any(axis=(1, 2)).sum()),
                   "baselines": _baseline_metrics(suv, ooi, lab)}
    timings["threshold_lesions"] = time.perf_counter() - t1
    _check(should_cancel)

    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "inputs": {"sha256": dict(inputs.sha256), "reference_shape": list(ref.shape),
                   "reference_affine": ref.affine.tolist(),
                   "format": {r: ("dicom" if r in inputs.dicom else "nifti") for r in inputs.sha256},
                   "dicom_series": {r: {k: v for k, v in d.items() if k != "files"} | {"n_files": len(d["files"])}
                                    for r, d in inputs.dicom.items()},
                   "pet_units": inputs.pet.meta.get("suv_calibration") if inputs.pet is not None else None},
        "model": {"sha256": inpainter.sha256, "modality": inpainter.modality, "size": inpainter.size,
                  "name": (inpainter.card or {}).get("name"), "flops_per_image": int(inpainter.flops_per_image)},
        "params": {**params.to_dict(), "preset": preset}, "preprocessing": pp.to_dict(),
        "accuracy": seg.accuracy.to_dict(),
        "reference_uptake": None if seg.reference is None else seg.reference.to_dict(),
        "hotspot_gate_suv": seg.gate_suv, "candidates": eng.extra.get("candidates"),
        "delineation": seg.delineated,
        "threshold": {"value": threshold, "source": seg.threshold_source},
        "screen": {"level": eng.screen_level, "source": eng.level_source},
        "forward_passes": {"total": eng.counters.total, **eng.counters.images},
        "flops": eng.flops, "geometry": eng.extra["geometry"],
        "ooi": {"slices": int(ooi_model.any(axis=(1, 2)).sum()), "voxels": int(ooi.sum())},
        "slices": eng.slices, "lesions": lesions, "metrics": metrics,
    }
    dicom_ct = inputs.dicom.get("ct") if case.reference is inputs.ct and params.dicom_out is not False else None
    files, report = write_results(out, case, eng, residual, mask, lesions, report, timings,
                                  params.write_preview, dicom_source=dicom_ct["files"] if dicom_ct else None)
    log.info("segmented: %d lesions, %d forward passes, threshold %.3f", len(lesions),
             eng.counters.total, threshold)
    return PipelineResult(out_dir=out, files=files, report=report, threshold=threshold,
                          lesions=lesions, mask=mask, residual=residual, engine=eng)


def _baseline_metrics(suv: Volume | None, ooi: np.ndarray, label: np.ndarray) -> dict[str, Any] | None:
    """Dice and lesion-wise numbers of SUV >= 2.5 and 41 % SUVmax on the same case (label given)."""
    from autopaint.segment.baselines import suv_fixed_threshold, suvmax_fraction_threshold

    if suv is None:
        return None
    s = np.asarray(suv.data)
    out = {}
    for name, m in (("suv_2.5", suv_fixed_threshold(s, ooi)), ("suvmax_41pct", suvmax_fraction_threshold(s, ooi))):
        out[name] = {"dice": segmentation_metrics(m, label)["dice"],
                     **lesion_metrics(m, label, suv.voxel_volume_ml)}
    return out


@dataclass
class Segmentation:
    """What :func:`segment_prepared` finds on a prepared case: the engine result, the residual and the
    final mask (uint8) on the reference grid, the threshold and where it came from, the resolved
    accuracy configuration, the reference uptake and hot-spot gate (SUV) when hot spots were used,
    one record per delineated lesion (None without delineation), stage timings, and the hot-spot map
    (bool (I, J, K), reference grid) when hot spots were used."""

    engine: AutoinpaintResult
    residual: np.ndarray
    mask: np.ndarray
    threshold: float
    threshold_source: str
    accuracy: Accuracy
    reference: ReferenceUptake | None
    gate_suv: float | None
    delineated: list[dict[str, float]] | None
    timings: dict[str, float]
    hot: np.ndarray | None = None


def segment_prepared(case: PreparedCase, ooi: np.ndarray, ooi_model: np.ndarray, params: PipelineParams,
                     inpainter: InpainterLike, progress: ProgressFn | None = None,
                     should_cancel: CancelFn | None = None, engine: AutoinpaintResult | None = None,
                     ) -> Segmentation:
    """Autoinpaint a prepared case and turn the residual into the final mask (no files written).

    ``ooi`` bool (I, J, K) on the reference grid, ``ooi_model`` its (K, N, N) model-grid version.
    ``engine``: a result of the same case and search to reuse (calibration varies only what follows)."""
    acc = params.accuracy(inpainter)
    screen_level = _screen_level(params, acc.search, inpainter)
    pet_channel = case.params.channels.index("pet") if "pet" in case.params.channels else None
    hot_ref, hot, reference, gate = hot_spots(case, ooi, acc)
    eng = engine or autoinpaint(case.images, ooi_model, inpainter, acc.search, params.mode,
                                screen_level=screen_level, progress=progress, should_cancel=should_cancel,
                                sources=None if params.sources is None else frozenset(params.sources),
                                hot=hot, pet_channel=pet_channel)
    timings = {f"autoinpaint_{k}": v for k, v in eng.timings.items()}
    _check(should_cancel)
    t1 = time.perf_counter()
    residual = np.clip(case.to_reference(eng.residual, order=1), 0.0, 1.0).astype(np.float32)
    residual[~ooi] = 0.0
    threshold, thr_source = resolve_threshold(params.threshold, acc.threshold)
    det = residual > threshold
    if hot_ref is not None and acc.search.candidates == "hotspot":
        det &= hot_ref  # a hot-spot detection is where the scan is hot, not anywhere in its circle
    mask, delineated = _final_mask(det, case, ooi, acc)
    timings["delineate"] = time.perf_counter() - t1
    return Segmentation(eng, residual, mask, threshold, thr_source, acc, reference, gate, delineated, timings,
                        hot_ref)


def hot_spots(case: PreparedCase, ooi: np.ndarray, acc: Accuracy
               ) -> tuple[np.ndarray | None, np.ndarray | None, ReferenceUptake | None, float | None]:
    """(hot-spot map on the reference grid, on the model grid (K, N, N), reference uptake, gate SUV)
    when the search uses hot spots (all None otherwise)."""
    if acc.search.candidates == "sweep" or case.pet_on_ref is None:
        return None, None, None, None
    suv = np.asarray(case.pet_on_ref.data)
    ct = None if case.ct_on_ref is None else np.asarray(case.ct_on_ref.data)
    ref = reference_uptake(suv, ct, case.reference.affine)
    gate = acc.hotspot.suv(ref)
    hot = hot_map(suv, ooi, gate)
    log.info("hot spots: gate %.2f SUV (%s reference %.2f +- %.2f), %d voxels", gate, ref.region, ref.mean,
             ref.sd, int(hot.sum()))
    return hot, case.slice_to_model(hot.astype(np.float32), order=1) >= 0.5, ref, float(gate)


def _final_mask(det: np.ndarray, case: PreparedCase, ooi: np.ndarray,
                acc: Accuracy) -> tuple[np.ndarray, list[dict[str, float]] | None]:
    """The detections, each delineated and consolidated when the configuration says so (uint8)."""
    if acc.delineation is None:
        return det.astype(np.uint8), None
    suv = None if case.pet_on_ref is None else np.asarray(case.pet_on_ref.data)
    ct = None if case.ct_on_ref is None else np.asarray(case.ct_on_ref.data)
    mask, recs = delineate(det, suv, ooi, case.reference.spacing, acc.delineation, ct)
    return mask.astype(np.uint8), recs
