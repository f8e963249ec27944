"""Sliding circles over the organ of interest and their scores (paper §2.5, "candidate regions").

Hand-written because the paper defines it and no library has it: a circle of radius r swept with
stride s over the OOI of one axial slice; each circle is inpainted and scored by the intensity
difference between the input and the inpainted image inside the circle.

Circle rule (documented choice): centres lie on a fixed grid ``s/2 + m*s`` (m = 0, 1, ...) in both
image axes (model pixels, float); a circle is a candidate when the pixel nearest its centre lies in
the OOI. A circle covers the pixels whose centres are within r of its centre (it may extend past
the OOI, as in the paper). Each circle keeps its grid index (a, b) for checkerboard grouping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autopaint.segment.types import InpainterLike, ScoreKind


@dataclass(frozen=True)
class Circles:
    """Candidate circles of one slice on an N x N grid. ``centres`` (M, 2) float (row, col) in model
    px; ``grid`` (M, 2) int grid indices; the pixels of circle i are the flat indices
    ``flat[offsets[i]:offsets[i + 1]]`` (row * N + col), a compact form that makes scoring a
    gather + ``np.add.reduceat`` instead of a pass over (M, N, N) masks."""

    centres: np.ndarray
    grid: np.ndarray
    flat: np.ndarray
    offsets: np.ndarray
    size: int

    def __len__(self) -> int:
        return int(self.centres.shape[0])

    def masks(self, idx: np.ndarray | None = None) -> np.ndarray:
        """(len(idx), N, N) bool masks of the selected circles (all when ``idx`` is None)."""
        sel = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.zeros((sel.size, self.size * self.size), dtype=bool)
        for row, i in enumerate(sel):
            out[row, self.flat[self.offsets[i]:self.offsets[i + 1]]] = True
        return out.reshape(sel.size, self.size, self.size)

    def union(self, idx: np.ndarray) -> np.ndarray:
        """(N, N) bool union of the selected circles."""
        out = np.zeros(self.size * self.size, dtype=bool)
        for i in np.asarray(idx, dtype=np.int64).reshape(-1):
            out[self.flat[self.offsets[i]:self.offsets[i + 1]]] = True
        return out.reshape(self.size, self.size)

    def scores(self, diff: np.ndarray, idx: np.ndarray | None, n_channels: int, kind: ScoreKind) -> np.ndarray:
        """Score the selected circles from channel-summed differences.

        ``diff``: (N, N), one map shared by all selected circles (grouped pass), or (S, N, N), one
        map per selected circle (one circle per pass). ``sum``: sum of |input - inpainted| over the
        circle's pixels and all channels (the paper's "sum of the intensity differences"); ``mean``:
        that sum / (pixels in circle * channels).
        """
        sel = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)
        if sel.size == 0:
            return np.zeros(0)
        lens = self.offsets[sel + 1] - self.offsets[sel]
        pix = np.concatenate([self.flat[self.offsets[i]:self.offsets[i + 1]] for i in sel])
        d = np.asarray(diff, dtype=np.float64)
        if d.ndim == 2:
            vals = d.ravel()[pix]
        else:
            rows = np.repeat(np.arange(sel.size), lens)
            vals = d.reshape(sel.size, -1)[rows, pix]
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        s = np.add.reduceat(vals, starts)
        if kind == "mean":
            s = s / np.maximum(lens * n_channels, 1)
        return s


def grid_positions(size: int, stride: float) -> np.ndarray:
    """Circle-centre coordinates along one axis: ``stride/2 + m*stride`` < size (model px)."""
    return np.arange(stride / 2.0, size, stride, dtype=np.float64)


def candidate_grid(ooi: np.ndarray, stride: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid (M, 2) int, centres (M, 2) float) of the circles whose centre pixel lies in ``ooi``."""
    n = ooi.shape[-1]
    pos = grid_positions(n, stride)
    aa, bb = np.meshgrid(np.arange(pos.size), np.arange(pos.size), indexing="ij")
    rows = np.clip(np.rint(pos[aa]).astype(int), 0, n - 1)
    cols = np.clip(np.rint(pos[bb]).astype(int), 0, n - 1)
    keep = ooi[rows, cols]
    grid = np.stack([aa[keep], bb[keep]], axis=1).astype(np.int64)
    centres = np.stack([pos[grid[:, 0]], pos[grid[:, 1]]], axis=1)
    return grid, centres


