"""TEST-ONLY pipeline for the viewer's browser tests (``AUTOPAINT_TEST_PIPELINE``, see
``services.worker.pipeline_adapter``): real, deterministic result files derived from the uploaded
label, so the tests know exactly where the mask must be drawn.

- ``residual.nii.gz`` (CT grid): 0 outside the label; inside lesion ``i`` (26-connected component,
  largest first) ``amp_i * (0.5 + 0.5 * depth)``, depth = normalised distance to the lesion's
  border, with ``amp`` 0.5 for the largest lesion and 0.9 for the others. At the default threshold
  0.2 the mask is exactly the label; at 0.6 only the smaller lesions' cores remain.
- ``mask.nii.gz``, ``lesions.csv``, ``lesions.json``: the library's re-threshold at 0.2 (the same
  code as ``POST /v1/jobs/{id}/threshold``), lesion SUV statistics from the PET.
- ``inpainted_ct.nii.gz`` / ``inpainted_pet.nii.gz``: the scan with the lesions replaced by lung
  (-850 HU) and background uptake (0.6 SUV): the "healthy" image.
- ``report.json``: threshold and metrics.

``AUTOPAINT_TEST_SLOW_S``: seconds spent in the ``searching`` stage (20 circle steps).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.errors import Cancelled
from autopaint.progress import ProgressEvent, Stage, Unit
from services.worker.pipeline_adapter import JobSpec

THRESHOLD = 0.2
AMP_LARGEST, AMP_OTHERS = 0.5, 0.9


def residual_from_label(label: np.ndarray) -> np.ndarray:
    import cc3d
    from scipy import ndimage

    comps = cc3d.connected_components((label > 0).astype(np.uint8), connectivity=26)
    sizes = np.bincount(comps.ravel())[1:]
    residual = np.zeros(label.shape, np.float32)
    for rank, lab in enumerate(np.argsort(-sizes, kind="stable") + 1):
        lesion = comps == lab
        depth = ndimage.distance_transform_edt(lesion)
        depth = (depth - 1.0) / max(float(depth.max()) - 1.0, 1.0)
        amp = AMP_LARGEST if rank == 0 else AMP_OTHERS
        residual[lesion] = amp * (0.5 + 0.5 * np.clip(depth[lesion], 0.0, 1.0))
    return residual


def labelled(spec: JobSpec, out_dir: Path, progress: Callable[[Any], None],
             should_cancel: Callable[[], bool]) -> dict[str, Any]:
    from autopaint.imaging.io import read_volume, write_volume
    from autopaint.imaging.resample import mask_on_grid, on_grid
    from autopaint.imaging.suv import pet_to_suv
    from autopaint.segment.outputs import rethreshold, to_json_bytes

    seconds = float(os.environ.get("AUTOPAINT_TEST_SLOW_S", "3"))
    progress(ProgressEvent(Stage.loading, 0, 1, Unit.volumes))
    ct = read_volume(spec.input_paths["ct"])
    pet = pet_to_suv(read_volume(spec.input_paths["pet"]), tags=spec.params.suv_tags(),
                     already_suv=spec.params.suv_already)
    label = mask_on_grid(read_volume(spec.input_paths["label"]), ct)
    progress(ProgressEvent(Stage.loading, 1, 1, Unit.volumes))
    for i in range(20):
        if should_cancel():
            raise Cancelled("cancelled")
        time.sleep(seconds / 20)
        progress(ProgressEvent(Stage.searching, i + 1, 20, Unit.circles))
    residual = ct.with_data(residual_from_label(label))
    write_volume(residual, out_dir / "residual.nii.gz", dtype=np.float32)
    healthy_ct = np.where(label, -850.0, ct.data).astype(np.float32)
    write_volume(ct.with_data(healthy_ct), out_dir / "inpainted_ct.nii.gz", dtype=np.float32)
    pet_ref = on_grid(pet, ct, order=1)
    healthy_pet = np.where(label, 0.6, pet_ref.data).astype(np.float32)
    write_volume(ct.with_data(healthy_pet), out_dir / "inpainted_pet.nii.gz", dtype=np.float32)
    progress(ProgressEvent(Stage.thresholding, 0, 1, Unit.volumes))
    out = rethreshold(out_dir / "residual.nii.gz", THRESHOLD, pet=pet, label=spec.input_paths["label"],
                      out_dir=out_dir)
    report = {"threshold": {"value": THRESHOLD, "source": "test"},
              "metrics": {"at_threshold": out["metrics"]}, "lesions": out["lesions"]}
    (out_dir / "report.json").write_bytes(to_json_bytes(report))
    progress(ProgressEvent(Stage.thresholding, 1, 1, Unit.volumes))
    return {"model": {"name": "test-labelled", "sha256": "0" * 64},
            "threshold": {"value": THRESHOLD, "source": "test"}, "lesions": len(out["lesions"])}
