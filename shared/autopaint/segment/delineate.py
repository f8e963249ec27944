"""From detections to lesion masks: a boundary that follows each lesion, and 3-D consolidation.

Autoinpainting is the detector; its residual marks *where* a lesion is, on the coarse model grid and
within the inpainted circles, not *how far* it reaches. Each detected 3-D region is therefore
delineated by a local rule on the reference grid (issue #11, part 5):

* **PET adaptive threshold** (``method="pet"``): inside the region dilated by ``search_mm`` (and the
  organ of interest), the lesion's own peak SUV and its local background (median SUV of a shell
  ``shell_mm`` around the dilated region) give the level ``bg + fraction * (peak - bg)``; the lesion is
  the 18-connected component of SUV >= level that contains the peak, with enclosed holes filled
  (necrotic cores). Optionally voxels of aerated lung on CT (HU < ``solid_hu``) are dropped from it.
  A lesion whose peak is under ``min_contrast`` times its local background is dropped (a faint spot
  standing little above its surroundings is more often physiological uptake, e.g. a benign node or
  blood pool, than tumour; 0 keeps every lesion). Its record says so (``kept``).
* **residual** (``method="residual"``, CT-only models, or PET/CT where asked): the detection as it is.

3-D consolidation (part 6): 26-connected components of the final mask smaller than ``min_ml`` are
removed. Hand-written rule (background-corrected fractional threshold as in PET contouring practice);
morphology and components use scipy.ndimage and cc3d.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import cc3d
import numpy as np
from scipy import ndimage

Method = Literal["pet", "residual"]


@dataclass(frozen=True)
class DelineationParams:
    """See the module doc. ``fraction`` of (peak - background); mm distances on the reference grid."""

    method: Method = "pet"
    fraction: float = 0.45
    search_mm: float = 10.0
    shell_mm: float = 10.0
    solid_hu: float | None = None
    min_ml: float = 0.0
    min_contrast: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DelineationParams:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _within(mask: np.ndarray, spacing: np.ndarray, mm: float) -> np.ndarray:
    """Voxels within ``mm`` of ``mask`` (Euclidean, anisotropic spacing): a dilation by a ball."""
    if not mask.any():
        return mask.copy()
    return np.asarray(ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm, dtype=bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3-D and in every axial (last-axis) slice."""
    out = ndimage.binary_fill_holes(mask)
    for k in range(out.shape[2]):
        if out[:, :, k].any():
            out[:, :, k] = ndimage.binary_fill_holes(out[:, :, k])
    return np.asarray(out, dtype=bool)


def delineate_one(region: np.ndarray, suv: np.ndarray, ooi: np.ndarray, spacing: np.ndarray,
                  params: DelineationParams, ct: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """One detected region (bool, a cropped box of the volume) -> its lesion mask (same box, empty when
    the contrast rule drops it) and the numbers used (peak, background, level, kept). ``suv``/``ooi``/``ct``
    are the same box."""
    search = _within(region, spacing, params.search_mm) & ooi
    search |= region
    shell = _within(search, spacing, params.shell_mm) & ~search & ooi
    vals = np.where(search, suv, -np.inf)
    peak_idx = np.unravel_index(int(np.argmax(np.where(region, suv, -np.inf))), suv.shape)
    peak = float(suv[peak_idx])
    bg = float(np.median(suv[shell])) if shell.any() else 0.0
    level = bg + params.fraction * max(peak - bg, 0.0)
    above = vals >= level
    if params.solid_hu is not None and ct is not None:
        above &= ct >= params.solid_hu
        above[peak_idx] = True
    # 18-connected like autoPET's lesion-wise evaluation: a voxel touching the lesion only at a corner
    # would otherwise be scored as a separate (false-positive) lesion
    labels = cc3d.connected_components(above.astype(np.uint8), connectivity=18)
    lesion = labels == labels[peak_idx]
    lesion = fill_holes(lesion) & search
    kept = peak >= params.min_contrast * bg
    return lesion if kept else np.zeros_like(lesion), {"peak_suv": peak, "background_suv": bg, "level_suv": level,
                                                        "kept": kept}


def delineate(detection: np.ndarray, suv: np.ndarray | None, ooi: np.ndarray, spacing: np.ndarray,
              params: DelineationParams, ct: np.ndarray | None = None) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Detections (bool (I, J, K), reference grid) -> lesion mask (bool (I, J, K)) and one record per
    detected 3-D region. ``suv`` None or ``method="residual"``: the detection is kept as it is.
    ``spacing``: voxel size in mm of the (I, J, K) axes."""
    det = np.asarray(detection, dtype=bool)
    if suv is None or params.method == "residual" or not det.any():
        return consolidate(det, spacing, params.min_ml), []
    spacing = np.asarray(spacing, dtype=np.float64)
    labels = cc3d.connected_components(det.astype(np.uint8), connectivity=26)
    out = np.zeros(det.shape, dtype=bool)
    pad = np.ceil((params.search_mm + params.shell_mm) / spacing).astype(int) + 1
    records = []
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = tuple(slice(max(0, b.start - int(p)), min(n, b.stop + int(p)))
                     for b, p, n in zip(box, pad, det.shape, strict=True))
        region = labels[crop] == lab
        lesion, rec = delineate_one(region, np.asarray(suv[crop], dtype=np.float32),
                                    np.asarray(ooi[crop], dtype=bool), spacing, params,
                                    None if ct is None else np.asarray(ct[crop]))
        out[crop] |= lesion
        records.append(rec)
    return consolidate(out, spacing, params.min_ml), records


def consolidate(mask: np.ndarray, spacing: np.ndarray, min_ml: float) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_ml`` (ml)."""
    m = np.asarray(mask, dtype=bool)
    if min_ml <= 0 or not m.any():
        return m
    vox_ml = float(np.prod(spacing)) / 1000.0
    labels = cc3d.connected_components(m.astype(np.uint8), connectivity=26)
    counts = np.bincount(labels.ravel())
    keep = counts * vox_ml >= min_ml
    keep[0] = False
    return np.asarray(keep[labels], dtype=bool)
