"""The preview's drawing helpers (see :mod:`autopaint.segment.preview`): panel images (CT, PET fused
on CT, residual), the lesion outline and numbers, orientation letters, the scale bar, colour bars,
the legend and the coronal MIP. matplotlib's object API only (no pyplot state); arrays are canonical
RAS planes brought to the radiological view by :func:`radiological`."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from autopaint.segment.preview_lesions import Box, Components

OUTLINE = "#00e5ff"        # lesion outline (cyan, drawn over a black halo)
PET_CMAP = "hot"           # SUV on the fused PET/CT
RESIDUAL_CMAP = "viridis"  # residual (kept apart from the PET colours)
MIP_CMAP = "gray_r"        # coronal MIP: dark = high uptake
MAX_MIP_NUMBERS = 10       # lesions numbered on the MIP (largest first)

Extent = tuple[float, float, float, float]


def radiological(plane: np.ndarray | np.generic) -> np.ndarray:
    """(x, y-or-z) plane of a canonical RAS array -> image rows top = anterior/superior, columns
    left = patient's right (largest x), for ``imshow`` with the default upper origin."""
    return np.asarray(plane).T[::-1, ::-1]


def edge(caff: np.ndarray, axis: int, index: float, side: int) -> float:
    """mm coordinate along canonical ``axis`` of voxel ``index``'s outer edge (``side`` -1 low / +1
    high; 0 = its centre), as offset + index x spacing (the axis-aligned part of the affine)."""
    sp = float(np.linalg.norm(caff[:3, axis]))
    return float(caff[axis, 3] + (index + 0.5 * side) * sp)


def _norm(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((np.asarray(a, np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def panel_rgb(name: str, ct_s: np.ndarray | None, pet_s: np.ndarray | None, res_s: np.ndarray,
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


def outline(ax: Any, m: np.ndarray, extent: Extent, lw: float = 1.1) -> None:
    """The mask's outline in :data:`OUTLINE` over a black halo (visible on any background)."""
    from matplotlib import patheffects

    ax.contour(m.astype(np.float32), levels=[0.5], colors=[OUTLINE], linewidths=lw, origin="upper",
               extent=extent, antialiased=True,
               path_effects=[patheffects.Stroke(linewidth=lw + 1.6, foreground="black"), patheffects.Normal()])


def numbers_axial(ax: Any, comps: Components, k: int, box: Box, caff: np.ndarray, extent: Extent,
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
            secs.append((lid, (edge(caff, 0, int(sec[:, 0].max()), +1), edge(caff, 0, int(sec[:, 0].min()), -1),
                               edge(caff, 1, int(sec[:, 1].min()), -1), edge(caff, 1, int(sec[:, 1].max()), +1))))
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


def orientation(ax: Any, marks: tuple[str, str, str, str], color: str) -> None:
    """Letters at the middle of the left, right, top and bottom edges."""
    kw: dict[str, Any] = {"transform": ax.transAxes, "color": color, "fontsize": 8, "fontweight": "bold",
                          "path_effects": _halo(2.2, "black" if color == "white" else "white")}
    ax.text(0.015, 0.5, marks[0], ha="left", va="center", **kw)
    ax.text(0.985, 0.5, marks[1], ha="right", va="center", **kw)
    ax.text(0.5, 0.985, marks[2], ha="center", va="top", **kw)
    ax.text(0.5, 0.015, marks[3], ha="center", va="bottom", **kw)


def scale_bar(ax: Any, extent: Extent) -> None:
    """A 5 cm bar (2 cm on fields of view under 15 cm) in the lower-left corner."""
    left, right, bottom, top = extent
    width, height = abs(left - right), abs(top - bottom)
    length = 50.0 if width >= 150.0 else 20.0
    x0, y0 = left - 0.05 * width, bottom + 0.06 * height  # x decreases to the right
    ax.plot([x0, x0 - length], [y0, y0], color="white", linewidth=2.0, solid_capstyle="butt", path_effects=_halo(3.6))
    ax.text(x0 - length / 2, y0 + 0.025 * height, f"{length / 10:g} cm", color="white", fontsize=7, ha="center",
            va="bottom", path_effects=_halo(2.2))


def colorbar(fig: Any, cax: Any, name: str, ct_window: tuple[float, float], suv_window: tuple[float, float],
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


def legend_height(width_in: float, has_pet: bool) -> float:
    lines = sum(label.count("\n") + 1 for label in _legend_labels(width_in, has_pet))
    return 0.2 + 0.175 * lines + 0.08 * (2 + has_pet)


def legend(fig: Any, r: tuple[float, float, float, float], width_in: float, has_pet: bool) -> None:
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


def mip(ax: Any, src: np.ndarray, comps: Components, box: Box, caff: np.ndarray,
         window: tuple[float, float], n_lesions: int) -> None:
    """Coronal MIP (max over y) of the cropped x range: superior up, patient right on the left, mm
    extents (equal aspect); the mask's projection outlined; lesion numbers at the centroids (the
    largest :data:`MAX_MIP_NUMBERS`); z ticks (mm) on the right."""
    (i0, i1), _ = box
    nk = src.shape[2]
    extent = (edge(caff, 0, i1 - 1, +1), edge(caff, 0, i0, -1), edge(caff, 2, 0, -1), edge(caff, 2, nk - 1, +1))
    ax.imshow(radiological(src[i0:i1].max(axis=1)), cmap=MIP_CMAP, vmin=window[0], vmax=window[1],
              extent=extent, interpolation="antialiased", aspect="equal")
    if comps.labels.size:
        o = comps.offset
        proj = np.zeros((i1 - i0, nk), dtype=bool)
        p = np.asarray(comps.labels.any(axis=1), dtype=bool)
        a, b = max(i0, int(o[0])), min(i1, int(o[0]) + p.shape[0])
        if b > a:
            proj[a - i0:b - i0, o[2]:o[2] + p.shape[1]] = p[a - int(o[0]):b - int(o[0])]
            outline(ax, radiological(proj), extent, lw=0.9)
    gap = 0.035 * max(abs(extent[0] - extent[1]), abs(extent[3] - extent[2]))
    placed: list[tuple[float, float]] = []
    numbered = sorted(comps.label_of)[:MAX_MIP_NUMBERS]
    for lid in numbered:
        c = comps.centroid[comps.label_of[lid]]
        x = float(np.clip(edge(caff, 0, c[0], 0), min(extent[:2]) + 0.6 * gap, max(extent[:2]) - 0.6 * gap))
        z = float(np.clip(edge(caff, 2, c[2], 0), extent[2] + 0.6 * gap, extent[3] - 0.6 * gap))
        while any(abs(z - pz) < gap and abs(x - px) < 1.5 * gap for px, pz in placed):
            z -= gap  # keep numbers of nearby lesions apart
        placed.append((x, z))
        ax.text(x, z, str(lid), color="black", fontsize=9, fontweight="bold", ha="center", va="center",
                path_effects=_halo(2.6, "white"), clip_on=True)
    orientation(ax, ("R", "L", "S", "I"), "black")
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
