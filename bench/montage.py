"""docs/montage.png: phantom PET/CT slices (CT, PET, fused with the label outline) for thorax and
head-and-neck, healthy and tumour cases.

    .venv/bin/python bench/montage.py [--size full|small] [--out docs/montage.png]

CT is shown in a lung window (thorax, [-1000, 300] HU) or soft-tissue window (head-and-neck,
[-160, 240] HU); PET (SUV 0-8, inverted grey) is resampled onto the CT grid; the fused view overlays
PET (hot colours) on CT with the tumour label outline in cyan. Radiological convention: patient's
right on the image left, anterior up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from autopaint.data.phantom import generate_case  # noqa: E402
from autopaint.imaging.preprocess import resample_to  # noqa: E402

WINDOWS = {"thorax": (-1000.0, 300.0), "headneck": (-160.0, 240.0)}
# (kind, seed, healthy, which slice: "tumour" = largest label area, else a fraction of the height)
PANELS = [("thorax", 11, True, 0.42), ("thorax", 11, True, 0.75), ("thorax", 5, False, "tumour"),
          ("headneck", 21, True, 0.7), ("headneck", 21, True, 0.35), ("headneck", 8, False, "tumour")]


def _slice_index(label: np.ndarray, which: float | str) -> int:
    if which == "tumour" and label.any():
        return int(np.argmax(label.sum(axis=(0, 1))))
    return int(round(float(which if isinstance(which, float) else 0.5) * (label.shape[2] - 1)))


def _body_box(ct_slice: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """Bounding box (rows, cols) of the largest connected region above -500 HU (the patient, not the table)."""
    lab, n = ndimage.label(ct_slice > -500)
    if n == 0:
        return slice(None), slice(None)
    big = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    rows, cols = np.nonzero(big.any(axis=1))[0], np.nonzero(big.any(axis=0))[0]
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin, ct_slice.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin, ct_slice.shape[1])
    half = max(r1 - r0, c1 - c0) // 2  # square crop around the body centre
    rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
    return (slice(max(rc - half, 0), rc + half), slice(max(cc - half, 0), cc + half))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="full")
    ap.add_argument("--out", default="docs/montage.png")
    args = ap.parse_args()
    fig, axes = plt.subplots(len(PANELS), 3, figsize=(10.5, 3.7 * len(PANELS)), facecolor="black")
    for row, (kind, seed, healthy, which) in enumerate(PANELS):
        t0 = time.time()
        case = generate_case(kind, seed, args.size, healthy)
        pet = resample_to(case.pet, case.ct, order=1).data
        k = _slice_index(case.label.data, which)
        ct = case.ct.data[:, :, k].T.astype(np.float32)  # rows = j (anterior at top), cols = i (patient right at left)
        pt = pet[:, :, k].T
        lab = case.label.data[:, :, k].T
        box = _body_box(ct)
        ct, pt, lab = ct[box], pt[box], lab[box]
        lo, hi = WINDOWS[kind]
        title = f"{case.case_id} {'healthy' if not case.info['n_tumours'] else 'tumour'} k={k}"
        axes[row, 0].imshow(ct, cmap="gray", vmin=lo, vmax=hi)
        axes[row, 1].imshow(pt, cmap="gray_r", vmin=0, vmax=8)
        axes[row, 2].imshow(ct, cmap="gray", vmin=-160, vmax=240)
        axes[row, 2].imshow(np.ma.masked_less(pt, 1.2), cmap="hot", vmin=0, vmax=8, alpha=0.6)
        if lab.any():
            axes[row, 2].contour(lab, levels=[0.5], colors="cyan", linewidths=0.8)
        for c, name in enumerate((f"CT [{lo:.0f},{hi:.0f}] HU", "PET SUV 0-8", "fused + label")):
            axes[row, c].set_title(f"{title}\n{name}" if c == 0 else name, color="white", fontsize=8)
            axes[row, c].axis("off")
        print(f"{case.case_id}: {time.time() - t0:.1f} s, tumours={case.info['n_tumours']}, slice {k}")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, facecolor="black")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
