"""preview.png: the axial slices with the most residual (CT, PET, inpainted, residual side by side,
final mask outlined) and a PET (or CT) maximum-intensity projection with the mask's projection.

Uses matplotlib's object API with the Agg canvas (no pyplot global state: safe in workers).
Arrays are reference-grid (I, J, K). Given the grid's affine they are first brought to the canonical
RAS orientation (axis swaps and flips only) and drawn in the radiological convention: axial slices with
anterior up and the patient's right on the viewer's left, the coronal MIP with superior up.
"""

from __future__ import annotations

import io

import numpy as np


def top_slices(residual: np.ndarray, n: int = 3) -> list[int]:
    """Indices k of the ``n`` axial slices with the largest summed residual (ties: lower k),
    skipping slices without residual; the middle slice when there is none."""
    sums = residual.reshape(-1, residual.shape[2]).sum(axis=0)
    order = [int(k) for k in np.argsort(-sums, kind="stable") if sums[k] > 0][:n]
    return sorted(order) if order else [residual.shape[2] // 2]


def render_preview(ct: np.ndarray | None, pet: np.ndarray | None, inpainted: np.ndarray,
                   residual: np.ndarray, mask: np.ndarray, ct_window: tuple[float, float] = (-1000, 500),
                   suv_window: tuple[float, float] = (0.0, 12.0), n_slices: int = 3,
                   affine: np.ndarray | None = None) -> bytes:
    """PNG bytes. ``ct`` (HU), ``pet`` (SUV), ``inpainted`` (the inpainted PET when present, else CT),
    ``residual`` ([0, 1]) and ``mask`` (bool): all (I, J, K) on the reference grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if affine is not None:
        from autopaint.imaging.slicegrid import Canonical

        canon = Canonical.for_affine(affine, residual.shape)  # type: ignore[arg-type]
        ct = None if ct is None else canon.to_canonical(ct)
        pet = None if pet is None else canon.to_canonical(pet)
        inpainted, residual, mask = (canon.to_canonical(a) for a in (inpainted, residual, mask))
    ks = top_slices(residual, n_slices)
    panels: list[tuple[str, np.ndarray | None, str, tuple[float, float]]] = [
        ("CT", ct, "gray", ct_window), ("PET (SUV)", pet, "gray_r", suv_window),
        ("inpainted", inpainted, "gray_r" if pet is not None else "gray",
         suv_window if pet is not None else ct_window),
        ("residual", residual, "magma", (0.0, max(float(residual.max()), 1e-6))),
    ]
    panels = [p for p in panels if p[1] is not None]
    cols = len(panels) + 1
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(ks)), dpi=80)
    FigureCanvasAgg(fig)
    mip_src = pet if pet is not None else ct
    assert mip_src is not None
    for row, k in enumerate(ks):
        for col, (name, arr, cmap, win) in enumerate(panels):
            ax = fig.add_subplot(len(ks), cols, row * cols + col + 1)
            assert arr is not None
            ax.imshow(_radiological(arr[:, :, k]), cmap=cmap, vmin=win[0], vmax=win[1],
                      interpolation="nearest")
            if mask[:, :, k].any():
                ax.contour(_radiological(mask[:, :, k]).astype(float), levels=[0.5], colors="cyan",
                           linewidths=0.8)
            ax.set_title(f"{name} k={k}", fontsize=7)
            ax.axis("off")
    ax = fig.add_subplot(1, cols, cols)
    mip = mip_src.max(axis=1)                                     # (I, K): coronal MIP
    win = suv_window if pet is not None else ct_window
    ax.imshow(_radiological(mip), cmap="gray_r" if pet is not None else "gray", vmin=win[0], vmax=win[1],
              aspect="auto", interpolation="nearest")
    mm = mask.any(axis=1)
    if mm.any():
        ax.contour(_radiological(mm).astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title("MIP + mask", fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _radiological(plane: np.ndarray | np.generic) -> np.ndarray:
    """(x, y-or-z) plane of a canonical RAS array -> image rows top = anterior/superior, columns
    left = patient's right (largest x), for ``imshow`` with the default upper origin."""
    return np.asarray(plane).T[::-1, ::-1]
