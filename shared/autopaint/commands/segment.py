"""CLI commands for the segment area: ``autopaint segment``, ``autopaint calibrate-screen`` and
``autopaint calibrate-threshold``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from autopaint.errors import InvalidInput
from autopaint.imaging.modality import check_roles
from autopaint.model_cards import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the main app."""
    app.command("segment")(segment)
    app.command("calibrate-screen")(calibrate_screen_cmd)
    app.command("calibrate-threshold")(calibrate_threshold_cmd)


# The input and PET-units options, shared by ``segment``, ``validate`` and the service's ``submit``.
CT_OPTION = typer.Option(None, "--ct", help="CT: a NIfTI file (HU) or a DICOM series folder.")
PET_OPTION = typer.Option(None, "--pet", help="PET: a DICOM series folder (units from its headers) or a NIfTI "
                          "file with its units stated (--suv-already, or the Bq/mL options).")
CT_SERIES_OPTION = typer.Option(None, "--ct-series-uid", help="Which series of a CT folder holding several.")
PET_SERIES_OPTION = typer.Option(None, "--pet-series-uid", help="Which series of a PET folder holding several.")
SUV_ALREADY_OPTION = typer.Option(False, "--suv-already", help="The PET NIfTI voxels are SUV (body weight).")
WEIGHT_OPTION = typer.Option(None, "--weight-kg", help="Bq/mL PET: patient weight (kg).")
DOSE_OPTION = typer.Option(None, "--injected-dose-bq", help="Bq/mL PET: injected dose (Bq).")
DELAY_OPTION = typer.Option(None, "--delay-s", help="Bq/mL PET: injection to scan start (s).")
HALF_LIFE_OPTION = typer.Option(None, "--half-life-s", help="Bq/mL PET: tracer half-life (s; default F-18).")
IMPLAUSIBLE_OPTION = typer.Option(False, "--allow-implausible-units",
                                  help="Run even when the PET values cannot be SUV (checked by default).")


def suv_inputs(pet: Path | None, suv_already: bool, weight_kg: float | None, dose: float | None,
               delay_s: float | None, half_life_s: float | None, check_units: bool = True) -> Any:
    """The caller's statement of the PET units (``--suv-already`` or the Bq/mL options) as
    :class:`autopaint.contracts.SuvInputs`, checked by its one rule (a DICOM PET folder needs none)."""
    from pydantic import ValidationError

    from autopaint.contracts import SuvInputs

    bqml = any(v is not None for v in (weight_kg, dose, delay_s))
    if suv_already and bqml:
        raise InvalidInput("give either --suv-already or the Bq/mL options, not both", code="bad_arguments")
    try:
        suv = SuvInputs(suv_already=True if suv_already else (False if bqml else None), weight_kg=weight_kg,
                        injected_dose_bq=dose, delay_s=delay_s, half_life_s=half_life_s, check_units=check_units)
    except ValidationError as exc:
        raise InvalidInput(f"bad SUV option: {exc.errors()[0]['loc'][0]} {exc.errors()[0]['msg']}",
                           code="missing_suv_info") from exc
    return suv.require_complete(pet_is_dicom=pet is None or pet.is_dir())


