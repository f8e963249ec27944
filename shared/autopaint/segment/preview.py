"""preview.png: a one-page visual summary of a segmentation, drawn for a clinician.

Layout: a title with the research-use notice and a one-line summary ("No lesion detected" / "N lesions
detected"); one row per lesion, largest first (at most ``max_rows``), each an axial slice through the
lesion's largest cross-section shown as CT | PET fused on CT | residual, with the final mask outlined
and lesion numbers (the ids of lesions.csv) and a row title with the lesion's id, volume, SUVmax and
the slice's world z (mm). A healthy result shows one representative slice (the middle of the analysed
region) under the words "No lesion detected". On the right a coronal maximum-intensity projection of
the PET at true proportions with the mask's projection outlined and numbers at the lesion centroids.
Below the rows a colour bar per column (CT in HU, SUV, residual with the detection threshold marked),
a legend of the colours, and a footer with the model (name, sha256), autopaint version, threshold,
date and "Research use only — not for diagnosis".

Orientation: arrays are reference-grid (I, J, K) with a RAS+ affine. They are brought to the canonical
RAS orientation (:class:`autopaint.imaging.slicegrid.Canonical`: axis swaps and flips, no
interpolation) and drawn in the radiological convention: axial slices with anterior up and the
patient's right on the viewer's left (marked R / L / A / P), the coronal MIP with superior up and the
patient's right on the left (R / L / S / I). Axes are in millimetres (extents from the voxel spacing),
so nothing is stretched. The in-plane field of view is cropped to the body (and the mask).

matplotlib's object API with the Agg canvas (no pyplot global state: safe in workers); the layout is
computed in inches (no tight_layout) and the PNG is written by Pillow as a palette image without
metadata or time stamps, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESEARCH_NOTICE = "Research use only — not for diagnosis"
NO_LESION = "No lesion detected"
OUTLINE = "#00e5ff"        # lesion outline (cyan, drawn over a black halo)
PET_CMAP = "hot"           # SUV on the fused PET/CT
RESIDUAL_CMAP = "viridis"  # residual (kept apart from the PET colours)
MIP_CMAP = "gray_r"        # coronal MIP: dark = high uptake
MAX_MIP_NUMBERS = 10       # lesions numbered on the MIP (largest first)
DPI = 100
_N_GREYS = 48              # PNG palette: greys, the rest of the 256 entries for colours

# layout, inches
_PANEL_W = 2.55
_GAP_X = 0.08
_ROW_TITLE = 0.30
_ROW_GAP = 0.14
_MARGIN = 0.25
_HEADER = 0.72
_COL_TITLE = 0.26
_COLORBAR = 0.62
_FOOTER = 0.46
_MIP_GAP = 0.30
_MIP_TICKS = 0.62
_MIP_MIN_H = 4.2
_MIN_FOV_MM = 120.0        # the axial field of view is cropped to the body, but not below this

Box = tuple[tuple[int, int], tuple[int, int]]
Extent = tuple[float, float, float, float]


@dataclass(frozen=True)
class _Row:
    """One axial slice to draw: canonical ``k``, its world z (mm), the lesion id (None: healthy
    result) and the row's title."""

    k: int
    z_mm: float
    lesion_id: int | None
    title: str


def render_preview(ct: np.ndarray | None, pet: np.ndarray | None, residual: np.ndarray, mask: np.ndarray,
                   *, affine: np.ndarray | None = None, lesions: Sequence[Mapping[str, Any]] | None = None,
                   report: Mapping[str, Any] | None = None,
                   ct_window: tuple[float, float] = (-1000.0, 500.0),
                   suv_window: tuple[float, float] = (0.0, 12.0), date: str | None = None,
                   max_rows: int = 3) -> bytes:
    """PNG bytes of the preview (see the module doc; arguments as :func:`preview_figure`)."""
    fig = preview_figure(ct, pet, residual, mask, affine=affine, lesions=lesions, report=report,
                         ct_window=ct_window, suv_window=suv_window, date=date, max_rows=max_rows)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    return _png(rgba[..., :3])


