"""Writes one pipeline run's result files into ``out_dir`` (each atomically; report.json last).

Inpainted volumes in original units: the autoinpainting's change, denormalised per channel on the
model grid (HU for CT, SUV for PET via ``preprocess.denormalize``), is mapped back to the reference
grid and added to the original CT / PET-on-CT-grid, so untouched voxels keep their exact values.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.fsutil import atomic_write_bytes, sha256_file
from autopaint.segment.engine import AutoinpaintResult
from autopaint.segment.outputs import to_json_bytes, write_dicom_results, write_lesions, write_volume_atomic
from autopaint.segment.preview import render_preview

log = logging.getLogger(__name__)


def inpainted_volumes(case: Any, eng: AutoinpaintResult) -> dict[str, np.ndarray]:
    """{"ct": HU (I, J, K), "pet": SUV (I, J, K)} for the channels the model has."""
    from autopaint.imaging.preprocess import denormalize

    hu_a, suv_a = denormalize(eng.autoinpainted, case.params)
    hu_i, suv_i = denormalize(case.images, case.params)
    out: dict[str, np.ndarray] = {}
    for name, a, i, orig in (("ct", hu_a, hu_i, case.ct_on_ref), ("pet", suv_a, suv_i, case.pet_on_ref)):
        if a is None or i is None or orig is None:
            continue
        delta = case.to_reference((a - i).astype(np.float32), order=1)
        out[name] = (np.asarray(orig.data, np.float32) + delta).astype(np.float32)
    return out


def write_results(out: Path, case: Any, eng: AutoinpaintResult, residual: np.ndarray, mask: np.ndarray,
                  lesions: list[dict[str, Any]], report: dict[str, Any], timings: dict[str, float],
                  preview: bool, dicom_source: list[str] | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write mask, residual, inpainted volumes, lesions, preview, the DICOM SEG and RTSTRUCT of the
    mask when ``dicom_source`` (the CT series' files, in slice order) is given, and the report (with
    timings and the outputs' sha256); returns (name -> path, final report)."""
    t0 = time.perf_counter()
    ref = case.reference
    out.mkdir(parents=True, exist_ok=True)
    # the NIfTI files are gzip-compressed in two threads (zlib releases the GIL): the network is
    # idle by now, so writing uses both cores (the same bytes as writing them one after the other)
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {"mask.nii.gz": pool.submit(write_volume_atomic, ref.with_data(mask.astype(np.uint8)),
                                           out / "mask.nii.gz", np.uint8),
                "residual.nii.gz": pool.submit(write_volume_atomic, ref.with_data(residual),
                                               out / "residual.nii.gz", np.float32)}
        vols = inpainted_volumes(case, eng)
        for name, data in vols.items():
            fname = f"inpainted_{name}.nii.gz"
            jobs[fname] = pool.submit(write_volume_atomic, ref.with_data(data), out / fname, np.float32)
        files: dict[str, Path] = {name: job.result() for name, job in jobs.items()}
    files.update(write_lesions(lesions, out))
    if preview:
        ct = case.ct_on_ref.data if case.ct_on_ref is not None else None
        pet = case.pet_on_ref.data if case.pet_on_ref is not None else None
        date = report.get("date") or time.strftime("%Y-%m-%d", time.gmtime())  # no date in the report yet
        png = render_preview(ct, pet, residual, mask > 0, affine=case.reference.affine, lesions=lesions,
                             report=report, ct_window=tuple(case.params.ct_window),
                             suv_window=tuple(case.params.suv_window), date=date)
        files["preview.png"] = atomic_write_bytes(out / "preview.png", png)
    if dicom_source:
        files.update(write_dicom_results(ref.with_data(mask.astype(np.uint8)), dicom_source, out))
    report = dict(report)
    timings = {**timings, "write": time.perf_counter() - t0}  # all files but report.json itself
    report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    report["outputs"] = {name: sha256_file(p) for name, p in sorted(files.items())}
    files["report.json"] = atomic_write_bytes(out / "report.json", to_json_bytes(report))
    log.info("wrote %d result files to %s", len(files), out)
    return files, report