def disk_pixels(cy: float, cx: float, radius: float, size: int) -> np.ndarray:
    """Flat indices (row * size + col) of the pixels whose centres lie within ``radius`` of
    (cy, cx), clipped to the image; computed on the disk's bounding window only."""
    r0, r1 = max(0, int(np.ceil(cy - radius))), min(size - 1, int(np.floor(cy + radius)))
    c0, c1 = max(0, int(np.ceil(cx - radius))), min(size - 1, int(np.floor(cx + radius)))
    yy, xx = np.mgrid[r0:r1 + 1, c0:c1 + 1]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
    return (yy[inside] * size + xx[inside]).astype(np.int64)


def candidate_circles(ooi: np.ndarray, radius: float, stride: float) -> Circles:
    """Circles whose centre pixel lies in ``ooi`` ((N, N) bool, one axial slice)."""
    n = ooi.shape[-1]
    grid, centres = candidate_grid(ooi, stride)
    pieces = [disk_pixels(cy, cx, radius, n) for cy, cx in centres]
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([p.size for p in pieces])
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    return Circles(centres=centres, grid=grid, flat=flat, offsets=offsets, size=n)


def disk_masks(centres: np.ndarray, radius: float, size: int) -> np.ndarray:
    """(M, 2) centres (row, col) -> (M, size, size) bool disks of the given radius (px)."""
    yy = np.arange(size, dtype=np.float64)[None, :, None]
    xx = np.arange(size, dtype=np.float64)[None, None, :]
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    d2 = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2
    return d2 <= radius * radius


def checkerboard_groups(grid: np.ndarray, period: int, subsample: int = 1,
                        which: str = "all") -> list[np.ndarray]:
    """Split circles into groups whose grid indices agree modulo ``period`` in both axes.

    Circles of one group are >= period * stride apart, so with period * stride >= 2r + margin
    their holes do not touch and one inpainting pass scores them all. ``subsample`` s splits the
    groups into the "screen" set (both residues divisible by s: circles every s * stride, which
    still cover the plane when s * stride / sqrt(2) < r) and the "rest"; ``which`` picks "all",
    "screen" or "rest". Returns index arrays in a deterministic order (by (a mod g, b mod g)).
    """
    if grid.shape[0] == 0:
        return []
    ra, rb = grid[:, 0] % period, grid[:, 1] % period
    key = ra * period + rb
    out = []
    for k in np.unique(key):
        screen = (k // period) % subsample == 0 and (k % period) % subsample == 0
        if which == "all" or (which == "screen") == screen:
            out.append(np.flatnonzero(key == k))
    return out


def inpaint_holes(inpainter: InpainterLike, images: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Inpaint ``holes`` ((B, N, N) bool, True = hole) in ``images`` ((B, C, N, N) in [0, 1]).

    Builds the network's convention (mask 1 = valid, holed pixels set to 0) and returns the
    composite (B, C, N, N) float32.
    """
    if images.shape[0] == 0:
        return np.zeros_like(images, dtype=np.float32)
    valid = (~holes).astype(np.float32)[:, None]
    out = inpainter.inpaint((images * valid).astype(np.float32, copy=False), valid)
    return np.asarray(out, dtype=np.float32)


def abs_diff(image: np.ndarray, inpainted: np.ndarray) -> np.ndarray:
    """|input - inpainted| summed over channels: (..., C, N, N) -> (..., N, N)."""
    return np.abs(inpainted - image).sum(axis=-3)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, largest first; ties keep the lower index (deterministic)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[: max(0, k)]


def exact_scores(inpainter: InpainterLike, image: np.ndarray, circles: Circles, kind: ScoreKind,
                 subset: np.ndarray | None = None) -> np.ndarray:
    """Inpaint each circle independently (one circle per image, batched) and score it.

    ``image`` (C, N, N); returns (M,) scores, or (len(subset),) for the selected circles.
    """
    masks = circles.masks(subset)
    if masks.shape[0] == 0:
        return np.zeros(0)
    imgs = np.broadcast_to(image, (masks.shape[0],) + image.shape)
    out = inpaint_holes(inpainter, imgs, masks)
    return circles.scores(abs_diff(image[None], out), subset, image.shape[0], kind)
