"""Fast mode's grouped screening pass and its calibration on healthy slices.

A grouped pass inpaints, in ONE image, all circles of a checkerboard group (grid indices equal
modulo g in both axes, so circles are >= g * stride apart and their holes do not touch when
g * stride >= 2r + margin). Each circle's grouped score is the circle score read from that image.
A slice's screen score is its best grouped circle score; slices whose screen score exceeds a level
(calibrated on healthy validation slices: the ``screen_quantile`` quantile of the healthy screen
scores) get the full search + ladder; the others get a coarse search on their own screen scores
(``SearchParams.unflagged="coarse"``) or are left as they are (``"skip"``, output = input).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from autopaint.segment.search import (
    abs_diff,
    candidate_circles,
    checkerboard_groups,
    inpaint_holes,
)
from autopaint.segment.types import Geometry, InpainterLike, SearchParams

log = logging.getLogger(__name__)


def check_period(geom: Geometry, period: int) -> None:
    """Log a warning when circles of one group can overlap (period * stride < 2r)."""
    if period * geom.stride < 2 * geom.radius:
        log.warning("group period %d * stride %.2f < 2r = %.2f: grouped circles overlap",
                    period, geom.stride, 2 * geom.radius)


def grouped_scores(inpainter: InpainterLike, images: np.ndarray, oois: np.ndarray, geom: Geometry,
                   params: SearchParams, which: str = "all") -> list[np.ndarray]:
    """Grouped circle scores for S slices in one batch of passes (batched across slices).

    ``images`` (S, C, N, N) in [0, 1], ``oois`` (S, N, N) bool. ``which``: "all" groups, only the
    "screen" groups (every ``screen_subsample``-th grid step) or the "rest". Returns, per slice,
    the (M_s,) grouped scores of its candidate circles (order of :func:`candidate_circles`), NaN
    for circles whose group was not run.
    """
    check_period(geom, params.group_period)
    pass_img: list[int] = []
    pass_holes: list[np.ndarray] = []
    plan: list[list[tuple[int, np.ndarray]]] = []
    circles = [candidate_circles(o, geom.radius, geom.stride) for o in oois]
    for s, c in enumerate(circles):
        groups = checkerboard_groups(c.grid, params.group_period, params.screen_subsample, which)
        slice_plan = []
        for g in groups:
            slice_plan.append((len(pass_img), g))
            pass_img.append(s)
            pass_holes.append(c.union(g))
        plan.append(slice_plan)
    if not pass_img:
        return [np.full(len(c), np.nan) for c in circles]
    imgs = images[np.asarray(pass_img)]
    out = inpaint_holes(inpainter, imgs, np.stack(pass_holes))
    diff = abs_diff(imgs, out)
    result = []
    for s, c in enumerate(circles):
        scores = np.full(len(c), np.nan)
        for p, g in plan[s]:
            scores[g] = c.scores(diff[p], g, images.shape[1], params.score)
        result.append(scores)
    return result


def screen_score(scores: np.ndarray) -> float:
    """A slice's screen score: its best grouped circle score (0 without scored circles)."""
    return float(np.nanmax(scores)) if np.isfinite(scores).any() else 0.0


def fallback_level(scores: np.ndarray, k: float) -> float:
    """Self-calibrated level when the model card has none: median + k * 1.4826 * MAD of the
    volume's own OOI-slice screen scores (robust: tumour slices are a minority)."""
    if scores.size == 0:
        return math.inf
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med))) * 1.4826
    return med + k * max(mad, 1e-6 * max(abs(med), 1.0))


def calibrate_screen(inpainter: InpainterLike, images: np.ndarray, ooi: np.ndarray,
                     params: SearchParams | None = None, batch: int = 64) -> dict[str, Any]:
    """Calibrate the screening level on healthy slices.

    ``images`` (n, C, N, N) float32 in [0, 1] healthy (validation) slices; ``ooi`` (n, N, N) bool.
    Returns ``{"screen_level": q-quantile of the best grouped circle score, "quantile", "n_slices",
    "search": params.to_dict()}``; store it on the model card (``card["screen_level"]``; the
    level is only valid for the same radius, stride, period and score kind).
    """
    params = params or SearchParams()
    geom = Geometry.for_size(params, images.shape[-1])
    keep = [i for i in range(images.shape[0]) if ooi[i].any()]
    best: list[float] = []
    for start in range(0, len(keep), batch):
        idx = np.asarray(keep[start:start + batch])
        for sc in grouped_scores(inpainter, images[idx], ooi[idx], geom, params, which="screen"):
            best.append(screen_score(sc))
    if not best:
        raise ValueError("no healthy slice with an organ of interest to calibrate on")
    level = float(np.quantile(np.asarray(best), params.screen_quantile))
    log.info("screen level %.4f from %d healthy slices (q=%.3f)", level, len(best), params.screen_quantile)
    return {"screen_level": level, "quantile": params.screen_quantile, "n_slices": len(best),
            "search": params.to_dict()}
