"""What the preview shows (see :mod:`autopaint.segment.preview`): the mask's connected components
matched to the lesion table's rows, one axial row per lesion (largest first; a representative slice
for a healthy result) and the in-plane crop to the body. Arrays are canonical RAS (I, J, K)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NO_LESION = "No lesion detected"
_MIN_FOV_MM = 120.0        # the axial field of view is cropped to the body, but not below this

Box = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class Row:
    """One axial slice to draw: canonical ``k``, its world z (mm), the lesion id (None: healthy
    result) and the row's title."""

    k: int
    z_mm: float
    lesion_id: int | None
    title: str


class Components:
    """26-connected components of the canonical mask (labelled in the mask's bounding box) matched to
    the lesion table's rows: the nearest centroid, preferring the same voxel count."""

    def __init__(self, mask_c: np.ndarray, caff: np.ndarray, lesions: Sequence[Mapping[str, Any]]) -> None:
        import cc3d
        from scipy import ndimage

        self.offset = np.zeros(3, dtype=int)
        self.labels = np.zeros((0, 0, 0), dtype=np.uint32)
        self.boxes: list[Any] = []
        self.lesion_id: dict[int, int] = {}     # component label -> lesion id
        self.label_of: dict[int, int] = {}      # lesion id -> component label
        self.centroid: dict[int, np.ndarray] = {}  # component label -> canonical (i, j, k)
        kk = np.flatnonzero(mask_c.any(axis=(0, 1)))
        if kk.size == 0:
            return
        sub_k = mask_c[:, :, kk[0]:kk[-1] + 1]
        ii = np.flatnonzero(sub_k.any(axis=(1, 2)))
        jj = np.flatnonzero(sub_k.any(axis=(0, 2)))
        self.offset = np.array([ii[0], jj[0], kk[0]])
        sub = np.ascontiguousarray(sub_k[ii[0]:ii[-1] + 1, jj[0]:jj[-1] + 1], dtype=np.uint8)
        self.labels = np.asarray(cc3d.connected_components(sub, connectivity=26), dtype=np.uint32)
        n = int(self.labels.max())
        counts = np.bincount(self.labels.ravel(), minlength=n + 1)
        self.boxes = list(ndimage.find_objects(self.labels))
        world = {}
        for lab in range(1, n + 1):
            b = self.boxes[lab - 1]
            idx = np.argwhere(self.labels[b] == lab) + np.array([s.start for s in b]) + self.offset
            self.centroid[lab] = idx.mean(axis=0)
            world[lab] = caff[:3, :3] @ self.centroid[lab] + caff[:3, 3]
        free = set(range(1, n + 1))
        for row in lesions:
            if not free:
                break
            cen = np.array([float(row.get(f"centroid_{a}_mm") or 0.0) for a in "xyz"])
            vox = row.get("voxels")

            def cost(lab: int, cen: np.ndarray = cen, vox: Any = vox) -> float:
                return float(np.linalg.norm(world[lab] - cen)) + (0.0 if vox in (None, counts[lab]) else 1e4)

            best = min(sorted(free), key=cost)
            free.discard(best)
            self.lesion_id[best] = int(row["id"])
            self.label_of[int(row["id"])] = best

    def best_slice(self, lesion_id: int) -> int | None:
        """Canonical k of the lesion's largest axial cross-section (ties: the lowest k)."""
        lab = self.label_of.get(lesion_id)
        if lab is None:
            return None
        b = self.boxes[lab - 1]
        area = (self.labels[b] == lab).sum(axis=(0, 1))
        return int(np.argmax(area)) + b[2].start + int(self.offset[2])

    def on_slice(self, k: int) -> list[tuple[int, np.ndarray]]:
        """(lesion id, (n, 2) canonical (i, j) indices of its cross-section) for each numbered lesion
        on canonical slice ``k``, by id."""
        kk = k - int(self.offset[2])
        if self.labels.size == 0 or not 0 <= kk < self.labels.shape[2]:
            return []
        plane = self.labels[:, :, kk]
        out = [(self.lesion_id[int(lab)], np.argwhere(plane == lab) + self.offset[:2])
               for lab in np.unique(plane) if int(lab) in self.lesion_id]
        return sorted(out, key=lambda t: t[0])


