"""Target region and size filter (paper §2.5, "determining the target region" and "segmenting").

* union of the top-k circles;
* the dilation ladder: the union and its dilations by square elements of increasing width, each
  inpainted; the summed residual of consecutive rungs decides how far to go: when a rung changes
  the residual by less than ``tol`` (relative), the smaller mask is kept and the ladder stops;
  otherwise the larger one becomes the candidate (paper: "if no changes are observed between the
  sequential orders, then the mask with the smaller size is selected");
* the size filter: connected components (8-connectivity, cc3d) of the binarised residual inside
  the final mask; if the largest is smaller than the minimum tumour (area < pi * r_min^2) the
  slice's output is its input.

Rung bookkeeping is hand-written (paper-defined); dilation uses scipy.ndimage, components cc3d.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from autopaint.segment.search import abs_diff, inpaint_holes
from autopaint.segment.types import InpainterLike

log = logging.getLogger(__name__)


def ladder_masks(union: np.ndarray, widths: tuple[int, ...]) -> list[np.ndarray]:
    """[union, dilate(union, w1), dilate(union, w2), ...] with square (w x w) elements."""
    out = [union.astype(bool)]
    for w in widths:
        out.append(ndimage.binary_dilation(union, structure=np.ones((w, w), dtype=bool)))
    return out


def relative_change(prev: float, cur: float) -> float:
    """(cur - prev) / prev, with prev floored at 1e-12 (a zero residual counts as a change when cur > 0)."""
    return (cur - prev) / max(prev, 1e-12)


def choose_rung(residual_sums: list[float], tol: float) -> tuple[int, bool]:
    """Apply the stop rule to the summed residuals of rungs 0, 1, ... computed so far.

    Returns (chosen rung, stopped). The ladder stops at the first rung i whose residual changes by
    less than ``tol`` relative to rung i-1; rung i-1 is then chosen. Without a stop the last rung
    computed is the candidate.
    """
    for i in range(1, len(residual_sums)):
        if relative_change(residual_sums[i - 1], residual_sums[i]) < tol:
            return i - 1, True
    return len(residual_sums) - 1, False


@dataclass
class LadderResult:
    """Per slice: final inpainted (S, C, N, N), final mask (S, N, N) bool, chosen rung (S,),
    rungs inpainted (S,), summed residual per rung (list of lists)."""

    inpainted: np.ndarray
    masks: np.ndarray
    rung: np.ndarray
    rungs_run: np.ndarray
    sums: list[list[float]]


def run_ladder(inpainter: InpainterLike, images: np.ndarray, unions: np.ndarray,
               widths: tuple[int, ...], tol: float, early_stop: bool) -> LadderResult:
    """Run the dilation ladder for S slices at once (batched across slices, rung by rung).

    ``images`` (S, C, N, N) in [0, 1]; ``unions`` (S, N, N) bool. With ``early_stop`` a slice
    stops being inpainted at its first no-change rung (the result is identical: the stop rule
    never looks past it); without it all 1 + len(widths) rungs are inpainted (the paper's six).
    """
    s_count = images.shape[0]
    rungs = [ladder_masks(u, widths) for u in unions]
    n_rungs = 1 + len(widths)
    sums: list[list[float]] = [[] for _ in range(s_count)]
    outs: list[list[np.ndarray]] = [[] for _ in range(s_count)]
    active = list(range(s_count))
    for r in range(n_rungs):
        if not active:
            break
        holes = np.stack([rungs[i][r] for i in active]) if active else np.zeros((0,) + unions.shape[1:], bool)
        res = inpaint_holes(inpainter, images[active], holes)
        diff = abs_diff(images[active], res)
        still = []
        for j, i in enumerate(active):
            sums[i].append(float(diff[j].sum()))
            outs[i].append(res[j])
            _, stopped = choose_rung(sums[i], tol)
            if not (early_stop and stopped):
                still.append(i)
        active = still
    inpainted = np.empty_like(images, dtype=np.float32)
    masks = np.zeros(unions.shape, dtype=bool)
    chosen = np.zeros(s_count, dtype=np.int64)
    for i in range(s_count):
        c, _ = choose_rung(sums[i], tol)
        chosen[i] = c
        inpainted[i] = outs[i][c]
        masks[i] = rungs[i][c]
    run = np.array([len(s) for s in sums], dtype=np.int64)
    return LadderResult(inpainted=inpainted, masks=masks, rung=chosen, rungs_run=run, sums=sums)


def combine_channels(diff_c: np.ndarray, how: str) -> np.ndarray:
    """Per-channel residual (..., C, N, N) -> (..., N, N) by mean or max over channels."""
    return diff_c.max(axis=-3) if how == "max" else diff_c.mean(axis=-3)


@dataclass(frozen=True)
class ResidualRule:
    """How input and inpainted images become one residual map (issue #11, part 2).

    ``sign="abs"``: |input - inpainted| on every channel (the paper). ``"hyper"``: on the PET channel
    ``pet_channel`` only the excess counts, max(input - inpainted, 0) (hyper-metabolism; a repaint
    hotter than the scan is not a tumour); CT stays absolute. ``weights``: one factor per channel
    (None = 1). ``combine``: mean or max over channels.
    """

    combine: str = "mean"
    sign: str = "abs"
    pet_channel: int | None = None
    weights: tuple[float, ...] | None = None

    def per_channel(self, images: np.ndarray, inpainted: np.ndarray) -> np.ndarray:
        """(..., C, N, N) residual per channel, >= 0."""
        diff = np.asarray(images, dtype=np.float32) - np.asarray(inpainted, dtype=np.float32)
        out = np.abs(diff)
        if self.sign == "hyper" and self.pet_channel is not None:
            out[..., self.pet_channel, :, :] = np.maximum(diff[..., self.pet_channel, :, :], 0.0)
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float32)
            if w.size != out.shape[-3]:
                raise ValueError(f"{w.size} channel weights for {out.shape[-3]} channels")
            out *= w.reshape((-1, 1, 1))
        return out

    def __call__(self, images: np.ndarray, inpainted: np.ndarray) -> np.ndarray:
        """(..., C, N, N) input and inpainted -> (..., N, N) combined residual."""
        return combine_channels(self.per_channel(images, inpainted), self.combine)


def largest_component_area(binary: np.ndarray) -> int:
    """Pixel count of the largest 8-connected component of a 2D bool image (0 if empty)."""
    if not binary.any():
        return 0
    labels = cc3d.connected_components(binary.astype(np.uint8), connectivity=8)
    counts = np.bincount(labels.ravel())
    return int(counts[1:].max())


def size_filter(image: np.ndarray, inpainted: np.ndarray, mask: np.ndarray, level: float,
                min_area: float, rule: ResidualRule | None = None) -> tuple[np.ndarray, bool, int]:
    """Keep the inpainted slice only when its largest residual component is big enough.

    ``image``/``inpainted`` (C, N, N) in [0, 1]; ``mask`` (N, N) the final ladder mask. The residual
    (``rule``, default: the paper's |difference| averaged over channels) is binarised at ``level``
    inside ``mask``; returns (output slice, kept, largest component area in px). Kept when area >= ``min_area``.
    """
    resid = (rule or ResidualRule())(image, inpainted)
    area = largest_component_area((resid >= level) & mask)
    kept = area >= min_area
    return (inpainted if kept else image), kept, area
