"""PET-guided candidates, coverage growth and candidate gating (issue #11, parts 1, 3 and 4).

* **Hot-spot candidates**: on each axial slice of the model grid, every 8-connected component of the
  hot-spot map (PET >= the patient's gate inside the organ of interest, :mod:`.hotspot`) gets one
  circle centred on its hottest pixel, with a radius that reaches the whole component plus a margin
  (at least the paper's circle radius, at most ``hot_max_radius``). A slice's circles are inpainted
  together in one pass (passes are batched across slices), so the network is asked once per slice
  "what would healthy tissue look like here?".
* **Coverage**: while more than ``coverage_fraction`` of a union's one-pixel border ring still has a
  residual >= ``residual_level`` the tumour reaches past the hole, so the union grows by the margin
  and the slice is inpainted again (at most ``coverage_passes`` times).
* **Gating**: a candidate's score is its area-normalised residual (mean over the component's pixels);
  its lesion score is the best score of its 3-D hot component (scope "lesion") or the peak residual of
  the 3-D region its hot spot belongs to once hot spots are joined by residual >= ``gate_region_level``
  (scope "region": the hot fragments of a large, mildly avid tumour count as one lesion). With
  ``gate_level`` set, candidates at or below it are explained away as healthy uptake and their
  circles are given back the input (residual 0), like the paper's size filter does for a slice.

Hand-written: the paper's authors release the hot-spot idea as code for their data; the component
rules, coverage and gating here are ours. Components: cc3d; morphology: scipy.ndimage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from autopaint.segment.refine import ResidualRule
from autopaint.segment.search import disk_masks, inpaint_holes
from autopaint.segment.types import Geometry, InpainterLike, SearchParams


@dataclass
class HotCandidate:
    """One hot component of slice ``k``: circle centre (row, col) and radius in model px, its pixels
    (flat indices), the score (mean residual over them) and whether the gate kept it."""

    k: int
    centre: tuple[float, float]
    radius: float
    pixels: np.ndarray
    score: float = 0.0
    kept: bool = True
    lesion_score: float | None = None

    def record(self) -> dict[str, Any]:
        return {"k": self.k, "centre": [round(self.centre[0], 2), round(self.centre[1], 2)],
                "radius": round(self.radius, 2), "pixels": int(self.pixels.size),
                "score": round(self.score, 5), "kept": self.kept,
                "lesion_score": None if self.lesion_score is None else round(self.lesion_score, 5)}


def hot_candidates(k: int, hot: np.ndarray, pet: np.ndarray, geom: Geometry) -> list[HotCandidate]:
    """Candidates of one slice: ``hot`` (N, N) bool hot-spot map, ``pet`` (N, N) PET channel."""
    if not hot.any():
        return []
    labels = cc3d.connected_components(hot.astype(np.uint8), connectivity=8)
    n = hot.shape[-1]
    out = []
    for lab in range(1, int(labels.max()) + 1):
        flat = np.flatnonzero(labels.ravel() == lab)
        rc = np.stack(np.divmod(flat, n), axis=1).astype(np.float64)
        peak = rc[int(np.argmax(pet.ravel()[flat]))]
        reach = float(np.sqrt(((rc - peak) ** 2).sum(axis=1)).max())
        radius = float(np.clip(reach + geom.hot_margin, geom.radius, max(geom.radius, geom.hot_max_radius)))
        out.append(HotCandidate(k, (float(peak[0]), float(peak[1])), radius, flat))
    return out


def _union(cands: list[HotCandidate], n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=bool)
    for c in cands:
        m |= disk_masks(np.array([c.centre]), c.radius, n)[0]
    return m


def border_fraction(union: np.ndarray, residual: np.ndarray, level: float) -> float:
    """Share of the union's one-pixel inner border ring whose residual is >= ``level``."""
    ring = union & ~ndimage.binary_erosion(union)
    return float((residual[ring] >= level).mean()) if ring.any() else 0.0


