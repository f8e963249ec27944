"""Organ-of-interest (OOI) masks on the CT grid (paper §2.5 "Preparing the input slices").

The paper segmented lung fields with a pretrained P-HNN and cropped head-and-neck volumes by hand.
We cannot ship a P-HNN, so :func:`lung_mask` is a classical, pathology-inclusive lung-field method
(air inside the body, trachea removed, largest 1-2 components, each lung closed with a large ball and
per axial slice with a large disk and hole-filled so that soft-tissue tumours touching the pleura or
the mediastinum stay inside). :func:`headneck_mask` finds the skull base and the lung apex
automatically. Speed: a 512 x 512 x ~100 CT takes ~1-2 s on one core (was ~10 s); the per-slice
work is vectorised in :mod:`autopaint.imaging.organs_morph` (bench: ``bench/organs_speed.py``).

All functions take a CT :class:`Volume` in HU on any grid and return bool ``(I, J, K)`` on that same
grid; internally they work on the canonical RAS view (:mod:`autopaint.imaging.slicegrid`), so
"axial slice" means ``canonical[:, :, k]`` with k inferior -> superior.
"""

from __future__ import annotations

import logging

import numpy as np

from autopaint.errors import InvalidInput
from autopaint.imaging.organs_morph import (
    bbox,
    box_opening,
    close_fill_slices,
    component_labels,
    fill_holes_slices,
    largest_component,
    slice_component_stats,
)
from autopaint.imaging.resample import resample_to
from autopaint.imaging.slicegrid import Canonical
from autopaint.imaging.volume import Volume

logger = logging.getLogger(__name__)

BODY_HU = -500.0
LUNG_AIR_HU = -400.0
BONE_HU = 300.0
COARSE_MM = 2.0   # in-plane block size (mm) of the lung-field closing


def _canon(ct: Volume) -> tuple[Canonical, np.ndarray, np.ndarray]:
    """(canonical map, canonical HU view (I', J', K'), canonical spacing mm)."""
    can = Canonical.for_affine(ct.affine, ct.shape)
    return can, can.to_canonical(np.asarray(ct.data)), can.canonical_spacing(ct.affine)


def _nonempty(mask: np.ndarray, what: str) -> np.ndarray:
    if not mask.any():
        raise InvalidInput(f"the {what} mask is empty: this does not look like the expected anatomy",
                           code="empty_organ_mask")
    return mask


def _coarse_factor(spacing: np.ndarray, coarse_mm: float = COARSE_MM) -> int:
    """In-plane block size for the lung closing: blocks of about ``coarse_mm`` (1 = full resolution)."""
    return max(1, int(round(coarse_mm / float(np.min(spacing[:2])))))


def _body_box(hu: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice] | None]:
    """Body on the canonical grid and its in-plane bounding box (all slices), None when empty.

    HU > -500; a thin opening (~3 mm, in-plane box, separable min/max filters) detaches the table /
    blankets; the largest 26-connected component; holes filled per axial slice. Everything after the
    threshold runs on bounding boxes (same result: all outside them is background)."""
    fg = hu > BODY_HU
    out = np.zeros(hu.shape, bool)
    box = bbox(fg)
    if box is None:
        return out, None
    r = np.maximum(1, np.round(3.0 / spacing[:2]).astype(int))
    body = largest_component(box_opening(fg[box], (int(r[0]), int(r[1]))))
    inner = bbox(body)
    if inner is None:
        return out, None
    view = out[box]
    view[inner] = fill_holes_slices(body[inner])
    full = (slice(box[0].start + inner[0].start, box[0].start + inner[0].stop),
            slice(box[1].start + inner[1].start, box[1].start + inner[1].stop), slice(0, hu.shape[2]))
    return out, full