def segment(
    ct: Path = CT_OPTION,
    pet: Path = PET_OPTION,
    ct_series_uid: str = CT_SERIES_OPTION,
    pet_series_uid: str = PET_SERIES_OPTION,
    suv_already: bool = SUV_ALREADY_OPTION,
    weight_kg: float = WEIGHT_OPTION,
    injected_dose_bq: float = DOSE_OPTION,
    delay_s: float = DELAY_OPTION,
    half_life_s: float = HALF_LIFE_OPTION,
    organ_mask: Path = typer.Option(None, "--organ-mask", help="Organ-of-interest mask (else automatic)."),
    label: Path = typer.Option(None, "--label", help="Ground truth: adds the threshold sweep and metrics."),
    preset: str = typer.Option(None, "--preset",
                               help="Organ mask: thorax | headneck | custom (body); default: the model's preset."),
    model: str = typer.Option(None, "--model", help=f"Model name or path (default {DEFAULT_MODEL})."),
    mode: str = typer.Option("fast", "--mode", help="fast | exact (the paper's full search)."),
    profile: str = typer.Option("default", "--profile",
                                help="default (the model card's measured configuration) | paper (the paper's search)."),
    threshold: float = typer.Option(None, "--threshold", help="Residual threshold (default: model card)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    dicom_out: bool = typer.Option(None, "--dicom-out/--no-dicom-out",
                                   help="Also write the mask as DICOM SEG + RTSTRUCT on the CT series "
                                   "(default: when the CT is a DICOM series; needs one)."),
    allow_implausible_units: bool = IMPLAUSIBLE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Segment tumours in a CT, PET or PET/CT by autoinpainting (paper §2.5)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autopaint.model.inpainter import Inpainter
    from autopaint.progress import ProgressEvent
    from autopaint.segment.pipeline import PipelineParams, load_inputs, run_pipeline

    if mode not in ("fast", "exact"):
        raise InvalidInput(f"--mode must be fast or exact, got {mode!r}", code="bad_arguments")
    if profile not in ("default", "paper"):
        raise InvalidInput(f"--profile must be default or paper, got {profile!r}", code="bad_arguments")
    if preset not in (None, "thorax", "headneck", "custom"):
        raise InvalidInput(f"--preset must be thorax, headneck or custom, got {preset!r}", code="bad_arguments")
    check_roles(None, [r for r, v in (("ct", ct), ("pet", pet)) if v is not None])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    suv = suv_inputs(pet, suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s,
                     check_units=not allow_implausible_units)
    if dicom_out and (ct is None or not ct.is_dir()):
        raise InvalidInput("--dicom-out needs the CT as a DICOM series folder (a NIfTI input gives NIfTI "
                           "results only)", code="bad_arguments")
    uids = {r: u for r, u in (("ct", ct_series_uid), ("pet", pet_series_uid)) if u}
    inputs = load_inputs(ct, pet, organ_mask, label, suv=suv.suv_tags(), suv_already=suv.suv_already,
                         series_uids=uids, check_units=suv.check_units)
    inpainter = Inpainter.load(model, device=device)
    params = PipelineParams(preset=preset, mode=mode, threshold=threshold, profile=profile,  # type: ignore[arg-type]
                            dicom_out=dicom_out)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(ev: ProgressEvent) -> None:
            if ev.stage not in tasks:
                tasks[ev.stage] = bar.add_task(f"{ev.stage} ({ev.unit})", total=ev.total)
            bar.update(tasks[ev.stage], completed=ev.done, total=ev.total)

        result = run_pipeline(inputs, params, inpainter, out, progress=on_progress)
    rep = result.report
    print(f"{out}: {len(result.lesions)} lesion(s), threshold {result.threshold:.3f} "
          f"({rep['threshold']['source']}), {rep['forward_passes']['total']} images inpainted, "
          f"{rep['flops'] / 1e12:.2f} TFLOP, mode {mode}")
    units = rep["inputs"].get("pet_units")
    if units:
        print(f"PET units: {units['source']} (SUV = value x {units['factor']:.6g})")
    if "mask.seg.dcm" in rep.get("outputs", {}):
        print(f"DICOM: {out / 'mask.seg.dcm'} (SEG) and {out / 'mask.rtstruct.dcm'} (RTSTRUCT) on the CT series")
    if rep.get("metrics"):
        at, best = rep["metrics"]["at_threshold"], rep["metrics"]["sweep"]["best"]
        lw = rep["metrics"]["lesionwise"]
        print(f"Dice {at['dice']:.3f} at {result.threshold:.2f}; best residual threshold [{best['dice']:.3f}] at "
              f"{best['threshold']:.2f}; lesions found {lw['lesions_found']}/{lw['lesions']}, "
              f"false-positive lesions {lw['fp_components']} ({lw['fp_volume_ml']:.2f} ml)")


def calibrate_screen_cmd(
    model: str = typer.Option(None, "--model", help=f"Model name or path (default {DEFAULT_MODEL})."),
    dataset: Path = typer.Option(..., "--dataset", help="Slice dataset directory (val.npz with images, ooi)."),
    split: str = typer.Option("val", "--split"),
    max_slices: int = typer.Option(400, "--max-slices"),
    device: str = typer.Option("auto", "--device"),
    write: bool = typer.Option(False, "--write", help="Store screen_level in the model's card.json."),
) -> None:
    """Calibrate fast mode's screening level on healthy slices (quantile of the best grouped score)."""
    import numpy as np

    from autopaint.model.dataset_io import channel_index, read_manifest
    from autopaint.model.inpainter import Inpainter
    from autopaint.segment.fast import calibrate_screen

    npz = np.load(dataset / f"{split}.npz")
    manifest = read_manifest(dataset)
    inp = Inpainter.load(model, device=device)
    ds_mod = str((manifest.get("preprocessing") or {}).get("modality", "petct"))
    ch = channel_index(ds_mod, int(npz["images"].shape[1]), inp.modality)
    idx = np.linspace(0, len(npz["images"]) - 1, min(max_slices, len(npz["images"]))).astype(int)
    images = npz["images"][idx][:, ch].astype(np.float32) / 255.0
    ooi = npz["ooi"][idx].astype(bool)
    cal = calibrate_screen(inp, images, ooi)
    print(json.dumps(cal, indent=2))
    if write:
        print(f"wrote screen_level to {_update_card(inp, screen_level=cal['screen_level'], screen_calibration=cal)}")


def _update_card(inp: Any, **fields: Any) -> Path:
    """Set calibration ``fields`` on the loaded model's card.json (keeping its sha256); returns the path."""
    if inp.path is None:
        raise InvalidInput("model path unknown; cannot write its card", code="bad_arguments")
    from autopaint.model.checkpoint import write_card
    from autopaint.model_cards import read_card

    card = read_card(inp.path.parent)
    card.update(fields)
    write_card(inp.path.parent, card)
    return inp.path.parent / "card.json"


def _cohort_cases(cohort: Path, ids: list[str]) -> list[Any]:
    from autopaint.data.cohorts import discover

    refs = {r.case_id: r for r in discover(cohort)}
    missing = [c for c in ids if c not in refs]
    if missing:
        raise InvalidInput(f"cases {missing} not in cohort {cohort}", code="bad_arguments")
    return [refs[c] for c in ids]


def _lazy_inputs(refs: list[Any]) -> Any:
    """(case id, PipelineInputs) for each cohort case, read one at a time (full volumes are large)."""
    from autopaint.data.cohorts import load_case
    from autopaint.segment.pipeline import PipelineInputs

    for ref in refs:
        c = load_case(ref)
        yield c.case_id, PipelineInputs.from_case(c)


def calibrate_threshold_cmd(
    model: str = typer.Option(None, "--model", help=f"Model name or path (default {DEFAULT_MODEL})."),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder with labels (phantom, ibsi-sts)."),
    cases: str = typer.Option(None, "--cases", help="Comma-separated case ids."),
    split: str = typer.Option(None, "--split", help="Take the case ids of this split from the model card."),
    mode: str = typer.Option("fast", "--mode", help="fast | exact"),
    preset: str = typer.Option(None, "--preset", help="Organ mask preset; default: the model's."),
    out: Path = typer.Option(None, "--out", help="Keep each case's results here (default: a temp dir)."),
    device: str = typer.Option("auto", "--device"),
    write: bool = typer.Option(False, "--write", help="Store default_threshold + threshold_calibration in card.json."),
) -> None:
    """Pick the single global threshold (sweep 0..0.8 step 0.02) maximising mean Dice on validation patients."""
    import tempfile

    from autopaint.model.inpainter import Inpainter
    from autopaint.segment.calibrate import calibrate_threshold, split_cases
    from autopaint.segment.pipeline import PipelineParams

    if (cases is None) == (split is None):
        raise InvalidInput("give exactly one of --cases or --split", code="bad_arguments")
    if mode not in ("fast", "exact"):
        raise InvalidInput(f"--mode must be fast or exact, got {mode!r}", code="bad_arguments")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inp = Inpainter.load(model, device=device)
    ids = [c.strip() for c in cases.split(",") if c.strip()] if cases else split_cases(inp.card, split)
    refs = _cohort_cases(cohort, ids)
    params = PipelineParams(preset=preset, mode=mode, threshold=None, write_preview=False)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="autopaint-calib-") as tmp:
        cal = calibrate_threshold(inp, _lazy_inputs(refs), params, out or Path(tmp),
                                  on_case=lambda cid, r: print(f"{cid}: {json.dumps(r)}", flush=True))
    cal["cohort"] = str(cohort)
    cal["model_sha256"] = inp.sha256
    print(f"threshold {cal['threshold']:.2f}: mean Dice {cal['mean_dice']:.3f} over {len(cal['cases'])} "
          f"tumour case(s) {cal['cases']} (mode {mode})")
    if write:
        path = _update_card(inp, default_threshold=cal["threshold"], threshold_calibration=cal)
        print(f"wrote default_threshold {cal['threshold']:.2f} to {path}")
