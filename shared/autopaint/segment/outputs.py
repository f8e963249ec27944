"""Result files, written atomically (tmp file in the same folder + fsync + os.replace), and the
CPU-only re-threshold used by the API (no torch, no model).

NIfTI files go through :func:`autopaint.imaging.io.write_volume` (atomic, deterministic gzip:
the same array and affine give the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.imaging.volume import Volume
from autopaint.segment.lesions import lesion_table, lesions_csv
from autopaint.segment.metrics import segmentation_metrics
from autopaint.segment.thresholds import apply_threshold, sweep

log = logging.getLogger(__name__)

RESULT_FILES = ("mask.nii.gz", "residual.nii.gz", "inpainted_ct.nii.gz", "inpainted_pet.nii.gz",
                "lesions.csv", "lesions.json", "report.json", "preview.png")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file beside it, fsync, os.replace, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    from autopaint.imaging.preprocess import resample_to, same_grid

    res = _load(residual_path)
    mask = res.with_data(apply_threshold(res.data, threshold))
    suv = None
    if pet is not None:
        suv = _load(pet)
        if not same_grid(suv, res):
            suv = resample_to(suv, res, order=3)
            np.maximum(suv.data, 0.0, out=suv.data)
    rows = lesion_table(mask, suv)
    out: dict[str, Any] = {"threshold": float(threshold), "lesions": rows, "files": {}}
    if label is not None:
        lab = _load(label)
        if not same_grid(lab, res):
            lab = resample_to(lab, res, order=0)
        out["metrics"] = segmentation_metrics(mask.data > 0, lab.data > 0)
        out["sweep"] = sweep(res.data, lab.data > 0)
    if out_dir is not None:
        d = Path(out_dir)
        files = {"mask.nii.gz": write_volume_atomic(mask, d / "mask.nii.gz", np.uint8)}
        files.update(write_lesions(rows, d))
        out["files"] = files
    return out
