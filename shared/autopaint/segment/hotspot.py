"""The patient's own reference uptake and the PET hot-spot map that seeds candidate circles.

Reference uptake (PERCIST-style): the mean and SD of SUV in a 3 cm sphere inside the liver, found
automatically on the reference grid — soft tissue on CT (smoothed HU in [40, 100]) with liver-like
uptake (smoothed SUV in [1, 4]), the largest such 3D region on the patient's right (RAS x > 0) in the
caudal half of the scan, >= 80 ml; the sphere is centred at its deepest point (distance transform).
Without a liver in the field of view (head-and-neck, limbs) the reference is the patient's body soft
tissue (CT in [-50, 100] HU): median and 1.4826 * MAD of its SUV. The region used is recorded
(``ReferenceUptake.region``); nothing is guessed silently.

The hot-spot gate (SUV) is ``max(floor, mean + k * sd)`` of that reference; the hot-spot map is the
organ of interest where SUV >= gate. Hand-written (no library defines a PERCIST reference finder);
smoothing, components and distances come from scipy.ndimage / cc3d.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

LIVER_HU = (40.0, 100.0)
LIVER_SUV = (1.0, 4.0)
LIVER_MIN_ML = 80.0
SPHERE_DIAMETER_MM = 30.0
SOFT_TISSUE_HU = (-50.0, 100.0)
COARSE_MM = 4.0  # the liver finder works on a ~4 mm grid


@dataclass(frozen=True)
class ReferenceUptake:
    """``region``: "liver" | "soft_tissue" | "none"; ``mean``/``sd`` in SUV; ``voxels`` sampled;
    ``centre_mm``: RAS centre of the liver sphere (None for the soft-tissue fallback)."""

    region: str
    mean: float
    sd: float
    voxels: int
    centre_mm: tuple[float, float, float] | None = None

    def gate(self, k: float, floor: float) -> float:
        """SUV gate ``max(floor, mean + k * sd)``."""
        return float(max(floor, self.mean + k * self.sd))

    def percist(self) -> float:
        """PERCIST's minimum measurable uptake: 1.5 x reference mean + 2 SD (SUVbw, not SUL here)."""
        return float(1.5 * self.mean + 2.0 * self.sd)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["centre_mm"] = None if self.centre_mm is None else [round(float(v), 2) for v in self.centre_mm]
        return d


def _coarse(arr: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Block means with block size ``f`` (edge blocks trimmed)."""
    s = [(n // b) * b for n, b in zip(arr.shape, f, strict=True)]
    a = np.asarray(arr[: s[0], : s[1], : s[2]], dtype=np.float32)
    return a.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))


def _liver(suv: np.ndarray, ct: np.ndarray, affine: np.ndarray) -> ReferenceUptake | None:
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    f = tuple(max(1, int(round(COARSE_MM / s))) for s in spacing)
    hu = ndimage.uniform_filter(_coarse(ct, f), size=3)  # type: ignore[arg-type]
    pet = ndimage.uniform_filter(_coarse(suv, f), size=3)  # type: ignore[arg-type]
    cand = (hu >= LIVER_HU[0]) & (hu <= LIVER_HU[1]) & (pet >= LIVER_SUV[0]) & (pet <= LIVER_SUV[1])
    cand = ndimage.binary_erosion(cand, iterations=1)
    if not cand.any():
        return None
    labels = cc3d.connected_components(cand.astype(np.uint8), connectivity=6)
    n = int(labels.max())
    cs = np.asarray(spacing) * np.asarray(f)
    coarse_aff = np.asarray(affine, dtype=np.float64).copy()
    coarse_aff[:3, :3] = coarse_aff[:3, :3] * np.asarray(f)
    coarse_aff[:3, 3] += np.asarray(affine)[:3, :3] @ ((np.asarray(f) - 1) / 2.0)
    vox_ml = float(np.prod(cs)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    centroids = ndimage.center_of_mass(np.ones_like(labels), labels, range(1, n + 1))
    world = np.array([coarse_aff[:3, :3] @ np.asarray(c) + coarse_aff[:3, 3] for c in centroids])
    k_world = coarse_aff[:3, :3] @ (np.array(labels.shape) - 1) * np.array([0, 0, 1]) + coarse_aff[:3, 3]
    z_lo = min(coarse_aff[2, 3], k_world[2])
    z_hi = max(coarse_aff[2, 3], k_world[2])
    best, best_n = 0, 0
    for lab in range(1, n + 1):
        x, _, z = world[lab - 1]
        if counts[lab] * vox_ml >= LIVER_MIN_ML and x > 0 and z <= (z_lo + z_hi) / 2 and counts[lab] > best_n:
            best, best_n = lab, int(counts[lab])
    if best == 0:
        return None
    depth = ndimage.distance_transform_edt(labels == best, sampling=cs)
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    centre_mm = coarse_aff[:3, :3] @ np.asarray(centre, dtype=np.float64) + coarse_aff[:3, 3]
    # the sphere on the full grid: voxel centres within 15 mm of the centre
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    c_ijk = inv[:3, :3] @ centre_mm + inv[:3, 3]
    half = np.ceil(SPHERE_DIAMETER_MM / 2 / spacing).astype(int)
    lo = np.maximum(np.floor(c_ijk).astype(int) - half, 0)
    hi = np.minimum(np.ceil(c_ijk).astype(int) + half + 1, suv.shape)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, c_ijk, spacing, strict=True))
    inside = d2 <= (SPHERE_DIAMETER_MM / 2) ** 2
    vals = np.asarray(suv[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float64)[inside]
    if vals.size < 8:
        return None
    return ReferenceUptake("liver", float(vals.mean()), float(vals.std()), int(vals.size),
                           (float(centre_mm[0]), float(centre_mm[1]), float(centre_mm[2])))


def reference_uptake(suv: np.ndarray, ct: np.ndarray | None, affine: np.ndarray) -> ReferenceUptake:
    """The patient's reference uptake on the reference grid (module doc). ``suv``, ``ct``: (I, J, K)
    SUV and HU on the same grid (``ct`` None: PET only, soft tissue is then SUV > 0.1 of the body)."""
    if ct is not None:
        liver = _liver(suv, ct, affine)
        if liver is not None:
            return liver
        soft = (ct >= SOFT_TISSUE_HU[0]) & (ct <= SOFT_TISSUE_HU[1])
    else:
        soft = suv > 0.1
    vals = np.asarray(suv, dtype=np.float64)[soft]
    if vals.size < 100:
        return ReferenceUptake("none", 0.0, 0.0, int(vals.size))
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * 1.4826
    return ReferenceUptake("soft_tissue", med, mad, int(vals.size))


def hot_map(suv: np.ndarray, ooi: np.ndarray, gate: float) -> np.ndarray:
    """Bool (same shape): organ-of-interest voxels with SUV >= ``gate``."""
    if not math.isfinite(gate):
        return np.zeros(np.shape(suv), dtype=bool)
    return (np.asarray(suv) >= gate) & np.asarray(ooi, dtype=bool)
