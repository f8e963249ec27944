"""CLI commands of the data area: ``autopaint phantom`` and ``autopaint dataset build``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from autopaint.errors import InvalidInput


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise InvalidInput(f"--split must be three comma-separated numbers, got {text!r}", code="bad_split") from exc
    if len(parts) != 3:
        raise InvalidInput(f"--split must be three comma-separated numbers, got {text!r}", code="bad_split")
    return parts[0], parts[1], parts[2]


def _parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise InvalidInput(f"--ct-window must be 'lo,hi' in HU, got {text!r}", code="bad_window") from exc
    return lo, hi


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the main app."""

    @app.command("phantom")
    def phantom(
        kind: str = typer.Option("thorax", "--kind", help="thorax | headneck"),
        n: int = typer.Option(..., "--n", help="Number of cases."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed (case i uses an independent stream)."),
        out: Path = typer.Option(..., "--out", help="Output folder (one sub-folder per case + cases.json)."),
        size: str = typer.Option("full", "--size", help="full (512^2, 3 mm slices) | small (256^2 x 40)"),
        healthy_fraction: float = typer.Option(0.0, "--healthy-fraction", help="Fraction of tumour-free cases."),
    ) -> None:
        """Write synthetic PET/CT phantoms: <case>/{ct,pet,label}.nii.gz and cases.json."""
        from autopaint.data.phantom import write_cohort

        _logging()
        entries = write_cohort(kind, n, seed, out, size, healthy_fraction)
        n_healthy = sum(bool(e["healthy"]) for e in entries)
        n_tum = sum(int(e["n_tumours"]) for e in entries)
        print(f"wrote {len(entries)} {kind} cases ({n_healthy} healthy, {n_tum} tumours) to {out}")

    dataset_app = typer.Typer(help="Healthy-slice training sets (npz + manifest).", no_args_is_help=True)
    app.add_typer(dataset_app, name="dataset")

    @dataset_app.command("build")
    def build(
        cohort: Path = typer.Option(..., "--cohort", help="Phantom folder, ibsi-sts or openkbp-hn-ct folder."),
        preset: str = typer.Option("thorax", "--preset", help="thorax | headneck | custom (CT window, organ mask)"),
        modality: str = typer.Option("petct", "--modality", help="ct | pet | petct"),
        size: int = typer.Option(128, "--size", help="Model image size N (128 | 256 | 512)."),
        out: Path = typer.Option(..., "--out", help="Output folder."),
        margin_slices: int = typer.Option(2, "--margin-slices", help="Healthy slices keep this distance from tumour slices."),
        seed: int = typer.Option(0, "--seed", help="Seed of the patient-level split."),
        split: str = typer.Option("0.7,0.1,0.2", "--split", help="train,val,test fractions (by patient)."),
        ct_window: str | None = typer.Option(None, "--ct-window", help="lo,hi HU (required with --preset custom)."),
    ) -> None:
        """Preprocess a cohort and store its healthy slices split by patient (train/val/test npz)."""
        from autopaint.data.datasets import build_dataset

        _logging()
        manifest = build_dataset(cohort, preset, modality, size, out, margin_slices=margin_slices,
                                 split=_parse_split(split), seed=seed, ct_window=_parse_window(ct_window))
        counts = {k: v["n_slices"] for k, v in manifest["splits"].items()}
        print(json.dumps({"out": str(out), "slices": counts,
                          "patients": {k: len(v["cases"]) for k, v in manifest["splits"].items()}}))
