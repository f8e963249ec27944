"""CLI commands for the segment area: ``autopaint segment`` and ``autopaint calibrate-screen``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from autopaint.errors import InvalidInput


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the main app."""
    app.command("segment")(segment)
    app.command("calibrate-screen")(calibrate_screen_cmd)


def _suv_tags(suv_already: bool, weight_kg: float | None, dose: float | None, delay_s: float | None,
              half_life_s: float | None) -> dict[str, Any] | None:
    given = [v is not None for v in (weight_kg, dose, delay_s)]
    if suv_already and any(given):
        raise InvalidInput("give either --suv-already or the SUV tags, not both", code="bad_arguments")
    if any(given) and not all(given):
        raise InvalidInput("SUV conversion needs --weight-kg, --injected-dose-bq and --delay-s",
                           code="missing_suv_info")
    if not any(given):
        return None
    tags: dict[str, Any] = {"weight_kg": weight_kg, "injected_dose_bq": dose, "delay_s": delay_s,
                            "units": "BQML"}
    if half_life_s is not None:
        tags["half_life_s"] = half_life_s
    return tags


def segment(
    ct: Path = typer.Option(None, "--ct", help="CT NIfTI (HU)."),
    pet: Path = typer.Option(None, "--pet", help="PET NIfTI (SUV, or Bq/ml with the SUV options)."),
    suv_already: bool = typer.Option(False, "--suv-already", help="The PET voxels are SUV already."),
    weight_kg: float = typer.Option(None, "--weight-kg"),
    injected_dose_bq: float = typer.Option(None, "--injected-dose-bq"),
    delay_s: float = typer.Option(None, "--delay-s", help="Injection to scan start (s)."),
    half_life_s: float = typer.Option(None, "--half-life-s", help="Default: F-18."),
    organ_mask: Path = typer.Option(None, "--organ-mask", help="Organ-of-interest mask (else automatic)."),
    label: Path = typer.Option(None, "--label", help="Ground truth: adds the threshold sweep and metrics."),
    preset: str = typer.Option("thorax", "--preset", help="thorax | headneck"),
    model: str = typer.Option("thorax-petct-gconvlap-128", "--model", help="Model name or path."),
    mode: str = typer.Option("fast", "--mode", help="fast | exact (the paper's full search)."),
    threshold: float = typer.Option(None, "--threshold", help="Residual threshold (default: model card)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Segment tumours in a CT, PET or PET/CT by autoinpainting (paper §2.5)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autopaint.model.inpainter import Inpainter
    from autopaint.segment.pipeline import PipelineParams, load_inputs, run_pipeline
    from autopaint.segment.types import ProgressEvent

    if mode not in ("fast", "exact"):
        raise InvalidInput(f"--mode must be fast or exact, got {mode!r}", code="bad_arguments")
    if preset not in ("thorax", "headneck"):
        raise InvalidInput(f"--preset must be thorax or headneck, got {preset!r}", code="bad_arguments")
    if ct is None and pet is None:
        raise InvalidInput("give --ct and/or --pet", code="missing_input")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tags = _suv_tags(suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s)
    if pet is not None and not suv_already and tags is None:
        raise InvalidInput("the PET needs --suv-already or --weight-kg/--injected-dose-bq/--delay-s",
                           code="missing_suv_info")
    inputs = load_inputs(ct, pet, organ_mask, label, suv=tags, suv_already=suv_already)
    inpainter = Inpainter.load(model, device=device)
    params = PipelineParams(preset=preset, mode=mode, threshold=threshold)  # type: ignore[arg-type]
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
    if rep.get("metrics"):
        at, best = rep["metrics"]["at_threshold"], rep["metrics"]["sweep"]["best"]
        print(f"Dice {at['dice']:.3f} at {result.threshold:.2f}; best [{best['dice']:.3f}] at {best['threshold']:.2f}")


def calibrate_screen_cmd(
    model: str = typer.Option("thorax-petct-gconvlap-128", "--model", help="Model name or path."),
    dataset: Path = typer.Option(..., "--dataset", help="Slice dataset directory (val.npz with images, ooi)."),
    split: str = typer.Option("val", "--split"),
    max_slices: int = typer.Option(400, "--max-slices"),
    device: str = typer.Option("auto", "--device"),
    write: bool = typer.Option(False, "--write", help="Store screen_level in the model's card.json."),
) -> None:
    """Calibrate fast mode's screening level on healthy slices (quantile of the best grouped score)."""
    import numpy as np

    from autopaint.model.checkpoint import read_card, write_card
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
        if inp.path is None:
            raise InvalidInput("model path unknown; cannot write its card", code="bad_arguments")
        card = read_card(inp.path.parent)
        card["screen_level"] = cal["screen_level"]
        card["screen_calibration"] = cal
        write_card(inp.path.parent, card)
        print(f"wrote screen_level to {inp.path.parent / 'card.json'}")
