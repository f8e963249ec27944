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

This module lays the page out; what it shows (lesion components, rows, crop) is
:mod:`autopaint.segment.preview_lesions`, how each panel is drawn :mod:`autopaint.segment.preview_draw`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from autopaint.segment.preview_draw import (
    colorbar,
    edge,
    legend,
    legend_height,
    mip,
    numbers_axial,
    orientation,
    outline,
    panel_rgb,
    radiological,
    scale_bar,
)
from autopaint.segment.preview_lesions import NO_LESION, Components, Row, choose_rows, crop_box, lesion_rows

RESEARCH_NOTICE = "Research use only — not for diagnosis"
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
        lesions = lesion_rows(mask, pet, aff)
    shape = residual.shape
    canon = Canonical.for_affine(aff, (int(shape[0]), int(shape[1]), int(shape[2])))
    caff = canon.canonical_affine(aff)
    sp = np.linalg.norm(caff[:3, :3], axis=0)
    ct_c = None if ct is None else canon.to_canonical(ct)
    pet_c = None if pet is None else canon.to_canonical(pet)
    res_c, mask_c = canon.to_canonical(residual), canon.to_canonical(mask)
    nk = res_c.shape[2]

    comps = Components(mask_c, caff, lesions)
    box = crop_box(ct_c, pet_c, mask_c, sp)
    rows = choose_rows(comps, lesions, res_c, caff, max_rows)
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
    legend_right = right_w >= 3.6 and left_h - mip_h >= legend_height(right_w, has_pet) + 0.35
    body_h = max(left_h, mip_h) if legend_right else max(left_h + legend_height(slices_w, has_pet), mip_h)
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
    extent = (edge(caff, 0, i1 - 1, +1), edge(caff, 0, i0, -1), edge(caff, 1, j0, -1), edge(caff, 1, j1 - 1, +1))
    outlined = set(cols[1:]) if len(cols) > 2 else set(cols)
    for r, row in enumerate(rows):
        top = top0 + r * (_ROW_TITLE + panel_h + _ROW_GAP)
        text(_MARGIN, top + _ROW_TITLE * 0.45, row.title, ha="left", fontsize=9,
             fontweight="bold" if row.lesion_id is not None else "normal")
        sl = (slice(i0, i1), slice(j0, j1), row.k)
        ct_s = None if ct_c is None else radiological(ct_c[sl])
        pet_s = None if pet_c is None else radiological(pet_c[sl])
        res_s, m_s = radiological(res_c[sl]), radiological(mask_c[sl])
        for c, (x, name) in enumerate(zip(col_x, cols, strict=True)):
            ax = fig.add_axes(rect(x, top + _ROW_TITLE, _PANEL_W, panel_h), label=f"axial-{r}-{name}")
            img = panel_rgb(name, ct_s, pet_s, res_s, ct_window, suv_window, res_max)
            ax.imshow(img, extent=extent, interpolation="antialiased")
            if name in outlined:
                if m_s.any():
                    outline(ax, m_s, extent)
                numbers_axial(ax, comps, row.k, box, caff, extent, mm_per_inch)
            orientation(ax, ("R", "L", "A", "P"), "white")
            if c == 0:
                scale_bar(ax, extent)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)

    for x, name in zip(col_x, cols, strict=True):
        cax = fig.add_axes(rect(x + 0.15, top0 + rows_h + 0.22, _PANEL_W - 0.3, 0.11), label=f"colorbar-{name}")
        colorbar(fig, cax, name, ct_window, suv_window, res_max, threshold)

    mip_x = _MARGIN + slices_w + _MIP_GAP
    src = pet_c if pet_c is not None else ct_c
    assert src is not None
    win = suv_window if pet_c is not None else ct_window
    mip_title = (f"Coronal PET MIP (SUV {win[0]:g}–{win[1]:g})" if pet_c is not None
                 else f"Coronal CT MIP ({win[0]:g} to {win[1]:g} HU)")
    text(mip_x + mip_w / 2, _HEADER + _COL_TITLE * 0.45, mip_title, ha="center", fontsize=9, fontweight="bold")
    mip(fig.add_axes(rect(mip_x, top0, mip_w, mip_h), label="mip"), src, comps, box, caff, win, len(lesions))

    if legend_right:
        legend(fig, rect(mip_x, top0 + mip_h + 0.35, right_w, body_h - mip_h - 0.35), right_w, has_pet)
    else:
        legend(fig, rect(_MARGIN, top0 + left_h, slices_w, body_h - left_h), slices_w, has_pet)
    _footer(text, fig_h, report, date)
    return fig


def _threshold(report: Mapping[str, Any]) -> float | None:
    thr = report.get("threshold")
    if isinstance(thr, Mapping):
        thr = thr.get("value")
    return None if thr is None else float(thr)


def _header(text: Callable[..., None], fig_w: float, lesions: Sequence[Mapping[str, Any]],
            rows: list[Row]) -> None:
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
