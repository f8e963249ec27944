"""Per-volume autoinpainting driver: exact mode (the paper) and fast mode.

Input: the prepared model-grid stack ``images`` (K, C, N, N) float32 in [0, 1] (axial slices of the
reference grid) and the OOI ``ooi`` (K, N, N) bool. Output: the autoinpainted stack (non-OOI
slices and slices failing the size filter equal the input) and the residual (K, N, N) in [0, 1]:
|input - autoinpainted| per channel, combined over channels (mean by default, or max), zero
outside the OOI.

Fast-mode sources (each can be switched off to measure its contribution):
``screen`` grouped screening pass + calibrated level: flagged slices get the full search; the
unflagged OOI slices get a coarse search on their screen scores (``unflagged="coarse"``, default:
their top-k screen circles go straight to the ladder) or none (``"skip"``, output = input, with
"neighbour growth": the slices within ``grow_slices`` of a flagged slice are searched too);
``grouped`` grouped scoring with exact re-scoring of the top ``rescore_k`` circles;
``early_stop`` the ladder stops inpainting at the first no-change rung (same result);
``batch`` passes of many slices share one inpaint call (wall time only).
Exact mode uses none of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autopaint.errors import Cancelled
from autopaint.progress import ProgressEvent, ProgressFn, Stage, Unit
from autopaint.segment.fast import fallback_level, grouped_scores, screen_score
from autopaint.segment.guided import grow_until_covered, hotspot_search
from autopaint.segment.refine import ResidualRule, run_ladder, size_filter
from autopaint.segment.search import (
    Circles,
    abs_diff,
    candidate_circles,
    candidate_grid,
    exact_scores,
    inpaint_holes,
    top_k,
)
from autopaint.segment.types import (
    CancelFn,
    Counters,
    FastSource,
    Geometry,
    InpainterLike,
    Mode,
    SearchParams,
)

log = logging.getLogger(__name__)

FAST_SOURCES: frozenset[FastSource] = frozenset(FastSource)


@dataclass
class AutoinpaintResult:
    """Engine output (model grid). ``unions``/``final_masks`` (K, N, N) bool: top-k union and the
    ladder's chosen mask per searched slice. ``slices``: per-slice records (k, flagged, screen score,
    top-k centres, chosen rung, kept, largest component area)."""

    autoinpainted: np.ndarray
    residual: np.ndarray
    unions: np.ndarray
    final_masks: np.ndarray
    slices: list[dict[str, Any]]
    counters: Counters
    flops: int
    timings: dict[str, float]
    mode: str
    sources: list[str]
    screen_level: float | None
    level_source: str
    extra: dict[str, Any] = field(default_factory=dict)


class _Ctx:
    def __init__(self, inpainter: InpainterLike, progress: ProgressFn | None,
                 should_cancel: CancelFn | None) -> None:
        self.inpainter = inpainter
        self.progress = progress
        self.should_cancel = should_cancel
        self.counters = Counters()
        self.timings: dict[str, float] = {}

    def report(self, stage: Stage, done: int, total: int, unit: Unit, step: str) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, done, total, unit, step))

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("job cancelled")

    def count(self, stage: str, before: int) -> None:
        self.counters.add(stage, self.inpainter.images_inpainted - before)


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def rescore_batch(inpainter: InpainterLike, images: np.ndarray, circles: dict[int, Circles],
                  subsets: dict[int, np.ndarray], kind: str) -> dict[int, np.ndarray]:
    """Exact scores (one circle per pass) of ``subsets[k]`` of ``circles[k]`` for several slices,
    in one inpaint call (batched across slices). ``images`` (K, C, N, N)."""
    keys = [k for k in circles if len(subsets[k])]
    if not keys:
        return {k: np.zeros(0) for k in circles}
    src = np.concatenate([np.full(len(subsets[k]), k) for k in keys])
    holes = np.concatenate([circles[k].masks(subsets[k]) for k in keys])
    imgs = images[src]
    diff = abs_diff(imgs, inpaint_holes(inpainter, imgs, holes))
    out: dict[int, np.ndarray] = {k: np.zeros(0) for k in circles}
    start = 0
    for k in keys:
        m = len(subsets[k])
        out[k] = circles[k].scores(diff[start:start + m], subsets[k], images.shape[1], kind)  # type: ignore[arg-type]
        start += m
    return out


def _search_and_refine(ctx: _Ctx, todo: list[int], images: np.ndarray, ooi: np.ndarray, geom: Geometry,
                       params: SearchParams, sources: frozenset[FastSource], grouped: dict[int, np.ndarray],
                       slices: dict[int, dict[str, Any]], unions: np.ndarray, out: np.ndarray,
                       final_masks: np.ndarray, batch: int, rule: ResidualRule,
                       coarse: frozenset[int] = frozenset()) -> None:
    """Full search (grouped completion + re-scoring, or exact) -> top-k union -> ladder -> size
    filter for the slices ``todo``; fills ``unions``, ``out``, ``final_masks`` and ``slices`` in place.
    Slices in ``coarse`` take the top-k of their screen scores as they are (no more scoring passes)."""
    inpainter = ctx.inpainter
    full = [k for k in todo if k not in coarse]
    if {FastSource.SCREEN, FastSource.GROUPED} <= sources and params.screen_subsample > 1 and params.complete_groups:
        # the screen ran only its subset of groups: run the remaining checkerboard groups
        t0, before = time.perf_counter(), inpainter.images_inpainted
        for chunk in _chunks(full, batch):
            ctx.check()
            rest = grouped_scores(inpainter, images[chunk], ooi[chunk], geom, params, "rest")
            for k, sc in zip(chunk, rest, strict=True):
                grouped[k] = np.where(np.isnan(grouped[k]), sc, grouped[k])
        ctx.count("grouped", before)
        ctx.timings["grouped"] = ctx.timings.get("grouped", 0.0) + time.perf_counter() - t0

    t0, before = time.perf_counter(), inpainter.images_inpainted
    for k in coarse & set(todo):
        sc = grouped[k]
        pick = top_k(sc, params.top_k)
        pick = pick[np.isfinite(sc[pick])]
        unions[k] = candidate_circles(ooi[k], geom.radius, geom.stride).union(pick)
        slices[k]["searched"] = "coarse"
    n_circ = {k: len(candidate_grid(ooi[k], geom.stride)[0]) for k in full}
    total = sum(min(n_circ[k], params.rescore_k) if FastSource.GROUPED in sources else n_circ[k] for k in full)
    done = 0
    for chunk in _chunks(full, batch):
        ctx.check()
        circ = {k: candidate_circles(ooi[k], geom.radius, geom.stride) for k in chunk}
        if FastSource.GROUPED in sources:
            subs = {k: top_k(grouped[k], params.rescore_k) for k in chunk}
            rescored = rescore_batch(inpainter, images, circ, subs, params.score)
            picks = {k: subs[k][top_k(rescored[k], params.top_k)] for k in chunk}
            done += sum(len(subs[k]) for k in chunk)
        else:
            picks = {}
            for k in chunk:
                exact = exact_scores(inpainter, images[k], circ[k], params.score)
                picks[k] = top_k(exact, params.top_k)
                done += len(exact)
        for k in chunk:
            unions[k] = circ[k].union(picks[k])
            slices[k]["top_centres"] = circ[k].centres[picks[k]].round(3).tolist()
            slices[k]["searched"] = "full"
        ctx.report(Stage.searching, done, total, Unit.circles, "sweep")
    ctx.count("search", before)
    ctx.timings["search"] = ctx.timings.get("search", 0.0) + time.perf_counter() - t0
    ctx.check()

    # dilation ladder (batched across slices, rung by rung) + size filter
    t0, before = time.perf_counter(), inpainter.images_inpainted
    done = 0
    for chunk in _chunks(todo, batch):
        ctx.check()
        lad = run_ladder(inpainter, images[chunk], unions[chunk], geom.ladder_widths,
                         params.ladder_tol, early_stop=FastSource.EARLY_STOP in sources)
        for j, k in enumerate(chunk):
            final_masks[k] = lad.masks[j]
            out[k], kept, area = size_filter(images[k], lad.inpainted[j], lad.masks[j],
                                             params.residual_level, geom.min_area, rule)
            slices[k].update(rung=int(lad.rung[j]), rungs_run=int(lad.rungs_run[j]), kept=bool(kept),
                             largest_component_px=area)
        if params.coverage_passes > 0:
            kept_idx = [j for j, k in enumerate(chunk) if slices[k]["kept"]]
            if kept_idx:
                ks = [chunk[j] for j in kept_idx]
                grown, painted, passes = grow_until_covered(
                    inpainter, images[ks], final_masks[ks], out[ks], rule, params, geom.hot_margin)
                final_masks[ks], out[ks] = grown, painted
                for k, p in zip(ks, passes, strict=True):
                    slices[k]["coverage_passes"] = int(p)
        if params.gate_level is not None:
            res = rule(images[chunk], out[chunk])
            for j, k in enumerate(chunk):
                m = final_masks[k]
                score = float(res[j][m].mean()) if m.any() else 0.0
                slices[k]["gate_score"] = round(score, 5)
                if slices[k]["kept"] and score <= params.gate_level:
                    out[k] = images[k]
                    slices[k]["kept"] = False
        done += len(chunk)
        ctx.report(Stage.refining, done, len(todo), Unit.slices, "ladder")
    ctx.count("ladder", before)
    ctx.timings["ladder"] = ctx.timings.get("ladder", 0.0) + time.perf_counter() - t0


def _screen(ctx: _Ctx, images: np.ndarray, ooi: np.ndarray, ooi_slices: list[int], geom: Geometry,
            params: SearchParams, sources: frozenset[FastSource], batch: int, screen_level: float | None,
            slices: dict[int, dict[str, Any]]) -> tuple[dict[int, np.ndarray], list[int], float | None, str]:
    """Stage 1, the grouped pass (screen and/or grouped scoring, batched across slices): the
    grouped scores per slice, the slices flagged for the full search, the level and its source."""
    grouped: dict[int, np.ndarray] = {}
    if sources & {FastSource.SCREEN, FastSource.GROUPED}:
        t0, before = time.perf_counter(), ctx.inpainter.images_inpainted
        done = 0
        which = "screen" if FastSource.SCREEN in sources else "all"
        for chunk in _chunks(ooi_slices, batch):
            ctx.check()
            for k, sc in zip(chunk, grouped_scores(ctx.inpainter, images[chunk], ooi[chunk], geom, params, which),
                             strict=True):
                grouped[k] = sc
                slices[k]["screen_score"] = screen_score(sc)
            done += len(chunk)
            ctx.report(Stage.searching, done, len(ooi_slices), Unit.slices, "screen")
        ctx.count("screen", before)
        ctx.timings["screen"] = time.perf_counter() - t0
    if FastSource.SCREEN not in sources:
        return grouped, list(ooi_slices), None, "none"
    scores = np.array([slices[k]["screen_score"] for k in ooi_slices])
    if screen_level is not None:
        level, level_source = float(screen_level), "calibrated"
    else:
        level, level_source = fallback_level(scores, params.screen_fallback_k), "volume_fallback"
    flagged = [k for k in ooi_slices if slices[k]["screen_score"] > level]
    log.info("screen: %d of %d OOI slices flagged (level %.4f, %s)", len(flagged), len(ooi_slices), level,
             level_source)
    return grouped, flagged, level, level_source


def _slices_to_search(flagged: list[int], ooi_slices: list[int], params: SearchParams,
                      sources: frozenset[FastSource], slices: dict[int, dict[str, Any]]
                      ) -> tuple[list[int], frozenset[int]]:
    """(slices to search, of which coarse). Unflagged OOI slices get a coarse search on the screen's
    own scores (``unflagged="coarse"``), or, with neighbour growth, the slices within ``grow_slices``
    of a flagged slice are searched too (tumours are 3D and the screen misses the small
    cross-sections at their ends; a bounded rule: anatomy is continuous along k as well, so "grow
    while the detection goes on" walked through whole volumes with the real model)."""
    flagged = list(flagged)
    for k in flagged:
        slices[k]["flagged"] = True
    coarse: frozenset[int] = frozenset()
    if FastSource.SCREEN in sources and params.unflagged == "coarse":
        coarse = frozenset(ooi_slices) - set(flagged)
    elif FastSource.SCREEN in sources and params.grow_slices > 0:
        near = {k + d for k in flagged for d in range(-params.grow_slices, params.grow_slices + 1)}
        for j in sorted(near & set(ooi_slices) - set(flagged)):
            slices[j].update(flagged=True, grown=True)
            flagged.append(j)
    return sorted(set(flagged) | coarse), coarse


def _hotspot_pass(ctx: _Ctx, images: np.ndarray, hot: np.ndarray, ooi: np.ndarray, pet_channel: int | None,
                  geom: Geometry, params: SearchParams, rule: ResidualRule, batch: int, residual: np.ndarray,
                  out: np.ndarray, unions: np.ndarray, extra: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The PET-guided circles; per pixel, the larger residual of this pass and the sweep's wins
    (``unions`` updated in place). Returns (residual, autoinpainted)."""
    if pet_channel is None:
        raise ValueError("hot-spot candidates need a model with a PET channel")
    t0, before = time.perf_counter(), ctx.inpainter.images_inpainted

    def on_chunk(done: int, total: int) -> None:
        ctx.check()
        ctx.report(Stage.searching, done, total, Unit.slices, "hotspot")

    h_unions, h_out, cands, passes = hotspot_search(
        ctx.inpainter, images, hot, ooi, pet_channel, geom, params, rule, batch, on_chunk=on_chunk)
    ctx.count("hotspot", before)
    ctx.timings["hotspot"] = time.perf_counter() - t0
    h_res = rule(images, h_out)
    take = h_res > residual
    unions |= h_unions
    extra["candidates"] = [c.record() for c in cands]
    extra["coverage_passes"] = passes
    return np.where(take, h_res, residual), np.where(take[:, None], h_out, out)


def autoinpaint(images: np.ndarray, ooi: np.ndarray, inpainter: InpainterLike,
                params: SearchParams | None = None, mode: Mode = "fast",
                screen_level: float | None = None, sources: Iterable[str] | None = None,
                progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                hot: np.ndarray | None = None, pet_channel: int | None = None,
                ) -> AutoinpaintResult:
    """Autoinpaint a volume's slices. ``images`` (K, C, N, N) float32 [0, 1]; ``ooi`` (K, N, N) bool.

    ``mode="exact"``: every OOI slice gets the full circle search (one circle per pass), the
    six-rung ladder and the size filter. ``mode="fast"``: ``sources`` (:class:`FastSource` values,
    default all of :data:`FAST_SOURCES`). ``screen_level``: calibrated level (card["screen_level"]);
    None uses the volume's own robust fallback (:func:`fast.fallback_level`). ``params.candidates``:
    "sweep" runs the above; "hotspot" only the PET-guided circles on ``hot`` ((K, N, N) bool hot-spot
    map, with ``pet_channel`` the PET channel of ``images``); "both" runs both and keeps, per pixel,
    the larger residual. ``params.sign``/``channel_weights`` set the residual rule
    (:class:`refine.ResidualRule`).
    """
    params = params or SearchParams()
    try:
        srcs = frozenset(FastSource(s) for s in (sources if sources is not None
                                                 else FAST_SOURCES if mode == "fast" else ()))
    except ValueError as exc:
        raise ValueError(f"unknown fast-mode source: {exc}") from exc
    k_count, n_ch, n = images.shape[0], images.shape[1], images.shape[-1]
    if ooi.shape != (k_count, n, n):
        raise ValueError(f"ooi shape {ooi.shape} does not match images {images.shape}")
    geom = Geometry.for_size(params, n)
    rule = params.residual_rule(pet_channel)
    extra: dict[str, Any] = {"geometry": asdict(geom), "n_channels": n_ch}
    # "hotspot" alone: no organ-wide sweep, only the hot-spot pass below
    ooi_sweep = np.zeros_like(ooi) if params.candidates == "hotspot" else ooi
    ctx = _Ctx(inpainter, progress, should_cancel)
    batch = params.slice_batch if FastSource.BATCH in srcs else 1
    ooi_slices = [k for k in range(k_count) if ooi_sweep[k].any()]
    slices: dict[int, dict[str, Any]] = {k: {"k": k, "flagged": False} for k in ooi_slices}
    grouped, flagged, level, level_source = _screen(ctx, images, ooi, ooi_slices, geom, params, srcs, batch,
                                                    screen_level, slices)
    todo, coarse = _slices_to_search(flagged, ooi_slices, params, srcs, slices)
    ctx.check()
    unions = np.zeros((k_count, n, n), dtype=bool)
    out = images.astype(np.float32, copy=True)
    final_masks = np.zeros((k_count, n, n), dtype=bool)
    if todo:
        _search_and_refine(ctx, todo, images, ooi, geom, params, srcs, grouped, slices, unions,
                           out, final_masks, batch, rule, coarse)
    residual = rule(images, out)
    if hot is not None and params.candidates in ("hotspot", "both"):
        residual, out = _hotspot_pass(ctx, images, hot, ooi, pet_channel, geom, params, rule, batch, residual,
                                      out, unions, extra)
    residual = residual.astype(np.float32)
    residual *= ooi
    np.clip(residual, 0.0, 1.0, out=residual)
    return AutoinpaintResult(
        autoinpainted=out, residual=residual, unions=unions, final_masks=final_masks,
        slices=[slices[k] for k in ooi_slices], counters=ctx.counters,
        flops=int(ctx.counters.total * int(inpainter.flops_per_image)), timings=ctx.timings,
        mode=mode, sources=sorted(str(x) for x in srcs),
        screen_level=level if level is None or math.isfinite(level) else None,
        level_source=level_source, extra=extra,
    )
