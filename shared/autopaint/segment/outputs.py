"""Result files, written atomically (:mod:`autopaint.fsutil`), and the CPU-only re-threshold used
by the API (no torch, no model): NIfTI volumes, lesion tables, and the DICOM SEG + RTSTRUCT of a mask
on its CT series (:func:`write_dicom_results`, written by a run and again by a re-threshold).

NIfTI files go through :func:`autopaint.imaging.io.write_volume` (atomic, deterministic gzip:
the same array and affine give the same bytes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.fsutil import atomic_write_bytes
from autopaint.imaging.volume import Volume
from autopaint.segment.lesions import lesion_labels, lesion_table, lesions_csv
from autopaint.segment.metrics import segmentation_metrics
from autopaint.segment.thresholds import apply_threshold, sweep

log = logging.getLogger(__name__)


def to_json_bytes(obj: Any) -> bytes:
    """Stable JSON (sorted keys, 2-space indent, NaN/inf -> null) as UTF-8 bytes."""
    return (json.dumps(_clean(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_volume_atomic(vol: Volume, path: Path, dtype: Any) -> Path:
    """NIfTI writer (imported lazily: io pulls nibabel/SimpleITK)."""
    from autopaint.imaging.io import write_volume

    return write_volume(vol, path, dtype=dtype)


def write_lesions(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """lesions.csv + lesions.json in ``out_dir``."""
    return {"lesions.csv": atomic_write_bytes(out_dir / "lesions.csv", lesions_csv(rows).encode()),
            "lesions.json": atomic_write_bytes(out_dir / "lesions.json", to_json_bytes(rows))}


def _load(v: Volume | str | Path) -> Volume:
    if isinstance(v, Volume):
        return v
    from autopaint.imaging.io import read_volume

    return read_volume(v)


def rethreshold(residual_path: str | Path, threshold: float, pet: Volume | str | Path | None = None,
                label: Volume | str | Path | None = None, out_dir: str | Path | None = None,
                ) -> dict[str, Any]:
    """Re-binarise a stored residual at ``threshold`` on CPU (no model, no torch).

    ``residual_path``: a ``residual.nii.gz`` written by :func:`run_pipeline` (reference grid).
    ``pet``: PET in SUV (any grid; resampled onto the residual's with a B-spline when it differs)
    for the lesion SUV statistics; ``label``: optional ground truth (nearest-neighbour resampled
    when on another grid). Writes ``mask.nii.gz``, ``lesions.csv``, ``lesions.json`` to ``out_dir``
    when given. Returns ``{"threshold", "lesions", "metrics" (with label), "files"}``.
    """
    from autopaint.imaging.resample import mask_on_grid, on_grid

    res = _load(residual_path)
    mask = res.with_data(apply_threshold(res.data, threshold))
    suv = on_grid(_load(pet), res, order=3) if pet is not None else None
    rows = lesion_table(mask, suv)
    out: dict[str, Any] = {"threshold": float(threshold), "lesions": rows, "files": {}}
    if label is not None:
        lab = mask_on_grid(_load(label), res)
        out["metrics"] = segmentation_metrics(mask.data > 0, lab)
        out["sweep"] = sweep(res.data, lab)
    if out_dir is not None:
        d = Path(out_dir)
        files = {"mask.nii.gz": write_volume_atomic(mask, d / "mask.nii.gz", np.uint8)}
        files.update(write_lesions(rows, d))
        out["files"] = files
    return out


def write_dicom_results(mask: Volume, ct_files: list[str], out: Path) -> dict[str, Path]:
    """``mask.seg.dcm`` (DICOM SEG, one segment per lesion, numbered as in lesions.csv) and
    ``mask.rtstruct.dcm`` (one ROI per lesion), both referencing the CT series ``ct_files``."""
    import warnings

    from autopaint.imaging.dicom_export import write_rtstruct, write_seg

    labels = lesion_labels(mask.data)
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    with warnings.catch_warnings():
        # attributes copied from the source series as they are (e.g. a 17-character StudyID) make
        # pydicom/highdicom warn once per copy; the source's own deviations are not ours to report
        warnings.simplefilter("ignore", UserWarning)
        pydicom_log.setLevel(logging.ERROR)
        try:
            return {"mask.seg.dcm": write_seg(mask, labels, ct_files, out / "mask.seg.dcm"),
                    "mask.rtstruct.dcm": write_rtstruct(mask, labels, ct_files, out / "mask.rtstruct.dcm")}
        finally:
            pydicom_log.setLevel(level)