def lesion_rows(mask: np.ndarray, pet: np.ndarray | None, affine: np.ndarray) -> list[dict[str, Any]]:
    """The lesion table of ``mask`` (when the caller gives none)."""
    from autopaint.imaging.volume import Volume
    from autopaint.segment.lesions import lesion_table

    suv = None if pet is None else Volume(np.asarray(pet, np.float32), affine)
    return lesion_table(Volume(mask.astype(np.uint8), affine), suv)


def choose_rows(comps: Components, lesions: Sequence[Mapping[str, Any]], res_c: np.ndarray, caff: np.ndarray,
                max_rows: int) -> list[Row]:
    """One row per lesion (largest first, at most ``max_rows``); for a healthy result the middle
    slice of the analysed region (the slices with a residual; else the middle of the scan)."""
    rows: list[Row] = []
    for les in lesions[:max(1, max_rows)]:
        lid = int(les["id"])
        k = comps.best_slice(lid)
        if k is None:
            continue
        z = _slice_z(caff, res_c.shape, k)
        parts = [f"Lesion {lid}"]
        if les.get("volume_ml") is not None:
            parts.append(f"{float(les['volume_ml']):.1f} ml")
        if les.get("suv_max") is not None:
            parts.append(f"SUVmax {float(les['suv_max']):.1f}")
        parts.append(f"axial z = {z:.1f} mm")
        rows.append(Row(k, z, lid, "  ·  ".join(parts)))
    if rows:
        return rows
    analysed = np.flatnonzero(res_c.any(axis=(0, 1)))
    k = int((analysed[0] + analysed[-1]) // 2) if analysed.size else res_c.shape[2] // 2
    z = _slice_z(caff, res_c.shape, k)
    where = "middle of the analysed region" if analysed.size else "middle of the scan"
    return [Row(k, z, None, f"{NO_LESION}  ·  representative axial slice z = {z:.1f} mm ({where})")]


def _slice_z(caff: np.ndarray, shape: tuple[int, ...], k: int) -> float:
    """World z (mm) of the centre of canonical axial slice ``k``."""
    c = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0, float(k), 1.0])
    return float((caff @ c)[2])


def crop_box(ct_c: np.ndarray | None, pet_c: np.ndarray | None, mask_c: np.ndarray, sp: np.ndarray) -> Box:
    """In-plane (i, j) ranges covering the body (CT > -500 HU, else PET above 5 % of its 99th
    percentile; on every few slices) and the mask, with a 10 mm margin; at least 12 cm wide."""
    ks = slice(None, None, max(1, mask_c.shape[2] // 32))
    if ct_c is not None:
        fg = (ct_c[:, :, ks] > -500.0).any(axis=2)
    else:
        assert pet_c is not None
        level = 0.05 * max(float(np.percentile(pet_c[::4, ::4, ks], 99)), 1e-6)
        fg = (pet_c[:, :, ks] > level).any(axis=2)
    fg = np.asarray(fg | mask_c.any(axis=2), dtype=bool)
    out = []
    for axis in (0, 1):
        idx = np.flatnonzero(fg.any(axis=1 - axis))
        n = mask_c.shape[axis]
        pad = int(np.ceil(10.0 / sp[axis]))
        lo, hi = (max(0, int(idx[0]) - pad), min(n, int(idx[-1]) + 1 + pad)) if idx.size else (0, n)
        want = min(n, int(np.ceil(_MIN_FOV_MM / sp[axis])))
        if hi - lo < want:  # grown evenly around its centre, within the scan
            lo = max(0, min((lo + hi) // 2 - want // 2, n - want))
            hi = lo + want
        out.append((lo, hi))
    return out[0], out[1]