def grow_until_covered(inpainter: InpainterLike, images: np.ndarray, unions: np.ndarray,
                       inpainted: np.ndarray, rule: ResidualRule, params: SearchParams, margin: float,
                       ooi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage growth for S slices: ``images``/``inpainted`` (S, C, N, N), ``unions`` (S, N, N).

    Returns (unions, inpainted, passes per slice); each pass grows the still-uncovered unions by a disk
    of radius ``margin`` px (inside ``ooi`` (S, N, N) when given) and inpaints them again, batched."""
    unions, inpainted = unions.copy(), inpainted.copy()
    passes = np.zeros(len(unions), dtype=np.int64)
    step = max(float(margin), 1.5)  # >= 1.5 px so that one step reaches the diagonal neighbours
    for _ in range(max(0, params.coverage_passes)):
        res = rule(images, inpainted)
        grow = [i for i in range(len(unions)) if unions[i].any()
                and border_fraction(unions[i], res[i], params.residual_level) > params.coverage_fraction]
        if not grow:
            break
        for i in grow:
            bigger = ndimage.distance_transform_edt(~unions[i]) <= step
            unions[i] = bigger & ooi[i] | unions[i] if ooi is not None else bigger
        idx = np.asarray(grow)
        inpainted[idx] = inpaint_holes(inpainter, images[idx], unions[idx])
        passes[idx] += 1
    return unions, inpainted, passes


def hotspot_search(inpainter: InpainterLike, images: np.ndarray, hot: np.ndarray, ooi: np.ndarray,
                   pet_channel: int, geom: Geometry, params: SearchParams, rule: ResidualRule,
                   batch: int, on_chunk: Callable[[int, int], None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, list[HotCandidate], dict[int, int]]:
    """Hot-spot candidates -> inpaint -> coverage -> scores -> gate, for a volume.

    ``images`` (K, C, N, N) in [0, 1]; ``hot``/``ooi`` (K, N, N) bool. Returns (unions (K, N, N) bool,
    autoinpainted (K, C, N, N): the input outside kept circles, the candidates, coverage passes per
    slice). ``params.gate_scope``: "candidate" gates each slice's component on its own score,
    "lesion" gates a 3-D hot component (26-connected on the model grid) on its best slice's score."""
    k_count, _, n, _ = images.shape
    todo = [k for k in range(k_count) if hot[k].any()]
    unions = np.zeros((k_count, n, n), dtype=bool)
    resid = np.zeros((k_count, n, n), dtype=np.float32)
    painted: dict[int, np.ndarray] = {}
    per: dict[int, list[HotCandidate]] = {}
    passes: dict[int, int] = {}
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        per.update({k: hot_candidates(k, hot[k], images[k, pet_channel], geom) for k in chunk})
        for k in chunk:
            unions[k] = _union(per[k], n)
        idx = np.asarray(chunk)
        out_c = inpaint_holes(inpainter, images[idx], unions[idx])
        if params.coverage_passes > 0:
            grown, out_c, p = grow_until_covered(inpainter, images[idx], unions[idx], out_c, rule, params,
                                                 geom.hot_margin)
            unions[idx] = grown
            passes.update({k: int(v) for k, v in zip(chunk, p, strict=True) if v})
        res = rule(images[idx], out_c)
        for j, k in enumerate(chunk):
            painted[k] = out_c[j]
            resid[k] = res[j]
            for c in per[k]:
                c.score = float(res[j].ravel()[c.pixels].mean())
        if on_chunk is not None:
            on_chunk(min(start + batch, len(todo)), len(todo))
    cands = [c for k in todo for c in per[k]]
    _gate(cands, hot, params, resid * ooi)
    out = images.astype(np.float32, copy=True)
    for k in todo:
        parts = cc3d.connected_components(unions[k].astype(np.uint8), connectivity=8).ravel()
        kept_parts = {int(v) for c in per[k] if c.kept for v in np.unique(parts[c.pixels]) if v}
        keep = np.isin(parts, sorted(kept_parts)).reshape(n, n)
        out[k] = np.where(keep[None], painted[k], images[k])
    return unions, out, cands, passes


def _gate(cands: list[HotCandidate], hot: np.ndarray, params: SearchParams, resid: np.ndarray) -> None:
    """Score every candidate for its scope and, with ``params.gate_level`` set, set ``kept`` (see
    :func:`hotspot_search`). ``resid`` (K, N, N): the channel-combined residual inside the organ."""
    if params.gate_scope == "candidate":
        for c in cands:
            c.lesion_score = c.score
    else:
        region = hot | (resid >= params.gate_region_level) if params.gate_scope == "region" else hot
        comp = cc3d.connected_components(region.astype(np.uint8), connectivity=26)
        n2 = hot.shape[-1] * hot.shape[-2]
        ids = [int(comp.reshape(hot.shape[0], n2)[c.k, c.pixels[0]]) for c in cands]
        if params.gate_scope == "region":
            peak = ndimage.maximum(resid, comp, index=sorted(set(ids)))
            best = dict(zip(sorted(set(ids)), (float(v) for v in np.atleast_1d(peak)), strict=True))
        else:
            best = {}
            for i, c in zip(ids, cands, strict=True):
                best[i] = max(best.get(i, -np.inf), c.score)
        for i, c in zip(ids, cands, strict=True):
            c.lesion_score = best[i]
    if params.gate_level is not None:
        for c in cands:
            c.kept = bool(c.lesion_score is not None and c.lesion_score > params.gate_level)
