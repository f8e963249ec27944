"""Organ-of-interest (OOI) masks on the CT grid (paper §2.5 "Preparing the input slices").

The paper segmented lung fields with a pretrained P-HNN and cropped head-and-neck volumes by hand.
We cannot ship a P-HNN, so :func:`lung_mask` is a classical, pathology-inclusive lung-field method
(air inside the body, trachea removed, largest 1-2 components, each lung closed per axial slice with
a large disk and hole-filled so that soft-tissue tumours touching the pleura or the mediastinum stay
inside). :func:`headneck_mask` finds the skull base and the lung apex automatically.

All functions take a CT :class:`Volume` in HU on any grid and return bool ``(I, J, K)`` on that same
grid; internally they work on the canonical RAS view (:mod:`autopaint.imaging.slicegrid`), so
"axial slice" means ``canonical[:, :, k]`` with k inferior -> superior.
"""

from __future__ import annotations

import logging

import cc3d
import numpy as np
from scipy import ndimage as ndi

from autopaint.errors import InvalidInput
from autopaint.imaging.resample import resample_to
from autopaint.imaging.slicegrid import Canonical
from autopaint.imaging.volume import Volume

logger = logging.getLogger(__name__)

BODY_HU = -500.0
LUNG_AIR_HU = -400.0
BONE_HU = 300.0


def _canon(ct: Volume) -> tuple[Canonical, np.ndarray, np.ndarray]:
    """(canonical map, canonical HU view (I', J', K'), canonical spacing mm)."""
    can = Canonical.for_affine(ct.affine, ct.shape)
    return can, can.to_canonical(np.asarray(ct.data)), can.canonical_spacing(ct.affine)


def _nonempty(mask: np.ndarray, what: str) -> np.ndarray:
    if not mask.any():
        raise InvalidInput(f"the {what} mask is empty: this does not look like the expected anatomy",
                           code="empty_organ_mask")
    return mask


def _largest(mask: np.ndarray, n: int = 1, min_fraction: float = 0.0) -> np.ndarray:
    """Keep the ``n`` largest 26-connected components (those >= min_fraction of the largest)."""
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    if counts.max(initial=0) == 0:
        return np.zeros(mask.shape, bool)
    order = np.argsort(counts)[::-1][:n]
    keep = [lab for lab in order if counts[lab] > 0 and counts[lab] >= min_fraction * counts[order[0]]]
    return np.isin(labels, keep)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (I, J, K)."""
    out = np.empty_like(mask, dtype=bool)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return out


def _body_canonical(hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    fg = hu > BODY_HU
    # a thin opening (~3 mm, in-plane) detaches the table / blankets before the largest component
    r = np.maximum(1, np.round(3.0 / spacing[:2]).astype(int))
    size = (2 * r[0] + 1, 2 * r[1] + 1, 1)  # box opening via separable min/max filters (fast)
    fg = ndi.maximum_filter(ndi.minimum_filter(fg.view(np.uint8), size=size, mode="constant"),
                            size=size, mode="constant").astype(bool)
    return _fill_slices(_largest(fg))


def body_mask(ct: Volume) -> np.ndarray:
    """Patient body: HU > -500, opened 3 mm, largest component, holes filled per axial slice.

    ``ct``: HU on any grid. Returns bool (I, J, K) on ``ct``'s grid.
    """
    can, hu, sp = _canon(ct)
    return _nonempty(np.ascontiguousarray(can.from_canonical(_body_canonical(hu, sp))), "body")


def _close_disk(mask2d: np.ndarray, radius_mm: float, spacing: np.ndarray,
                margin_mm: float = 0.0) -> np.ndarray:
    """Binary closing of one slice with a Euclidean disk of ``radius_mm`` (anisotropic pixels ok),
    holes filled, then dilated by ``margin_mm``; distance transforms on the bounding box padded by
    the radius."""
    if not mask2d.any():
        return mask2d
    pad = np.ceil((radius_mm + margin_mm) / spacing).astype(int) + 1
    ii, jj = np.nonzero(mask2d)
    sl = (slice(max(ii.min() - pad[0], 0), ii.max() + pad[0] + 1),
          slice(max(jj.min() - pad[1], 0), jj.max() + pad[1] + 1))
    sub = np.pad(mask2d[sl], [(pad[0], pad[0]), (pad[1], pad[1])])
    dil = ndi.distance_transform_edt(~sub, sampling=spacing) <= radius_mm
    clo = ndi.distance_transform_edt(dil, sampling=spacing) > radius_mm
    clo = ndi.binary_fill_holes(clo | sub)
    if margin_mm > 0:
        clo = ndi.distance_transform_edt(~clo, sampling=spacing) <= margin_mm
    out = mask2d.copy()
    out[sl] |= clo[pad[0]:-pad[0], pad[1]:-pad[1]]
    return out


def _remove_trachea(air: np.ndarray, body: np.ndarray, spacing: np.ndarray,
                    max_area_mm2: float = 800.0) -> np.ndarray:
    """Drop per-slice air components that are small and central (trachea / main bronchi): area <
    ``max_area_mm2`` and centroid within the central 20 % of the body's left-right width."""
    out = air.copy()
    px = float(spacing[0] * spacing[1])
    for k in range(air.shape[2]):
        sl = air[:, :, k]
        if not sl.any():
            continue
        bi = np.nonzero(body[:, :, k].any(axis=1))[0]
        if bi.size == 0:
            continue
        centre, width = (bi[0] + bi[-1]) / 2.0, float(bi[-1] - bi[0] + 1)
        lab, n = ndi.label(sl)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lab), lab, idx) * px
        cents = ndi.center_of_mass(sl, lab, idx)
        for lab_id, area, cen in zip(idx, areas, cents, strict=True):
            if area < max_area_mm2 and abs(cen[0] - centre) < 0.1 * width:
                out[:, :, k][lab == lab_id] = False
    return out


