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
from typing import Any, Protocol

from autopaint.contracts import JobParams

log = logging.getLogger(__name__)

TEST_PIPELINE_ENV = "AUTOPAINT_TEST_PIPELINE"


class ProgressEventLike(Protocol):
    """``autopaint.segment.types.ProgressEvent`` (read-only fields)."""

    @property
    def stage(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def unit(self) -> str: ...


@dataclass(frozen=True)
class JobSpec:
    """Everything the pipeline needs about one job (paths are local files)."""

    job_id: str
    input_paths: dict[str, Path]  # role -> NIfTI path (ct, pet, organ_mask, label)
    params: JobParams
    model: str  # model name or path
    device: str  # "auto", "cpu", "cuda", "cuda:N"
    models_dir: Path | None = None
    input_sha256: dict[str, str] = field(default_factory=dict)


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


def suv_tags(params: JobParams) -> dict[str, Any] | None:
    """The Bq/mL -> SUV conversion tags of ``load_inputs`` (None when the PET is SUV already)."""
    if params.suv_already:
        return None
    tags: dict[str, Any] = {"weight_kg": params.weight_kg, "injected_dose_bq": params.injected_dose_bq,
                            "delay_s": params.delay_s, "units": "BQML"}
    if params.half_life_s is not None:
        tags["half_life_s"] = params.half_life_s
    return tags


def run_real(spec: JobSpec, out_dir: Path, progress: Callable[[Any], None],
             should_cancel: Callable[[], bool]) -> dict[str, Any]:
    """Load the inputs, take the process-wide model and run the pipeline into ``out_dir``.

    Returns the manifest fields the worker adds to the job row: model name and sha256, the
    threshold and the lesion count.
    """
    from autopaint.errors import ModelError
    from autopaint.segment import pipeline as pl  # torch enters the process here, in the worker
    from autopaint.segment.types import ProgressEvent
    from services.worker.model_cache import get_inpainter

    p = spec.params
    paths = spec.input_paths
    progress(ProgressEvent("loading", 0, 1, "volumes"))
    inputs = pl.load_inputs(paths.get("ct"), paths.get("pet"), paths.get("organ_mask"), paths.get("label"),
                            suv=suv_tags(p), suv_already=p.suv_already)
    progress(ProgressEvent("loading", 1, 1, "volumes"))
    inpainter = get_inpainter(spec.model, spec.device, spec.models_dir)
    if p.modality is not None and p.modality != inpainter.modality:
        raise ModelError(f"the job asks for modality {p.modality!r}, model {spec.model!r} is "
                         f"{inpainter.modality!r}", code="modality_mismatch")
    params = pl.PipelineParams(preset=p.preset, mode=p.mode, threshold=p.threshold, profile=p.profile)
    result = pl.run_pipeline(inputs, params, inpainter, out_dir, progress=progress,
                             should_cancel=should_cancel)
    progress(ProgressEvent("thresholding", 1, 1, "volumes"))
    name = (inpainter.card or {}).get("name") or spec.model
    return {"model": {"name": name, "sha256": inpainter.sha256},
            "threshold": result.threshold, "lesions": len(result.lesions)}