def preview_figure(ct: np.ndarray | None, pet: np.ndarray | None, residual: np.ndarray, mask: np.ndarray,
                   *, affine: np.ndarray | None = None, lesions: Sequence[Mapping[str, Any]] | None = None,
                   report: Mapping[str, Any] | None = None,
                   ct_window: tuple[float, float] = (-1000.0, 500.0),
                   suv_window: tuple[float, float] = (0.0, 12.0), date: str | None = None,
                   max_rows: int = 3) -> Any:
    """The preview as a matplotlib ``Figure`` on an Agg canvas.

    ``ct`` (HU), ``pet`` (SUV), ``residual`` ([0, 1]) and ``mask`` (bool): (I, J, K) on the reference
    grid whose RAS+ ``affine`` is given (None: identity). ``lesions``: the rows of
    :func:`autopaint.segment.lesions.lesion_table` for ``mask`` (None: the report's ``lesions``, else
    computed here). ``report``: the pipeline's report dict (model name and sha256, threshold, mode;
    an optional ``date``). ``date``: the footer's date (default: the report's ``date``, else none).
    Axes carry labels for tests: ``axial-<row>-<ct|pet|res>``, ``mip``, ``colorbar-<column>``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from autopaint.imaging.slicegrid import Canonical

    if ct is None and pet is None:
        raise ValueError("the preview needs a CT or a PET")
    report = report or {}
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if lesions is None:
        lesions = report.get("lesions")
    if lesions is None:
        lesions = _lesion_rows(mask, pet, aff)
    shape = residual.shape
    canon = Canonical.for_affine(aff, (int(shape[0]), int(shape[1]), int(shape[2])))
    caff = canon.canonical_affine(aff)
    sp = np.linalg.norm(caff[:3, :3], axis=0)
    ct_c = None if ct is None else canon.to_canonical(ct)
    pet_c = None if pet is None else canon.to_canonical(pet)
    res_c, mask_c = canon.to_canonical(residual), canon.to_canonical(mask)
    nk = res_c.shape[2]

    comps = _Components(mask_c, caff, lesions)
    box = _crop_box(ct_c, pet_c, mask_c, sp)
    rows = _rows(comps, lesions, res_c, caff, max_rows)
    threshold = _threshold(report)
    res_max = max(float(res_c.max()), 1.25 * (threshold or 0.0), 0.05)

    cols = (["ct"] if ct_c is not None else []) + (["pet"] if pet_c is not None else []) + ["res"]
    (i0, i1), (j0, j1) = box
    w_mm, h_mm, z_mm = (i1 - i0) * sp[0], (j1 - j0) * sp[1], nk * sp[2]
    panel_h = float(np.clip(_PANEL_W * h_mm / w_mm, 1.3, 3.4))
    mm_per_inch = max(w_mm / _PANEL_W, h_mm / panel_h)
    rows_h = len(rows) * (_ROW_TITLE + panel_h) + (len(rows) - 1) * _ROW_GAP
    left_h = rows_h + _COLORBAR
    mip_w = float(np.clip(max(left_h, _MIP_MIN_H) * w_mm / z_mm, 1.6, 4.2))
    mip_h = min(max(left_h, _MIP_MIN_H), mip_w * z_mm / w_mm)  # the image's own box (true proportions)
    slices_w = len(cols) * _PANEL_W + (len(cols) - 1) * _GAP_X
    right_w = mip_w + _MIP_TICKS
    fig_w = _MARGIN + slices_w + _MIP_GAP + right_w + _MARGIN
    # the legend goes under the MIP when the slice rows leave room there, else under the colour bars
    has_pet = pet_c is not None
    legend_right = right_w >= 3.6 and left_h - mip_h >= _legend_height(right_w, has_pet) + 0.35
    body_h = max(left_h, mip_h) if legend_right else max(left_h + _legend_height(slices_w, has_pet), mip_h)
    fig_h = _HEADER + _COL_TITLE + body_h + _FOOTER

    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def rect(x: float, top: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Inches from the figure's left / top edges -> figure fraction (left, bottom, width, height)."""
        return (x / fig_w, 1.0 - (top + h) / fig_h, w / fig_w, h / fig_h)

    def text(x: float, top: float, s: str, **kw: Any) -> None:
        fig.text(x / fig_w, 1.0 - top / fig_h, s, va="center", **kw)

    _header(text, fig_w, lesions, rows)
    top0 = _HEADER + _COL_TITLE
    titles = {"ct": f"CT (window {ct_window[0]:g} to {ct_window[1]:g} HU)",
              "pet": "PET fused on CT (SUV)" if ct_c is not None else "PET (SUV)",
              "res": "Residual + lesion outline"}
    col_x = [_MARGIN + c * (_PANEL_W + _GAP_X) for c in range(len(cols))]
    for x, name in zip(col_x, cols, strict=True):
        text(x + _PANEL_W / 2, _HEADER + _COL_TITLE * 0.45, titles[name], ha="center", fontsize=9,
             fontweight="bold")
    extent = (_edge(caff, 0, i1 - 1, +1), _edge(caff, 0, i0, -1), _edge(caff, 1, j0, -1), _edge(caff, 1, j1 - 1, +1))
    outlined = set(cols[1:]) if len(cols) > 2 else set(cols)
    for r, row in enumerate(rows):
        top = top0 + r * (_ROW_TITLE + panel_h + _ROW_GAP)
        text(_MARGIN, top + _ROW_TITLE * 0.45, row.title, ha="left", fontsize=9,
             fontweight="bold" if row.lesion_id is not None else "normal")
        sl = (slice(i0, i1), slice(j0, j1), row.k)
        ct_s = None if ct_c is None else _radiological(ct_c[sl])
        pet_s = None if pet_c is None else _radiological(pet_c[sl])
        res_s, m_s = _radiological(res_c[sl]), _radiological(mask_c[sl])
        for c, (x, name) in enumerate(zip(col_x, cols, strict=True)):
            ax = fig.add_axes(rect(x, top + _ROW_TITLE, _PANEL_W, panel_h), label=f"axial-{r}-{name}")
            img = _panel_rgb(name, ct_s, pet_s, res_s, ct_window, suv_window, res_max)
            ax.imshow(img, extent=extent, interpolation="antialiased")
            if name in outlined:
                if m_s.any():
                    _outline(ax, m_s, extent)
                _numbers_axial(ax, comps, row.k, box, caff, extent, mm_per_inch)
            _orientation(ax, ("R", "L", "A", "P"), "white")
            if c == 0:
                _scale_bar(ax, extent)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)

    for x, name in zip(col_x, cols, strict=True):
        cax = fig.add_axes(rect(x + 0.15, top0 + rows_h + 0.22, _PANEL_W - 0.3, 0.11), label=f"colorbar-{name}")
        _colorbar(fig, cax, name, ct_window, suv_window, res_max, threshold)

    mip_x = _MARGIN + slices_w + _MIP_GAP
    src = pet_c if pet_c is not None else ct_c
    assert src is not None
    win = suv_window if pet_c is not None else ct_window
    mip_title = (f"Coronal PET MIP (SUV {win[0]:g}–{win[1]:g})" if pet_c is not None
                 else f"Coronal CT MIP ({win[0]:g} to {win[1]:g} HU)")
    text(mip_x + mip_w / 2, _HEADER + _COL_TITLE * 0.45, mip_title, ha="center", fontsize=9, fontweight="bold")
    _mip(fig.add_axes(rect(mip_x, top0, mip_w, mip_h), label="mip"), src, comps, box, caff, win, len(lesions))

    if legend_right:
        _legend(fig, rect(mip_x, top0 + mip_h + 0.35, right_w, body_h - mip_h - 0.35), right_w, has_pet)
    else:
        _legend(fig, rect(_MARGIN, top0 + left_h, slices_w, body_h - left_h), slices_w, has_pet)
    _footer(text, fig_h, report, date)
    return fig


