"""CLI commands for the model area: ``autopaint train`` and ``autopaint models list|show NAME``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the main app."""
    app.command("train")(train)
    models = typer.Typer(help="List and inspect trained models.", no_args_is_help=True)
    models.command("list")(models_list)
    models.command("show")(models_show)
    app.add_typer(models, name="models")


def train(
    dataset: Path = typer.Option(..., "--dataset", help="Slice dataset directory (manifest.json + npz)."),
    out: Path = typer.Option(..., "--out", help="Model directory, e.g. models/<name>."),
    arch: str = typer.Option("gconv_lap", "--arch", help="gconv_lap | gconv | pconv"),
    modality: str = typer.Option("petct", "--modality", help="ct | pet | petct (channels of a petct dataset)"),
    preset: str = typer.Option("demo", "--preset", help="demo | paper"),
    epochs: int = typer.Option(10, "--epochs"),
    phase2_epoch: int = typer.Option(-1, "--phase2-epoch", help="First epoch of phase 2 (default epochs/2)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    resume: str = typer.Option(None, "--resume", help="last.pt (or its directory) to continue from."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps in total."),
    time_budget_min: float = typer.Option(None, "--time-budget-min", help="Stop gracefully after N minutes."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, "--seed"),
    vgg_weights: str = typer.Option(None, "--vgg-weights", help="torchvision VGG16 ImageNet state_dict file."),
    perceptual: str = typer.Option("off", "--perceptual", help="off | random (ignored with --vgg-weights)"),
    max_val: int = typer.Option(256, "--max-val", help="Validation images per epoch (fixed holes)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0 = torch's default)."),
) -> None:
    """Train an inpainting network on healthy slices (paper §2.4)."""
    from autopaint.model.train import TrainConfig
    from autopaint.model.train import train as run_train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    cfg = TrainConfig(
        dataset=str(dataset), out=str(out), arch=arch, modality=modality, preset=preset, epochs=epochs,
        batch_size=batch_size, phase2_epoch=None if phase2_epoch < 0 else phase2_epoch, resume=resume,
        max_steps=max_steps, time_budget_min=time_budget_min, device=device, seed=seed,
        vgg_weights=vgg_weights, perceptual=perceptual, max_val=max_val,
    )
    summary = run_train(cfg, progress=not quiet)
    val = summary.get("val_metrics") or {}
    print(
        f"{out}: {summary['steps']} steps, {summary['epochs_completed']} epochs ({summary['stop_reason']}), "
        f"best epoch {summary['best_epoch']}: PSNR {val.get('psnr', float('nan')):.2f} dB, "
        f"SSIM {val.get('ssim', float('nan')):.4f}, MSE {val.get('mse', float('nan')):.2f}"
    )


def models_list(root: Path = typer.Option(None, "--root", help="Models directory (default: repo models/).")) -> None:
    """List trained models (name, architecture, modality, size, validation PSNR/SSIM)."""
    from autopaint.model_cards import list_cards

    cards = [{**c["card"], "name": c["name"]} for c in list_cards(root) if c["has_weights"]]
    if not cards:
        print("no models")
        return
    for c in cards:
        val = c.get("validation") or {}
        print(
            f"{c['name']:<36} {c.get('architecture', '?'):<10} {c.get('modality', '?'):<6} "
            f"{c.get('image_size', '?')!s:>4}px  PSNR {val.get('psnr', float('nan')):.2f}  "
            f"SSIM {val.get('ssim', float('nan')):.4f}  threshold {c.get('default_threshold')}"
        )


def models_show(
    name: str = typer.Argument(..., help="Model name, directory or model.pt path."),
    root: Path = typer.Option(None, "--root"),
) -> None:
    """Print a model's card (and checkpoint summary) as JSON."""
    from autopaint.model_cards import read_card, resolve_weights

    path = resolve_weights(name, root)
    card = read_card(path.parent)
    card["path"] = str(path)
    print(json.dumps(card, indent=2, sort_keys=True))
