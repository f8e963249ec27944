"""TEST-ONLY pipelines injected into real worker processes via ``AUTOPAINT_TEST_PIPELINE``.

Same signature as ``services.worker.pipeline_adapter.run_real``. Each call appends lines to the
file named by ``AUTOPAINT_TEST_RUNLOG`` so a test can count how often a job really ran.
``AUTOPAINT_TEST_SLOW_S``: seconds spent in the ``searching`` stage (20 circle steps).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autopaint.errors import Cancelled
from autopaint.progress import ProgressEvent, Stage, Unit
from services.worker.pipeline_adapter import JobSpec

STAGES = (Stage.loading, Stage.preprocessing, Stage.searching, Stage.refining, Stage.thresholding)


def _log(spec: JobSpec, event: str) -> None:
    path = os.environ.get("AUTOPAINT_TEST_RUNLOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{spec.job_id} {event} {os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())


def slow(spec: JobSpec, out_dir: Path, progress: Callable[[Any], None],
         should_cancel: Callable[[], bool]) -> dict[str, Any]:
    """Walks the stages, 20 circle steps in ``searching``; outputs derive only from the inputs."""
    _log(spec, "start")
    seconds = float(os.environ.get("AUTOPAINT_TEST_SLOW_S", "3"))
    for stage in STAGES:
        if should_cancel():
            _log(spec, f"cancelled-before-{stage}")
            raise Cancelled("cancelled")
        if stage == "searching":
            for i in range(20):
                time.sleep(seconds / 20)
                progress(ProgressEvent(stage, i + 1, 20, Unit.circles))
        else:
            progress(ProgressEvent(stage, 1, 1, Unit.slices))
    shutil.copyfile(spec.input_paths["ct"], out_dir / "mask.nii.gz")
    (out_dir / "report.json").write_text(json.dumps({"inputs": spec.input_sha256}, sort_keys=True))
    _log(spec, "end")
    return {"model": {"name": "fake-slow", "sha256": "0" * 64}}


def auto(spec: JobSpec, out_dir: Path, progress: Callable[[Any], None],
         should_cancel: Callable[[], bool]) -> dict[str, Any]:
    """Behaviour chosen per job by the CT payload's first line: ``crash`` or ``slow:<seconds>``
    (so one long-lived worker serves every test of a module)."""
    head = spec.input_paths["ct"].read_bytes()[:64].split(b"\n", 1)[0].decode(errors="replace")
    if head == "crash":
        return crash(spec, out_dir, progress, should_cancel)
    if head.startswith("slow:"):
        os.environ["AUTOPAINT_TEST_SLOW_S"] = head.split(":", 1)[1]
    return slow(spec, out_dir, progress, should_cancel)


def crash(spec: JobSpec, out_dir: Path, progress: Callable[[Any], None],
          should_cancel: Callable[[], bool]) -> dict[str, Any]:
    """Always fails like a bug would (a retryable error)."""
    _log(spec, "start")
    progress(ProgressEvent(Stage.loading, 1, 1, Unit.slices))
    raise RuntimeError("simulated crash")
