"""Service commands: ``autopaint serve``, ``worker``, ``submit``, ``cohort submit``, ``demo``.

Heavy imports (uvicorn, celery, the API, the client) happen inside the commands, so ``--help``
stays fast; the API process never imports torch (the worker imports it when its first job runs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from autopaint.commands import segment as opts

cohort_app = typer.Typer(name="cohort", help="Submit and follow whole cohorts of cases.",
                         no_args_is_help=True)

_URL = typer.Option(None, "--url", envvar="AUTOPAINT_URL", help="API base URL (default http://127.0.0.1:8000)")
_KEY = typer.Option(None, "--api-key", envvar="AUTOPAINT_API_KEY", help="API key")
_CALLBACK = typer.Option(None, "--callback-url", help="POSTed by the server (signed JSON; secret: "
                         "`autopaint callback-secret`) when the job ends")


def _settings(state_dir: Path | None = None) -> Any:
    if state_dir is not None:
        os.environ["AUTOPAINT_STATE_DIR"] = str(state_dir)
    from autopaint.settings import Settings

    return Settings()


def _params(params_json: str | None, **fields: Any) -> dict[str, Any]:
    params = json.loads(params_json) if params_json else {}
    params.update({k: v for k, v in fields.items() if v is not None})
    return params


def _units_in(params_json: str | None, *flags: object) -> bool:
    """The ``--params`` JSON states the PET units and no units option is given: the JSON is sent as
    it is (the server applies the rule)."""
    from autopaint.contracts import SuvInputs

    if any(f not in (None, False) for f in flags):
        return False
    return bool(params_json) and any(k in SuvInputs.model_fields for k in json.loads(params_json or "{}"))


def _is_dicom(path: Path | None) -> bool:
    """A DICOM series given as a folder or as a zip file (the server tells a zip by its content)."""
    from autopaint.imaging.dicom_zip import is_zip

    return path is not None and (path.is_dir() or is_zip(path))


def _suv_params(pet: Path | None, suv_already: bool, weight_kg: float | None, dose: float | None,
                delay_s: float | None, half_life_s: float | None, allow_implausible_units: bool) -> dict[str, Any]:
    """The PET-units options as JobParams fields, by the rule of ``autopaint segment``
    (``commands.segment.suv_inputs``): a NIfTI PET needs ``--suv-already`` or the Bq/mL options
    (``missing_suv_info`` before anything is uploaded); a DICOM PET's headers state the units."""
    from autopaint.errors import InvalidInput

    try:
        suv = opts.suv_inputs(None if _is_dicom(pet) else pet, suv_already, weight_kg, dose, delay_s, half_life_s,
                              check_units=not allow_implausible_units)
    except InvalidInput as exc:
        print(f"autopaint: invalid input [{exc.code}]: {exc}", file=sys.stderr)
        raise typer.Exit(code=2) from exc
    out: dict[str, Any] = suv.model_dump(exclude_none=True)
    return out


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, min=0, help="Celery worker processes to start (embedded)"),
    state_dir: Path | None = typer.Option(None, help="Database, broker and storage folder "
                                          "(default ~/.autopaint, env AUTOPAINT_STATE_DIR)"),
    api_only: bool = typer.Option(False, "--api-only", help="Serve the API only (production)"),
    no_migrate: bool = typer.Option(False, "--no-migrate", help="Skip the database migration"),
) -> None:
    """Run the service: the API (uvicorn) plus real Celery worker processes.

    With no AUTOPAINT_DATABASE_URL / AUTOPAINT_BROKER_URL this is the embedded default: SQLite
    database, the kombu sqla+sqlite broker and local storage under the state folder. One serve per
    state folder (a second one exits 2); the API key is kept in <state>/embedded.apikey and reused.
    A dead worker process is restarted; /readyz reports the workers alive.
    """
    from services.embedded import (
        EmbeddedService,
        StateDirBusy,
        embedded_queue,
        ensure_api_key,
        prepare,
        recover_jobs,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = _settings(state_dir)
    if not api_only:
        settings.queue = embedded_queue(settings)
    service = EmbeddedService(settings, host=host, port=port, workers=0 if api_only else workers,
                              api_only=api_only, log_dir=settings.state_dir / "logs")
    try:
        service.acquire()  # before migrating: one serve per state folder
    except StateDirBusy as exc:
        print(f"autopaint serve: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    prepare(settings, migrate=not no_migrate)
    if not api_only and settings.broker_url.startswith("sqla+"):
        recover_jobs(settings)
    print(f"autopaint API on {service.url}  (docs: {service.url}/docs)")
    if not api_only:
        key = ensure_api_key(settings)
        print(f"API key: {key}  (kept in {settings.state_dir / 'embedded.apikey'})")
        print(f"workers: {workers} on queue '{settings.queue}', logs in {settings.state_dir / 'logs'}")
    sys.stdout.flush()
    service.run_forever()


def worker(
    queues: str | None = typer.Option(None, help="Comma-separated queues (default: gpu with CUDA, else cpu)"),
    concurrency: int = typer.Option(1, min=1, help="Worker children (one per GPU)"),
    pool: str = typer.Option("prefork", help="Celery pool"),
    name: str | None = typer.Option(None, help="Worker node name"),
    loglevel: str = typer.Option("INFO", help="Log level"),
) -> None:
    """Run a Celery worker that executes segmentation jobs (settings from AUTOPAINT_* env)."""
    import socket

    from autopaint.settings import Settings
    from services.embedded_workers import watch_parent
    from services.worker.app import create_celery_app
    from services.worker.config import worker_queues

    settings = Settings()
    watch_parent()  # started by `serve`: die with it, leaving no orphan (no-op otherwise)
    app = create_celery_app(settings)
    qs = worker_queues(settings, queues)
    argv = ["worker", "-P", pool, "-c", str(concurrency), "-Q", ",".join(qs),
            "--loglevel", loglevel, "-n", f"{name or 'autopaint'}@{socket.gethostname()}",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)


def submit(
    ct: Path | None = typer.Option(None, "--ct", exists=True, help="CT: a NIfTI file (HU) or a DICOM series folder "
                                   "(zipped on the fly)."),
    pet: Path | None = typer.Option(None, "--pet", exists=True, help="PET: a DICOM series folder (units from its "
                                    "headers) or a NIfTI file with its units stated (--suv-already, or the Bq/mL "
                                    "options)."),
    ct_series_uid: str | None = opts.CT_SERIES_OPTION,
    pet_series_uid: str | None = opts.PET_SERIES_OPTION,
    suv_already: bool = opts.SUV_ALREADY_OPTION,
    weight_kg: float | None = opts.WEIGHT_OPTION,
    injected_dose_bq: float | None = opts.DOSE_OPTION,
    delay_s: float | None = opts.DELAY_OPTION,
    half_life_s: float | None = opts.HALF_LIFE_OPTION,
    allow_implausible_units: bool = opts.IMPLAUSIBLE_OPTION,
    organ_mask: Path | None = typer.Option(None, exists=True, dir_okay=False, help="Organ mask NIfTI"),
    label: Path | None = typer.Option(None, exists=True, dir_okay=False, help="Reference label (metrics)"),
    preset: str | None = typer.Option(None, help="thorax | headneck | custom (body); default: the model's preset"),
    mode: str | None = typer.Option(None, help="fast | exact"),
    threshold: float | None = typer.Option(None, help="Residual threshold in [0, 1]"),
    model: str | None = typer.Option(None, help="Model name"),
    params: str | None = typer.Option(None, help="Extra job parameters as JSON"),
    callback_url: str | None = _CALLBACK,
    wait: bool = typer.Option(False, "--wait", help="Follow progress until the job ends"),
    out: Path | None = typer.Option(None, help="Download the results here (implies --wait)"),
    url: str | None = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Submit one PET/CT case to the service; optionally wait and download the results.

    CT and PET: NIfTI files or DICOM series folders (a DICOM CT also gives the mask as DICOM SEG and RTSTRUCT).
    """
    from autopaint.client import Client, lesion_lines
    from autopaint.client_cohort import rich_job_progress

    units = _suv_params(pet, suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s,
                        allow_implausible_units) if pet is not None and not _units_in(
        params, suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s, allow_implausible_units) else {}
    client = Client(url or "http://127.0.0.1:8000", api_key)
    job = client.submit(ct=ct, pet=pet, organ_mask=organ_mask, label=label,
                        params=_params(params, preset=preset, mode=mode, threshold=threshold,
                                       model=model, ct_series_uid=ct_series_uid,
                                       pet_series_uid=pet_series_uid, **units), callback_url=callback_url)
    print(f"job {job['id']} {job['state']}")
    if not (wait or out):
        return
    with rich_job_progress() as on_progress:
        job = client.wait(job["id"], on_progress=on_progress)
    print(f"job {job['id']} {job['state']}"
          + (f" [{job.get('error_code')}]: {job.get('error_message')}" if job["state"] == "failed" else ""))
    if out is not None and job["state"] == "succeeded":
        files = client.download(job["id"], out)
        print(f"{len(files)} files in {out}")
        for line in lesion_lines(out):
            print(line)
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@cohort_app.command("submit")
def cohort_submit(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Cohort folder: one "
                                     "sub-folder per case with ct.nii.gz and/or pet.nii.gz (or DICOM series "
                                     "folders ct/ and pet/), optionally label.nii.gz and organ_mask.nii.gz"),
    concurrency: int = typer.Option(4, min=1, help="Jobs in flight at once"),
    out: Path | None = typer.Option(None, help="Output folder (default DIRECTORY/results)"),
    preset: str | None = typer.Option(None, help="thorax | headneck | custom (body); default: the model's preset"),
    mode: str | None = typer.Option(None, help="fast | exact"),
    params: str | None = typer.Option(None, help="Extra job parameters as JSON"),
    suv_already: bool = opts.SUV_ALREADY_OPTION,
    weight_kg: float | None = opts.WEIGHT_OPTION,
    injected_dose_bq: float | None = opts.DOSE_OPTION,
    delay_s: float | None = opts.DELAY_OPTION,
    half_life_s: float | None = opts.HALF_LIFE_OPTION,
    allow_implausible_units: bool = opts.IMPLAUSIBLE_OPTION,
    download: bool = typer.Option(True, help="Download each case's results"),
    callback_url: str | None = typer.Option(None, "--callback-url", help="POSTed once by the server (signed "
                                            "JSON, cohort.completed) when every case has finished"),
    url: str | None = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Submit every case of a cohort, follow them with a progress table and write summary.csv.

    The PET-units options apply to every case (NIfTI PETs need them; DICOM PETs' headers state
    their units). Resumable: the state file ``OUT/cohort_state.json`` records each case's job; a
    restarted command skips finished cases and follows the ones still running instead of resubmitting.
    """
    from autopaint.client import Client
    from autopaint.client_cohort import discover_cases, run_cohort

    pets = [c.files["pet"] for c in discover_cases(directory) if "pet" in c.files]
    nifti_pet = next((p for p in pets if not _is_dicom(p)), None)  # any NIfTI PET needs the units stated
    units = _suv_params(nifti_pet, suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s,
                        allow_implausible_units) if pets and not _units_in(
        params, suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s, allow_implausible_units) else {}
    client = Client(url or "http://127.0.0.1:8000", api_key)
    summary = run_cohort(client, directory, out or directory / "results", concurrency=concurrency,
                         params=_params(params, preset=preset, mode=mode, **units), download=download,
                         show_progress=True, callback_url=callback_url)
    print(f"{summary.succeeded} succeeded, {summary.failed} failed, {summary.skipped} already done; "
          f"summary: {summary.csv_path}")
    if summary.failed:
        raise typer.Exit(1)


def callback_secret(
    rotate: bool = typer.Option(False, "--rotate", help="Replace the secret first (the old one keeps signing "
                                "for a grace period)"),
    url: str | None = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Print the secret that signs your key's callbacks (HMAC-SHA256; verify with autopaint.webhooks.verify)."""
    from autopaint.client import Client

    with Client(url or "http://127.0.0.1:8000", api_key) as client:
        out = client.callback_secret(rotate=rotate)
    print(out["secret"])
    if out.get("previous_valid_until"):
        typer.echo(f"the previous secret also signs until {out['previous_valid_until']}", err=True)


def demo(
    state_dir: Path = typer.Option(Path("runs/demo"), help="Where the demo keeps its state and results"),
    port: int = typer.Option(8765, help="TCP port of the demo service"),
    seed: int = typer.Option(0, help="Phantom seed"),
) -> None:
    """The README's demo: start the embedded service, submit a phantom case, follow it, download
    the results, print the lesions and the Dice against the phantom's label, stop the service."""
    from services.demo import run_demo

    raise typer.Exit(run_demo(state_dir.resolve(), port=port, seed=seed))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the main app."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("submit")(submit)
    app.command("callback-secret")(callback_secret)
    app.command("demo")(demo)
    app.add_typer(cohort_app)