# --------------------------------------------------------------------------- what to show

class _Components:
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


def _lesion_rows(mask: np.ndarray, pet: np.ndarray | None, affine: np.ndarray) -> list[dict[str, Any]]:
    """The lesion table of ``mask`` (when the caller gives none)."""
    from autopaint.imaging.volume import Volume
    from autopaint.segment.lesions import lesion_table

    suv = None if pet is None else Volume(np.asarray(pet, np.float32), affine)
    return lesion_table(Volume(mask.astype(np.uint8), affine), suv)


def _rows(comps: _Components, lesions: Sequence[Mapping[str, Any]], res_c: np.ndarray, caff: np.ndarray,
          max_rows: int) -> list[_Row]:
    """One row per lesion (largest first, at most ``max_rows``); for a healthy result the middle
    slice of the analysed region (the slices with a residual; else the middle of the scan)."""
    rows: list[_Row] = []
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
        rows.append(_Row(k, z, lid, "  ·  ".join(parts)))
    if rows:
        return rows
    analysed = np.flatnonzero(res_c.any(axis=(0, 1)))
    k = int((analysed[0] + analysed[-1]) // 2) if analysed.size else res_c.shape[2] // 2
    z = _slice_z(caff, res_c.shape, k)
    where = "middle of the analysed region" if analysed.size else "middle of the scan"
    return [_Row(k, z, None, f"{NO_LESION}  ·  representative axial slice z = {z:.1f} mm ({where})")]


def _slice_z(caff: np.ndarray, shape: tuple[int, ...], k: int) -> float:
    """World z (mm) of the centre of canonical axial slice ``k``."""
    c = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0, float(k), 1.0])
    return float((caff @ c)[2])