def _lung_components(air: np.ndarray, hu: np.ndarray, voxel_ml: float, min_ml: float = 10.0,
                     gas_fraction: float = 0.4, big_ml: float = 500.0) -> np.ndarray:
    """The 1-2 largest lung-like air components.

    Lung parenchyma is air mixed with tissue (about -850 HU); bowel gas and the airways are pure
    air. On the real CTs of ``totalseg-ct`` lung bases had 0 % of voxels below -950 HU and bowel gas
    45-69 %, so a component with more than ``gas_fraction`` of its voxels below -950 HU is taken as
    gas, unless it is the largest and over ``big_ml`` (an emphysematous lung). Components under
    ``min_ml`` are ignored; the second lung is kept when >= 10 % of the first.
    """
    labels = cc3d.connected_components(air.astype(np.uint8), connectivity=26)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    dark = np.bincount(labels.ravel(), weights=(hu < -950).ravel(), minlength=counts.size)
    keep: list[int] = []
    for rank, lab in enumerate(np.argsort(counts)[::-1]):
        vol = counts[lab] * voxel_ml
        if vol < min_ml or len(keep) == 2:
            break
        gas = dark[lab] / counts[lab] > gas_fraction
        if gas and not (rank == 0 and vol >= big_ml):
            logger.debug("air component of %.1f ml looks like gas (%.0f %% < -950 HU): skipped",
                         vol, 100 * dark[lab] / counts[lab])
            continue
        if keep and counts[lab] < 0.1 * counts[keep[0]]:
            break
        keep.append(int(lab))
    return np.isin(labels, keep) if keep else np.zeros(air.shape, bool)


def lung_mask(ct: Volume, closing_mm: float = 25.0, margin_mm: float = 3.0) -> np.ndarray:
    """Pathology-inclusive lung field (thorax preset), bool (I, J, K) on ``ct``'s grid.

    Air (HU < -400) inside the body, trachea/main bronchi removed where they are separate small
    central components, the largest 1-2 lung-like components (not bowel gas, see
    :func:`_lung_components`), left
    and right lungs split at the body's midline, then each lung closed per axial slice with a disk
    of ``closing_mm`` and hole-filled, so that a soft-tissue tumour up to ~2*closing_mm wide that
    indents the lung from the chest wall or the mediastinum is inside the mask; finally dilated
    in-plane by ``margin_mm`` (inside the body): a closing cannot fill tumour voxels that lie ON a
    flat stretch of the lung border (a disk grazes it), the margin takes that boundary layer in.
    """
    can, hu, sp = _canon(ct)
    body = _body_canonical(hu, sp)
    air = (hu < LUNG_AIR_HU) & body
    air = _remove_trachea(air, body, sp)
    lungs = _lung_components(air, hu, float(np.prod(sp)) / 1000.0)
    _nonempty(lungs, "lung")
    bi = np.nonzero(body.any(axis=(1, 2)))[0]
    mid = int(round((bi[0] + bi[-1]) / 2.0))
    out = np.zeros_like(lungs)
    for part in (slice(0, mid), slice(mid, lungs.shape[0])):
        side = np.zeros_like(lungs)
        side[part] = lungs[part]
        for k in np.nonzero(side.any(axis=(0, 1)))[0]:
            out[:, :, k] |= _close_disk(side[:, :, k], closing_mm, sp[:2], margin_mm)
    out &= body
    logger.info("lung mask: %.1f ml (air components %.1f ml)",
                out.sum() * float(np.prod(sp)) / 1000, lungs.sum() * float(np.prod(sp)) / 1000)
    return np.ascontiguousarray(can.from_canonical(out))


