"""``autopaint demo`` (the README's main command, ``make demo`` / ``scripts/demo.sh``).

Starts the embedded service (SQLite + kombu sqla broker + local storage, one real Celery worker
process), generates a small synthetic thorax PET/CT with its tumour label, submits it with the
Python client, follows the progress, downloads the results, prints the lesions and the Dice
against the phantom's label, and stops the service.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _case(state_dir: Path, seed: int) -> Path:
    from autopaint.data.phantom import write_cohort

    root = state_dir / "phantom"
    existing = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not existing:
        write_cohort("thorax", 1, seed, root, "small", 0.0)
        existing = sorted(p for p in root.glob("*") if p.is_dir())
    return existing[0]


def run_demo(state_dir: Path, port: int = 8765, seed: int = 0, model: str | None = None) -> int:
    """Run the demo in ``state_dir``; returns the process exit code (0 = the job succeeded)."""
    from rich.console import Console
    from rich.markup import escape

    from autopaint.client import Client, lesion_lines
    from autopaint.client_cohort import rich_job_progress
    from services.embedded import EmbeddedService, embedded_queue, ensure_api_key, prepare

    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTOPAINT_STATE_DIR", str(state_dir / "service"))
    from autopaint.settings import Settings

    settings = Settings()
    settings.queue = embedded_queue(settings)
    console.print(f"[bold]1/5[/] preparing the embedded service in {settings.state_dir}")
    prepare(settings)
    key = ensure_api_key(settings, name="demo")
    service = EmbeddedService(settings, port=port, workers=1, log_dir=settings.state_dir / "logs")
    console.print("[bold]2/5[/] generating a small synthetic thorax PET/CT (phantom) with its label")
    case = _case(state_dir, seed)
    with service.running(), Client(service.url, key) as client:
        client.wait_ready()
        console.print(f"[bold]3/5[/] service on {service.url} (worker on queue '{settings.queue}'); submitting")
        job = client.submit(ct=case / "ct.nii.gz", pet=case / "pet.nii.gz", label=case / "label.nii.gz",
                            params={"preset": "thorax", "suv_already": True, **({"model": model} if model else {})},
                            case_name=case.name)
        console.print(f"      job {job['id']}")
        with rich_job_progress() as on_progress:
            job = client.wait(job["id"], on_progress=on_progress, poll_s=0.5)
        if job["state"] != "succeeded":
            detail = escape(f"[{job.get('error_code')}] {job.get('error_message')}")
            console.print(f"[red]job {job['state']}[/]: {detail}")
            if job.get("error_code") == "model_not_found":
                console.print("no trained model in models/: train or fetch the demo model first")
            return 1
        out = state_dir / "results"
        console.print(f"[bold]4/5[/] downloading the results to {out}")
        files = client.download(job["id"], out)
        console.print("      " + ", ".join(sorted(p.name for p in files)))
    console.print("[bold]5/5[/] lesions found (service stopped)")
    for line in lesion_lines(out):
        console.print("      " + line)
    report = json.loads((out / "report.json").read_text())
    at = ((report.get("metrics") or {}).get("at_threshold") or {})
    if "dice" in at:
        metrics = report["metrics"]
        lw = metrics.get("lesionwise") or {}
        console.print(f"      Dice vs the phantom label: [bold]{at['dice']:.3f}[/] ({report['accuracy']['source']} "
                      f"configuration); lesions found {lw.get('lesions_found')}/{lw.get('lesions')}, "
                      f"false-positive lesions {lw.get('fp_components')}")
        base = (metrics.get("baselines") or {}).get("suv_2.5")
        if base:
            console.print(f"      the same scan by SUV >= 2.5 in the organ of interest: Dice {base['dice']:.3f}, "
                          f"false-positive lesions {base['fp_components']}")
    return 0
