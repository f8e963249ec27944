"""Lesion statistics of a final mask: 3D components (cc3d, 26-connectivity) with volume (ml), SUVmax,
SUVmean, SUVpeak, TLG and centroid (RAS+ mm).

SUVpeak: the highest mean SUV in a 1 ml sphere (radius (3 / 4pi)^(1/3) cm = 6.2035 mm) centred on
any voxel of the lesion. The sphere mean is a normalised FFT convolution (scipy.signal.fftconvolve)
of the SUV with the sphere kernel over the lesion's bounding box plus the sphere's reach; voxels of
the sphere outside the image do not count (mean over the in-image part). TLG = SUVmean x volume (ml).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage, signal

from autopaint.imaging.volume import Volume

SPHERE_1ML_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0

CSV_FIELDS = ("id", "voxels", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg",
              "centroid_x_mm", "centroid_y_mm", "centroid_z_mm")


def sphere_kernel(affine: np.ndarray, radius_mm: float = SPHERE_1ML_RADIUS_MM) -> np.ndarray:
    """Bool kernel of the voxels whose centres lie within ``radius_mm`` of the centre voxel
    (distances through the affine's 3x3 part, so anisotropic/oblique grids are handled)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    half = np.ceil(radius_mm / spacing).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    offs = np.stack([g.ravel() for g in grids], axis=1) @ a.T
    inside = (offs ** 2).sum(axis=1) <= radius_mm ** 2 + 1e-9
    return inside.reshape(grids[0].shape)


def peak_mean(suv: np.ndarray, lesion: np.ndarray, kernel: np.ndarray) -> float:
    """Max over lesion voxels of the kernel-mean of ``suv`` (both (I, J, K)); see module doc."""
    idx = np.argwhere(lesion)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(axis=0), idx.max(axis=0), strict=True))
    return _peak_in_box(suv, lesion[box], box, kernel)


def _peak_in_box(suv: np.ndarray, les_box: np.ndarray, box: tuple[slice, ...], kernel: np.ndarray) -> float:
    """:func:`peak_mean` for a lesion given as its bool mask ``les_box`` inside the bounding ``box``
    of ``suv`` (so a lesion costs its box, not the whole volume)."""
    half = np.array(kernel.shape) // 2
    lo = np.maximum(np.array([b.start for b in box]) - half, 0)
    hi = np.minimum(np.array([b.stop for b in box]) + half, suv.shape)
    big = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    k = kernel.astype(np.float64)
    s = signal.fftconvolve(suv[big].astype(np.float64), k, mode="same")
    c = signal.fftconvolve(np.ones(s.shape), k, mode="same")
    means = s / np.maximum(c, 1e-9)
    inner = tuple(slice(int(b.start - a), int(b.stop - a)) for b, a in zip(box, lo, strict=True))
    return float(means[inner][les_box].max())


def lesion_labels(mask: np.ndarray) -> np.ndarray:
    """The lesions of a mask as int32 labels numbered like the lesion table: 26-connected components,
    1 = the largest (ties: cc3d's raster order), 0 = background."""
    labels = cc3d.connected_components((np.asarray(mask) > 0).astype(np.uint8), connectivity=26)
    n = int(labels.max())
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    order = sorted(range(1, n + 1), key=lambda i: (-counts[i], i))
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[order] = np.arange(1, n + 1, dtype=np.int32)
    return lut[labels]


def lesion_table(mask: Volume, suv: Volume | None) -> list[dict[str, Any]]:
    """One dict per lesion of ``mask`` (data (I, J, K), nonzero = lesion; numbered by
    :func:`lesion_labels`). ``suv``: SUV volume on the same grid, or None (CT only: SUV fields are
    None). Keys: :data:`CSV_FIELDS`."""
    if suv is not None and suv.shape != mask.shape:
        raise ValueError(f"SUV volume {suv.shape} is not on the mask grid {mask.shape}")
    labels = lesion_labels(mask.data)
    n = int(labels.max())
    if n == 0:
        return []
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    order = list(range(1, n + 1))
    kernel = sphere_kernel(mask.affine) if suv is not None else None
    boxes = ndimage.find_objects(labels)  # per-lesion bounding boxes: each lesion costs its box only
    suv_data = np.asarray(suv.data) if suv is not None else None
    rows = []
    for new_id, lab in enumerate(order, start=1):
        box = boxes[lab - 1]
        assert box is not None
        les = labels[box] == lab
        idx = np.argwhere(les) + np.array([b.start for b in box])
        centroid = mask.index_to_world(idx.mean(axis=0))[0]
        vol_ml = float(counts[lab]) * mask.voxel_volume_ml
        row: dict[str, Any] = {"id": new_id, "voxels": int(counts[lab]), "volume_ml": vol_ml,
                               "suv_max": None, "suv_mean": None, "suv_peak": None, "tlg": None,
                               "centroid_x_mm": float(centroid[0]), "centroid_y_mm": float(centroid[1]),
                               "centroid_z_mm": float(centroid[2])}
        if suv_data is not None and kernel is not None:
            vals = suv_data[box][les].astype(np.float64)
            row["suv_max"] = float(vals.max())
            row["suv_mean"] = float(vals.mean())
            row["suv_peak"] = _peak_in_box(suv_data, les, box, kernel)
            row["tlg"] = row["suv_mean"] * vol_ml
        rows.append(row)
    return rows


def lesions_csv(rows: list[dict[str, Any]]) -> str:
    """The lesion table as CSV text (header + one line per lesion; empty SUV fields for CT only)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                    for k in CSV_FIELDS})
    return buf.getvalue()
