"""Label-free SUV-threshold baselines, applied inside the organ of interest (no torch).

These are the clinical rules a nuclear-medicine reader would use without any learning, and the
simplest competitor an anomaly-detection method must beat (the paper's ref. [40] shows thresholding
is often competitive). All inputs are on the same grid (the CT / reference grid of a case):

- ``suv``: float array ``(I, J, K)``, PET in SUV (body weight) resampled onto the reference grid;
- ``organ_mask``: bool ``(I, J, K)``, the organ of interest (lung field, head-and-neck, ...).

What is implemented, exactly:

1. :func:`suv_fixed_threshold` - ``SUV >= 2.5`` inside the OOI (the classic fixed cut-off).
2. :func:`suvmax_fraction_threshold` - the 41 % isocontour. Two variants:

   - ``mode="global"`` (default, the project's reference rule): ``t = 0.41 * SUVmax``, SUVmax taken
     over the whole OOI; the mask is every OOI voxel with ``SUV >= t``. Because clinicians contour at
     41 % of a *lesion's* SUVmax, the rule only fires when a lesion exists: if the OOI's SUVmax is
     below ``min_suvmax`` (2.5 SUV) the mask is empty (otherwise a healthy lung with SUVmax 1 would be
     "segmented" at SUV 0.41, i.e. nearly entirely).
   - ``mode="per_lesion"``: lesions are first detected as 26-connected components of
     ``SUV >= min_suvmax`` in the OOI; for each, the region is the 26-connected component of
     ``SUV >= 0.41 * (that lesion's SUVmax)`` (inside the OOI) that contains the lesion's hottest
     voxel. The union of these regions is returned. This is the EANM-style per-lesion isocontour.
3. :func:`pet_window_map` - the PET itself, windowed to [0, 1] (SUV 0..12 as in preprocessing),
   zero outside the OOI: used as a "residual" and swept over 0..0.8 like the autoinpainting
   residual, i.e. an SUV-threshold oracle that picks the best cut-off per subject (0..9.6 SUV).

Connected components use cc3d (26-connectivity in 3D).
"""

from __future__ import annotations

import cc3d
import numpy as np

DEFAULT_SUV_THRESHOLD = 2.5
DEFAULT_FRACTION = 0.41


def _check(suv: np.ndarray, organ_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    suv = np.asarray(suv, dtype=np.float32)
    organ = np.asarray(organ_mask, dtype=bool)
    if suv.shape != organ.shape:
        raise ValueError(f"SUV shape {suv.shape} and organ mask shape {organ.shape} differ")
    return suv, organ


def suv_fixed_threshold(suv: np.ndarray, organ_mask: np.ndarray, threshold: float = DEFAULT_SUV_THRESHOLD) -> np.ndarray:
    """Bool ``(I, J, K)``: OOI voxels with ``SUV >= threshold`` (SUV units)."""
    s, organ = _check(suv, organ_mask)
    return (s >= threshold) & organ


def suvmax_fraction_threshold(
    suv: np.ndarray,
    organ_mask: np.ndarray,
    fraction: float = DEFAULT_FRACTION,
    min_suvmax: float = DEFAULT_SUV_THRESHOLD,
    mode: str = "global",
) -> np.ndarray:
    """Bool ``(I, J, K)``: the ``fraction`` x SUVmax isocontour inside the OOI (see the module docstring).

    ``mode``: "global" (one SUVmax over the OOI) or "per_lesion" (one per lesion found at
    ``SUV >= min_suvmax``). Returns an empty mask when no OOI voxel reaches ``min_suvmax``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s, organ = _check(suv, organ_mask)
    inside = np.where(organ, s, -np.inf)
    if not organ.any() or float(inside.max()) < min_suvmax:
        return np.zeros(s.shape, dtype=bool)
    if mode == "global":
        return (inside >= fraction * float(inside.max())) & organ
    if mode != "per_lesion":
        raise ValueError(f"mode must be 'global' or 'per_lesion', got {mode!r}")
    out = np.zeros(s.shape, dtype=bool)
    seeds = cc3d.connected_components((inside >= min_suvmax).astype(np.uint8), connectivity=26)
    for lab in range(1, int(seeds.max()) + 1):
        comp = seeds == lab
        vals = np.where(comp, inside, -np.inf)
        peak = np.unravel_index(int(np.argmax(vals)), s.shape)
        iso = cc3d.connected_components((inside >= fraction * float(vals[peak])).astype(np.uint8), connectivity=26)
        out |= iso == iso[peak]
    return out & organ


def pet_window_map(suv: np.ndarray, organ_mask: np.ndarray, suv_window: tuple[float, float] = (0.0, 12.0)) -> np.ndarray:
    """Float32 ``(I, J, K)`` in [0, 1]: ``clip((SUV - lo) / (hi - lo), 0, 1)`` inside the OOI, 0 outside.

    Thresholding this map at ``t`` equals ``SUV >= lo + t (hi - lo)``: sweeping t over 0..0.8 sweeps
    SUV cut-offs 0..9.6 with the default window.
    """
    s, organ = _check(suv, organ_mask)
    lo, hi = suv_window
    if hi <= lo:
        raise ValueError(f"bad SUV window {suv_window}")
    return np.where(organ, np.clip((s - lo) / (hi - lo), 0.0, 1.0), 0.0).astype(np.float32)


def percist_threshold(suv: np.ndarray, organ_mask: np.ndarray, ct: np.ndarray | None,
                      affine: np.ndarray) -> tuple[np.ndarray, float, str]:
    """PERCIST-style reference threshold: ``SUV >= 1.5 x reference mean + 2 SD`` inside the OOI.

    The reference is the patient's own (:func:`autopaint.segment.hotspot.reference_uptake`: a 3 cm
    liver sphere, else body soft tissue); SUV is body-weight SUV, not SUL. Returns (mask, threshold in
    SUV, reference region)."""
    from autopaint.segment.hotspot import reference_uptake

    s, organ = _check(suv, organ_mask)
    ref = reference_uptake(s, ct, affine)
    t = ref.percist()
    return (s >= t) & organ, t, ref.region