def _skull_base_k(hu: np.ndarray, body: np.ndarray, sp: np.ndarray,
                  min_enclosed_mm2: float = 2000.0) -> int | None:
    """Lowest slice of the top-most run of 'skull ring' slices: bone (HU > 300) that encloses
    >= ``min_enclosed_mm2`` of non-bone (the brain inside the cranium)."""
    px = float(sp[0] * sp[1])
    ring = np.zeros(hu.shape[2], bool)
    for k in range(hu.shape[2]):
        bone = (hu[:, :, k] > BONE_HU) & body[:, :, k]
        if bone.any():
            ring[k] = (ndi.binary_fill_holes(bone).sum() - bone.sum()) * px >= min_enclosed_mm2
    ks = np.nonzero(ring)[0]
    if ks.size == 0:
        return None
    k = int(ks[-1])
    while k - 1 >= 0 and ring[k - 1]:
        k -= 1
    return k


def _lung_apex_k(hu: np.ndarray, body: np.ndarray, sp: np.ndarray, below: int,
                 min_area_mm2: float = 500.0) -> int | None:
    """First slice going down from ``below`` with >= ``min_area_mm2`` of lateral air in the body
    (air components centred outside the central 30 % of the body width: not the airway)."""
    px = float(sp[0] * sp[1])
    air = (hu < LUNG_AIR_HU) & body
    for k in range(min(below, hu.shape[2] - 1), -1, -1):
        sl = air[:, :, k]
        if sl.sum() * px < min_area_mm2:
            continue
        bi = np.nonzero(body[:, :, k].any(axis=1))[0]
        centre, width = (bi[0] + bi[-1]) / 2.0, float(bi[-1] - bi[0] + 1)
        lab, n = ndi.label(sl)
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lab), lab, idx) * px
        cents = ndi.center_of_mass(sl, lab, idx)
        lateral = sum(a for a, c in zip(areas, cents, strict=True)
                      if abs(c[0] - centre) >= 0.15 * width)
        if lateral >= min_area_mm2:
            return k
    return None


def headneck_mask(ct: Volume, z_range_mm: tuple[float, float] | None = None) -> np.ndarray:
    """Head-and-neck OOI: the body between the lung apex and the skull base, bool (I, J, K).

    ``z_range_mm=(z_lo, z_hi)``: world z (RAS, mm) range of voxel centres instead of the automatic
    landmarks. Automatic: skull base = lowest slice of the top-most run of skull-ring slices
    (none -> top of the volume); lung apex = first slice below it with lateral air in the body
    (none -> bottom of the volume); the mask keeps slices above the apex up to the skull base.
    """
    can, hu, sp = _canon(ct)
    body = _body_canonical(hu, sp)
    nk = hu.shape[2]
    if z_range_mm is not None:
        lo, hi = sorted(float(v) for v in z_range_mm)
        a = ct.affine
        z = (a[2, 0] * np.arange(ct.shape[0])[:, None, None] + a[2, 1] * np.arange(ct.shape[1])[None, :, None]
             + a[2, 2] * np.arange(ct.shape[2])[None, None, :] + a[2, 3])
        body_orig = np.ascontiguousarray(can.from_canonical(body))
        return _nonempty(body_orig & (z >= lo) & (z <= hi), "head-and-neck")
    top = _skull_base_k(hu, body, sp)
    k_hi = nk - 1 if top is None else top
    apex = _lung_apex_k(hu, body, sp, below=k_hi)
    k_lo = 0 if apex is None else apex + 1
    logger.info("head-and-neck mask: skull base k=%s, lung apex k=%s (of %d canonical slices)",
                top, apex, nk)
    keep = np.zeros(nk, bool)
    keep[k_lo:k_hi + 1] = True
    out = body & keep[None, None, :]
    return _nonempty(np.ascontiguousarray(can.from_canonical(out)), "head-and-neck")


def mask_from_user(mask: Volume, reference: Volume) -> np.ndarray:
    """A user's mask on any grid -> bool (I, J, K) on ``reference``'s grid (nearest neighbour)."""
    if mask.shape == reference.shape and np.allclose(mask.affine, reference.affine, atol=1e-3):
        out = np.asarray(mask.data) > 0.5
    else:
        out = resample_to(mask.with_data(np.asarray(mask.data, np.float32)), reference,
                          order=0).data > 0.5
    return _nonempty(out, "user organ")


def ooi_mask(ct: Volume, preset: str, user_mask: Volume | None = None) -> np.ndarray:
    """The organ-of-interest mask for ``preset`` on the CT grid: the user's mask when given, else
    the lung field (thorax), head-and-neck region (headneck) or the body (custom)."""
    if user_mask is not None:
        return mask_from_user(user_mask, ct)
    if preset == "thorax":
        return lung_mask(ct)
    if preset == "headneck":
        return headneck_mask(ct)
    if preset == "custom":
        return body_mask(ct)
    raise InvalidInput(f"unknown preset {preset!r}", code="bad_preset")


def mask_volume_ml(mask: np.ndarray, ref: Volume) -> float:
    """Volume of a bool mask on ``ref``'s grid in millilitres."""
    return float(np.count_nonzero(mask) * ref.voxel_volume_ml)