def _body_canonical(hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return _body_box(hu, spacing)[0]


def body_mask(ct: Volume) -> np.ndarray:
    """Patient body: HU > -500, opened 3 mm, largest component, holes filled per axial slice.

    ``ct``: HU on any grid. Returns bool (I, J, K) on ``ct``'s grid.
    """
    can, hu, sp = _canon(ct)
    return _nonempty(np.ascontiguousarray(can.from_canonical(_body_canonical(hu, sp))), "body")


def _body_extent(body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axial slice of a (I, J, K) body: (has body, i-centre, i-width) of its left-right extent."""
    rows = np.asarray(body.any(axis=1))                         # (I, K)
    has = np.asarray(rows.any(axis=0))
    first = np.argmax(rows, axis=0)
    last = rows.shape[0] - 1 - np.argmax(rows[::-1], axis=0)
    return has, (first + last) / 2.0, (last - first + 1).astype(np.float64)


def _remove_trachea(air: np.ndarray, body: np.ndarray, spacing: np.ndarray,
                    max_area_mm2: float = 800.0) -> np.ndarray:
    """Drop per-slice (4-connected) air components that are small and central (trachea / main
    bronchi): area < ``max_area_mm2`` and centroid within the central 20 % of the body's left-right
    width. All slices at once (:func:`slice_component_stats`)."""
    labels, area, ci, kk = slice_component_stats(air)
    has, centre, width = _body_extent(body)
    drop = ((area * float(spacing[0] * spacing[1]) < max_area_mm2) & has[kk]
            & (np.abs(ci - centre[kk]) < 0.1 * width[kk]))
    drop[0] = False
    return air & ~drop[labels]


def _lung_components(air: np.ndarray, hu: np.ndarray, voxel_ml: float, min_ml: float = 10.0,
                     gas_fraction: float = 0.4, big_ml: float = 500.0) -> np.ndarray:
    """The 1-2 largest lung-like air components.

    Lung parenchyma is air mixed with tissue (about -850 HU); bowel gas and the airways are pure
    air. On the real CTs of ``totalseg-ct`` lung bases had 0 % of voxels below -950 HU and bowel gas
    45-69 %, so a component with more than ``gas_fraction`` of its voxels below -950 HU is taken as
    gas, unless it is the largest and over ``big_ml`` (an emphysematous lung). Components under
    ``min_ml`` are ignored; the second lung is kept when >= 10 % of the first.
    """
    labels, counts = component_labels(air)
    dark = np.bincount(labels[hu < -950], minlength=counts.size)
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
    out = np.zeros(air.shape, bool)
    for lab in keep:
        out |= labels == lab
    return out


def _lung_canonical(hu: np.ndarray, sp: np.ndarray, closing_mm: float, margin_mm: float,
                    factor: int, ball: bool = True) -> np.ndarray:
    """:func:`lung_mask` on the canonical grid, the closing on ``factor`` x ``factor`` blocks."""
    body, box = _body_box(hu, sp)
    if box is None:
        return _nonempty(np.zeros(hu.shape, bool), "lung")
    hub, bodyb = hu[box], body[box]
    air = _remove_trachea((hub < LUNG_AIR_HU) & bodyb, bodyb, sp)
    lungs = _nonempty(_lung_components(air, hub, float(np.prod(sp)) / 1000.0), "lung")
    # left / right split at the body's midline (full-grid index: the crop starts at the body)
    i0 = box[0].start
    mid = int(round((i0 + box[0].stop - 1) / 2.0)) - i0
    out = np.zeros(lungs.shape, bool)
    for part in (slice(0, mid), slice(mid, lungs.shape[0])):
        side = np.zeros_like(lungs)
        side[part] = lungs[part]
        out |= close_fill_slices(side, sp, closing_mm, margin_mm, factor, ball)
    out &= bodyb
    vox_ml = float(np.prod(sp)) / 1000
    logger.info("lung mask: %.1f ml (air components %.1f ml, closing on %dx%d blocks)",
                out.sum() * vox_ml, lungs.sum() * vox_ml, factor, factor)
    full = np.zeros(hu.shape, bool)
    full[box] = out
    return full


def _lung_field(ct: Volume, closing_mm: float, margin_mm: float, factor: int | None,
                ball: bool = True) -> np.ndarray:
    """:func:`lung_mask` with an explicit closing block size (None: :func:`_coarse_factor`; 1 = the
    exact full-resolution closing). Bool (I, J, K) on ``ct``'s grid."""
    can, hu, sp = _canon(ct)
    f = _coarse_factor(sp) if factor is None else int(factor)
    return np.ascontiguousarray(can.from_canonical(_lung_canonical(hu, sp, closing_mm, margin_mm, f, ball)))


def lung_mask(ct: Volume, closing_mm: float = 25.0, margin_mm: float = 3.0) -> np.ndarray:
    """Pathology-inclusive lung field (thorax preset), bool (I, J, K) on ``ct``'s grid.

    Air (HU < -400) inside the body, trachea/main bronchi removed where they are separate small
    central components, the largest 1-2 lung-like components (not bowel gas, see
    :func:`_lung_components`), left and right lungs split at the body's midline, then each lung
    closed with a ball of radius ``closing_mm`` united with its closing per axial slice by a disk
    of ``closing_mm``, and hole-filled per slice, so that a soft-tissue tumour up to ~2*closing_mm
    wide that indents the lung from the chest wall or the mediastinum is inside the mask (the ball
    also takes in a tumour that fills the lung's edge along more than 2*closing_mm of a slice but
    has lung above and below it; on the full-size phantoms it raised the worst juxtapleural tumour
    from 79 % to 97 % inside, for ~2.5 % more volume, mostly rib grooves); finally dilated
    in-plane by ``margin_mm`` (inside the body): a closing cannot fill tumour voxels that lie ON a
    flat stretch of the lung border (a disk grazes it), the margin takes that boundary layer in.
    Air components and the margin are computed at full resolution; the closing runs on in-plane
    blocks of about ``COARSE_MM`` (:func:`autopaint.imaging.organs_morph.close_fill_slices`; full
    resolution for pixels over ~1.33 mm).
    """
    return _lung_field(ct, closing_mm, margin_mm, None)


def _skull_base_k(hu: np.ndarray, body: np.ndarray, sp: np.ndarray,
                  min_enclosed_mm2: float = 2000.0) -> int | None:
    """Lowest slice of the top-most run of 'skull ring' slices: bone (HU > 300) that encloses
    >= ``min_enclosed_mm2`` of non-bone (the brain inside the cranium)."""
    bone = (hu > BONE_HU) & body
    enclosed = (fill_holes_slices(bone) & ~bone).sum(axis=(0, 1)) * float(sp[0] * sp[1])
    ring = bone.any(axis=(0, 1)) & (enclosed >= min_enclosed_mm2)
    ks = np.nonzero(ring)[0]
    if ks.size == 0:
        return None
    k = int(ks[-1])
    while k - 1 >= 0 and ring[k - 1]:
        k -= 1
    return k


def _lung_apex_k(hu: np.ndarray, body: np.ndarray, sp: np.ndarray, below: int,
                 min_area_mm2: float = 500.0) -> int | None:
    """Highest slice <= ``below`` with >= ``min_area_mm2`` of lung air: lateral air (4-connected
    components of HU < -400 in the body centred outside the central 20 % of the body's left-right
    width, so not the airway) that is 26-connected in 3D to the lowest body slice.

    Going down from the skull base to the first slice with lateral air (the first version) stopped
    at the maxillary sinuses / nasal cavity of the full-size head-and-neck phantoms (> 1000 mm^2),
    leaving an empty mask; with shoulders in the slice the lungs' centroids sit at only ~14 % of
    the body width from its centre, hence 20 % and not 30 %."""
    labels, area, ci, kk = slice_component_stats((hu < LUNG_AIR_HU) & body)
    has, centre, width = _body_extent(body)
    lateral = has[kk] & (np.abs(ci - centre[kk]) >= 0.1 * width[kk])
    lateral[0] = False
    ks = np.flatnonzero(has)
    if ks.size == 0:
        return None
    comp, _ = component_labels(lateral[labels])
    bottom = np.unique(comp[:, :, ks[0]])
    bottom = bottom[bottom > 0]
    if bottom.size == 0:
        return None
    lung_mm2 = np.isin(comp, bottom).sum(axis=(0, 1)) * float(sp[0] * sp[1])
    for k in range(min(below, hu.shape[2] - 1), -1, -1):
        if lung_mm2[k] >= min_area_mm2:
            return k
    return None


def headneck_mask(ct: Volume, z_range_mm: tuple[float, float] | None = None) -> np.ndarray:
    """Head-and-neck OOI: the body between the lung apex and the skull base, bool (I, J, K).

    ``z_range_mm=(z_lo, z_hi)``: world z (RAS, mm) range of voxel centres instead of the automatic
    landmarks. Automatic: skull base = lowest slice of the top-most run of skull-ring slices
    (none -> top of the volume); lung apex = highest slice below it with >= 500 mm^2 of lateral air
    connected to the bottom of the scan (:func:`_lung_apex_k`; none -> bottom of the volume); the
    mask keeps slices above the apex up to the skull base.
    """
    can, hu, sp = _canon(ct)
    body, box = _body_box(hu, sp)
    nk = hu.shape[2]
    if z_range_mm is not None:
        lo, hi = sorted(float(v) for v in z_range_mm)
        a = ct.affine
        z = (a[2, 0] * np.arange(ct.shape[0])[:, None, None] + a[2, 1] * np.arange(ct.shape[1])[None, :, None]
             + a[2, 2] * np.arange(ct.shape[2])[None, None, :] + a[2, 3])
        body_orig = np.ascontiguousarray(can.from_canonical(body))
        return _nonempty(body_orig & (z >= lo) & (z <= hi), "head-and-neck")
    if box is None:
        return _nonempty(np.zeros(ct.shape, bool), "head-and-neck")
    top = _skull_base_k(hu[box], body[box], sp)
    k_hi = nk - 1 if top is None else top
    apex = _lung_apex_k(hu[box], body[box], sp, below=k_hi)
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
