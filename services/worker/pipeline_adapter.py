"""The adapter from a job row to ``autopaint.segment.pipeline.run_pipeline``.

``resolve_runner()`` returns :func:`run_real` (load inputs, get the cached model, run the
pipeline). TEST-ONLY hook: when the environment variable ``AUTOPAINT_TEST_PIPELINE`` is set to
``module:function``, that function (same signature as :func:`run_real`) is used instead, so the
service tests can inject a slow or crashing pipeline into a real Celery worker process. It is
read in the worker only, logged loudly, and never set by any production entry point.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopaint.contracts import JobParams, ThresholdRecord
from autopaint.model_cards import DEFAULT_MODEL

log = logging.getLogger(__name__)

TEST_PIPELINE_ENV = "AUTOPAINT_TEST_PIPELINE"


@dataclass(frozen=True)
class JobSpec:
    """Everything the pipeline needs about one job (paths are local files)."""

    job_id: str
    input_paths: dict[str, Path]  # role -> NIfTI file, or DICOM series folder (ct, pet)
    params: JobParams  # params.model: resolved at submit
    device: str  # "auto", "cpu", "cuda", "cuda:N"
    models_dir: Path | None = None
    input_sha256: dict[str, str] = field(default_factory=dict)  # validated and hashed by the API


Runner = Callable[[JobSpec, Path, Callable[[Any], None], Callable[[], bool]], dict[str, Any]]


def resolve_runner() -> Runner:
    """:func:`run_real`, or the test-only override named by ``AUTOPAINT_TEST_PIPELINE``."""
    override = os.environ.get(TEST_PIPELINE_ENV)
    if not override:
        return run_real
    module, _, name = override.partition(":")
    log.warning("TEST-ONLY pipeline override in use: %s", override)
    fn: Runner = getattr(importlib.import_module(module), name)
    return fn


def run_real(spec: JobSpec, out_dir: Path, progress: Callable[[Any], None],
             should_cancel: Callable[[], bool]) -> dict[str, Any]:
    """Load the inputs, take the process-wide model and run the pipeline into ``out_dir``.

    The inputs were validated and hashed at submit (``spec.input_sha256``): they are read, not
    checked again (a DICOM CT/PET is a folder: its series is read, the SEG and RTSTRUCT of the mask
    written on the CT series). Returns the manifest fields the worker adds to the job row: model name
    and sha256, the threshold (:class:`autopaint.contracts.ThresholdRecord`), the lesion count and
    ``pet_units`` (the PET's SUV calibration, used again by the re-threshold).
    """
    from autopaint.progress import ProgressEvent, Stage, Unit
    from autopaint.segment import pipeline as pl  # torch enters the process here, in the worker
    from services.worker.model_cache import get_inpainter

    p = spec.params
    paths = spec.input_paths
    progress(ProgressEvent(Stage.loading, 0, 1, Unit.volumes))
    inputs = pl.load_inputs(paths.get("ct"), paths.get("pet"), paths.get("organ_mask"), paths.get("label"),
                            suv=p.suv_tags(), suv_already=p.suv_already, known_sha256=spec.input_sha256,
                            series_uids=p.series_uids(), check_units=p.check_units)
    progress(ProgressEvent(Stage.loading, 1, 1, Unit.volumes))
    model = p.model or DEFAULT_MODEL
    inpainter = get_inpainter(model, spec.device, spec.models_dir)
    params = pl.PipelineParams(preset=p.preset, mode=p.mode, threshold=p.threshold, profile=p.profile)
    result = pl.run_pipeline(inputs, params, inpainter, out_dir, progress=progress,
                             should_cancel=should_cancel)
    progress(ProgressEvent(Stage.thresholding, 1, 1, Unit.volumes))
    name = (inpainter.card or {}).get("name") or model
    threshold = ThresholdRecord(value=result.threshold, source=str(result.report["threshold"]["source"]))
    return {"model": {"name": name, "sha256": inpainter.sha256}, "threshold": threshold,
            "lesions": len(result.lesions), "pet_units": result.report["inputs"].get("pet_units")}