def _crop_box(ct_c: np.ndarray | None, pet_c: np.ndarray | None, mask_c: np.ndarray, sp: np.ndarray) -> Box:
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


def _threshold(report: Mapping[str, Any]) -> float | None:
    thr = report.get("threshold")
    if isinstance(thr, Mapping):
        thr = thr.get("value")
    return None if thr is None else float(thr)


# --------------------------------------------------------------------------- drawing

def _radiological(plane: np.ndarray | np.generic) -> np.ndarray:
    """(x, y-or-z) plane of a canonical RAS array -> image rows top = anterior/superior, columns
    left = patient's right (largest x), for ``imshow`` with the default upper origin."""
    return np.asarray(plane).T[::-1, ::-1]


def _edge(caff: np.ndarray, axis: int, index: float, side: int) -> float:
    """mm coordinate along canonical ``axis`` of voxel ``index``'s outer edge (``side`` -1 low / +1
    high; 0 = its centre), as offset + index x spacing (the axis-aligned part of the affine)."""
    sp = float(np.linalg.norm(caff[:3, axis]))
    return float(caff[axis, 3] + (index + 0.5 * side) * sp)


def _norm(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((np.asarray(a, np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def _panel_rgb(name: str, ct_s: np.ndarray | None, pet_s: np.ndarray | None, res_s: np.ndarray,
               ct_window: tuple[float, float], suv_window: tuple[float, float], res_max: float) -> np.ndarray:
    """RGB float image of one panel: CT grey; PET (hot) over the CT with an opacity rising with SUV
    (PET alone without a CT); the residual (viridis) over a dimmed CT (or inverted PET) with an
    opacity rising with the residual."""
    if ct_s is not None:
        base = _norm(ct_s, *ct_window)
    else:
        assert pet_s is not None
        base = 1.0 - _norm(pet_s, *suv_window)
    grey = np.repeat(base[..., None], 3, axis=-1)
    if name == "ct":
        return grey
    if name == "pet":
        assert pet_s is not None
        p = _norm(pet_s, *suv_window)
        col = _cmap(PET_CMAP)(p)[..., :3]
        if ct_s is None:
            return np.asarray(col, np.float32)
        alpha = (0.9 * np.clip((p - 0.02) / 0.2, 0.0, 1.0))[..., None]
        return np.asarray(grey * (1 - alpha) + col * alpha, np.float32)
    r = _norm(res_s, 0.0, res_max)
    col = _cmap(RESIDUAL_CMAP)(r)[..., :3]
    alpha = (0.9 * np.clip(r / 0.08, 0.0, 1.0))[..., None]
    return np.asarray(grey * 0.55 * (1 - alpha) + col * alpha, np.float32)


def _halo(width: float = 2.6, color: str = "black") -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground=color)]


def _outline(ax: Any, m: np.ndarray, extent: Extent, lw: float = 1.1) -> None:
    """The mask's outline in :data:`OUTLINE` over a black halo (visible on any background)."""
    from matplotlib import patheffects

    ax.contour(m.astype(np.float32), levels=[0.5], colors=[OUTLINE], linewidths=lw, origin="upper",
               extent=extent, antialiased=True,
               path_effects=[patheffects.Stroke(linewidth=lw + 1.6, foreground="black"), patheffects.Normal()])


def _numbers_axial(ax: Any, comps: _Components, k: int, box: Box, caff: np.ndarray, extent: Extent,
                   mm_per_inch: float) -> None:
    """Lesion numbers beside each numbered cross-section on slice ``k``: the first of the places
    around its bounding box (viewer's upper right first) that stays in the image and clear of the
    other sections and numbers."""
    (i0, i1), (j0, j1) = box
    th = 0.16 * mm_per_inch  # a 9 pt digit's height, mm
    secs = []
    for lid, idx in comps.on_slice(k):
        inside = (idx[:, 0] >= i0) & (idx[:, 0] < i1) & (idx[:, 1] >= j0) & (idx[:, 1] < j1)
        if inside.any():
            sec = idx[inside]
            # (viewer's left x, right x, bottom y, top y) in mm; x decreases to the viewer's right
            secs.append((lid, (_edge(caff, 0, int(sec[:, 0].max()), +1), _edge(caff, 0, int(sec[:, 0].min()), -1),
                               _edge(caff, 1, int(sec[:, 1].min()), -1), _edge(caff, 1, int(sec[:, 1].max()), +1))))
    taken = [b for _, b in secs]
    x_lo, x_hi, y_lo, y_hi = min(extent[:2]), max(extent[:2]), extent[2], extent[3]
    for lid, (xl, xr, yb, yt) in secs:
        hw, hh = 0.32 * th * len(str(lid)) + 0.1 * th, 0.55 * th
        dx, dy = hw + 1.5, hh + 1.5
        xm, ym = (xl + xr) / 2, (yb + yt) / 2
        cands = [(xr - dx, yt + dy), (xr - dx, ym), (xm, yt + dy), (xr - dx, yb - dy), (xm, yb - dy),
                 (xl + dx, ym), (xl + dx, yt + dy), (xl + dx, yb - dy)]
        fits = [(x, y) for x, y in cands if x_lo <= x - hw and x + hw <= x_hi and y_lo <= y - hh and y + hh <= y_hi]
        clear = [(x, y) for x, y in fits if not any(
            x - hw < bl and x + hw > br and y - hh < bt and y + hh > bb for bl, br, bb, bt in taken)]
        x, y = (clear or fits or [(float(np.clip(xm, x_lo + hw, x_hi - hw)), float(np.clip(ym, y_lo + hh, y_hi - hh)))])[0]
        taken.append((x + hw, x - hw, y - hh, y + hh))
        ax.text(x, y, str(lid), color="white", fontsize=9, fontweight="bold", ha="center", va="center",
                path_effects=_halo(), clip_on=True)


def _orientation(ax: Any, marks: tuple[str, str, str, str], color: str) -> None:
    """Letters at the middle of the left, right, top and bottom edges."""
    kw: dict[str, Any] = {"transform": ax.transAxes, "color": color, "fontsize": 8, "fontweight": "bold",
                          "path_effects": _halo(2.2, "black" if color == "white" else "white")}
    ax.text(0.015, 0.5, marks[0], ha="left", va="center", **kw)
    ax.text(0.985, 0.5, marks[1], ha="right", va="center", **kw)
    ax.text(0.5, 0.985, marks[2], ha="center", va="top", **kw)
    ax.text(0.5, 0.015, marks[3], ha="center", va="bottom", **kw)


def _scale_bar(ax: Any, extent: Extent) -> None:
    """A 5 cm bar (2 cm on fields of view under 15 cm) in the lower-left corner."""
    left, right, bottom, top = extent
    width, height = abs(left - right), abs(top - bottom)
    length = 50.0 if width >= 150.0 else 20.0
    x0, y0 = left - 0.05 * width, bottom + 0.06 * height  # x decreases to the right
    ax.plot([x0, x0 - length], [y0, y0], color="white", linewidth=2.0, solid_capstyle="butt", path_effects=_halo(3.6))
    ax.text(x0 - length / 2, y0 + 0.025 * height, f"{length / 10:g} cm", color="white", fontsize=7, ha="center",
            va="bottom", path_effects=_halo(2.2))


def _colorbar(fig: Any, cax: Any, name: str, ct_window: tuple[float, float], suv_window: tuple[float, float],
              res_max: float, threshold: float | None) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    if name == "ct":
        sm, label = ScalarMappable(Normalize(*ct_window), _cmap("gray")), "CT (HU)"
    elif name == "pet":
        sm, label = ScalarMappable(Normalize(*suv_window), _cmap(PET_CMAP)), "PET uptake (SUV)"
    else:
        sm, label = ScalarMappable(Normalize(0.0, res_max), _cmap(RESIDUAL_CMAP)), "Residual (0 = unchanged)"
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.locator = MaxNLocator(6)
    cb.update_ticks()
    cb.ax.tick_params(labelsize=7, length=2, pad=1)
    cb.outline.set_linewidth(0.5)
    if name == "res" and threshold is not None and 0.0 < threshold < res_max:
        cax.axvline(threshold, color="white", linewidth=2.2)
        cax.axvline(threshold, color="black", linewidth=1.0)
        label = f"Residual (line: threshold {threshold:.3g})"
    cax.set_title(label, fontsize=8, pad=2)


def _legend_labels(width_in: float, has_pet: bool) -> list[str]:
    """The legend's entries, wrapped to ``width_in`` inches of 8 pt text."""
    chars = max(30, int((width_in - 0.5) / 0.066))
    entries = ["Outline: detected lesion (final mask). Number: lesion id in lesions.csv."]
    if has_pet:
        entries.append("PET colours: tracer uptake in SUV (scale under the PET column). "
                       "MIP: darker = higher uptake.")
    entries.append("Residual colours: where the scan differs from the model's healthy-looking reconstruction. "
                   "Colour without an outline stayed below the threshold: not a detection.")
    return [textwrap.fill(e, chars) for e in entries]


def _legend_height(width_in: float, has_pet: bool) -> float:
    lines = sum(label.count("\n") + 1 for label in _legend_labels(width_in, has_pet))
    return 0.2 + 0.175 * lines + 0.08 * (2 + has_pet)


def _legend(fig: Any, r: tuple[float, float, float, float], width_in: float, has_pet: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Line2D([], [], color=OUTLINE, linewidth=1.2, path_effects=_halo(2.8))]
    if has_pet:
        handles.append(Patch(facecolor=_cmap(PET_CMAP)(0.6), edgecolor="none"))
    handles.append(Patch(facecolor=_cmap(RESIDUAL_CMAP)(0.6), edgecolor="none"))
    ax = fig.add_axes(r, label="legend")
    ax.axis("off")
    ax.legend(handles, _legend_labels(width_in, has_pet), loc="upper left", fontsize=8, frameon=False,
              handlelength=2.0, borderaxespad=0.0, labelspacing=0.5, title="Colours", alignment="left",
              title_fontproperties={"size": 8.5, "weight": "bold"})


def _mip(ax: Any, src: np.ndarray, comps: _Components, box: Box, caff: np.ndarray,
         window: tuple[float, float], n_lesions: int) -> None:
    """Coronal MIP (max over y) of the cropped x range: superior up, patient right on the left, mm
    extents (equal aspect); the mask's projection outlined; lesion numbers at the centroids (the
    largest :data:`MAX_MIP_NUMBERS`); z ticks (mm) on the right."""
    (i0, i1), _ = box
    nk = src.shape[2]
    extent = (_edge(caff, 0, i1 - 1, +1), _edge(caff, 0, i0, -1), _edge(caff, 2, 0, -1), _edge(caff, 2, nk - 1, +1))
    ax.imshow(_radiological(src[i0:i1].max(axis=1)), cmap=MIP_CMAP, vmin=window[0], vmax=window[1],
              extent=extent, interpolation="antialiased", aspect="equal")
    if comps.labels.size:
        o = comps.offset
        proj = np.zeros((i1 - i0, nk), dtype=bool)
        p = np.asarray(comps.labels.any(axis=1), dtype=bool)
        a, b = max(i0, int(o[0])), min(i1, int(o[0]) + p.shape[0])
        if b > a:
            proj[a - i0:b - i0, o[2]:o[2] + p.shape[1]] = p[a - int(o[0]):b - int(o[0])]
            _outline(ax, _radiological(proj), extent, lw=0.9)
    gap = 0.035 * max(abs(extent[0] - extent[1]), abs(extent[3] - extent[2]))
    placed: list[tuple[float, float]] = []
    numbered = sorted(comps.label_of)[:MAX_MIP_NUMBERS]
    for lid in numbered:
        c = comps.centroid[comps.label_of[lid]]
        x = float(np.clip(_edge(caff, 0, c[0], 0), min(extent[:2]) + 0.6 * gap, max(extent[:2]) - 0.6 * gap))
        z = float(np.clip(_edge(caff, 2, c[2], 0), extent[2] + 0.6 * gap, extent[3] - 0.6 * gap))
        while any(abs(z - pz) < gap and abs(x - px) < 1.5 * gap for px, pz in placed):
            z -= gap  # keep numbers of nearby lesions apart
        placed.append((x, z))
        ax.text(x, z, str(lid), color="black", fontsize=9, fontweight="bold", ha="center", va="center",
                path_effects=_halo(2.6, "white"), clip_on=True)
    _orientation(ax, ("R", "L", "S", "I"), "black")
    ax.set_xticks([])
    if n_lesions:
        note = "numbers at lesion centres" + (f" ({len(numbered)} largest of {n_lesions})"
                                               if n_lesions > len(numbered) else "")
        ax.set_xlabel(note, fontsize=7, labelpad=2)
    ax.yaxis.tick_right()
    ax.yaxis.set_label_position("right")
    ax.tick_params(axis="y", labelsize=7, length=2, pad=1)
    ax.set_ylabel("z (mm)", fontsize=7, labelpad=2)
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)


def _header(text: Callable[..., None], fig_w: float, lesions: Sequence[Mapping[str, Any]],
            rows: list[_Row]) -> None:
    text(_MARGIN, 0.2, "autopaint — PET/CT lesion detection by autoinpainting: result preview", ha="left",
         fontsize=12, fontweight="bold")
    text(fig_w - _MARGIN, 0.2, RESEARCH_NOTICE.upper(), ha="right", fontsize=10, fontweight="bold", color="#c00000")
    n = len(lesions)
    if n == 0:
        summary = f"{NO_LESION} in the analysed region."
    else:
        total = sum(float(r.get("volume_ml") or 0.0) for r in lesions)
        summary = f"{n} {'lesion' if n == 1 else 'lesions'} detected ({total:.1f} ml in total). "
        if n > len(rows):
            summary += (f"Rows show the {len(rows)} largest, largest first, each through its largest axial "
                        f"cross-section; all {n} are listed in lesions.csv.")
        else:
            summary += "Each row is an axial slice through a lesion's largest cross-section, largest first."
    text(_MARGIN, 0.52, summary, ha="left", fontsize=9.5)


def _footer(text: Callable[..., None], fig_h: float, report: Mapping[str, Any], date: str | None) -> None:
    from autopaint import __version__

    model = report.get("model") or {}
    sha = str(model.get("sha256") or "")[:12]
    parts = [f"Model {model.get('name') or 'unnamed'}" + (f" (sha256 {sha})" if sha else ""),
             f"autopaint {__version__}"]
    thr = _threshold(report)
    if thr is not None:
        parts.append(f"threshold {thr:.3g}")
    mode = (report.get("params") or {}).get("mode")
    if mode:
        parts.append(f"{mode} mode")
    date = date if date is not None else report.get("date")
    if date:
        parts.append(f"date {date}")
    top = fig_h - _FOOTER
    text(_MARGIN, top + 0.12, "  ·  ".join(parts), ha="left", fontsize=8, color="#333333")
    text(_MARGIN, top + 0.32, f"{RESEARCH_NOTICE}. Automatic output of a research model: check every finding "
         "on the full images.", ha="left", fontsize=8, fontweight="bold", color="#c00000")


def _png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image as a 256-colour palette image, no text chunks, no time
    stamp (about a third of the RGB PNG's size). Grey pixels (channel spread <= 6: CT, MIP, text)
    take the nearest of 48 evenly spaced greys (at most 3 levels off); coloured pixels take one of
    208 colours from Pillow's fast octree quantizer (deterministic); no dithering."""
    from PIL import Image

    step = 255.0 / (_N_GREYS - 1)
    chroma = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    coloured = chroma > 6
    idx = np.rint(rgb.mean(axis=-1) / step).astype(np.uint8)
    palette = np.repeat(np.rint(np.arange(_N_GREYS) * step).astype(np.uint8)[:, None], 3, axis=1)
    if coloured.any():
        n_col = 256 - _N_GREYS
        cq = Image.fromarray(np.ascontiguousarray(rgb[coloured][None])).quantize(
            n_col, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        idx[coloured] = np.asarray(cq)[0] + _N_GREYS
        colours = cq.getpalette() or []
        palette = np.concatenate([palette, np.array(colours[:3 * n_col], np.uint8).reshape(-1, 3)])
    img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes())
    img.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()
