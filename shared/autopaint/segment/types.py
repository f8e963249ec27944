"""Shared types of the segmentation engine: the inpainter protocol, parameters, progress events.

Nothing here imports torch: the engine talks to the network only through an object with the
:class:`InpainterLike` interface (``autopaint.model.inpainter.Inpainter`` in production, a
deterministic stub in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from autopaint.segment.refine import ResidualRule

#: The paper works on 512 x 512 slices; every pixel size below is given on that grid and
#: scaled to the model grid N by N / 512.
PAPER_SIZE = 512

Mode = Literal["fast", "exact"]
ScoreKind = Literal["sum", "mean"]
Combine = Literal["mean", "max"]
Unflagged = Literal["skip", "coarse"]
Candidates = Literal["sweep", "hotspot", "both"]
Sign = Literal["abs", "hyper"]
GateScope = Literal["candidate", "lesion", "region"]


@runtime_checkable
class InpainterLike(Protocol):
    """What the engine needs from an inpainting model (see ``model/inpainter.py``)."""

    size: int
    in_channels: int
    modality: str
    images_inpainted: int
    flops_per_image: int
    default_threshold: float | None
    card: dict[str, Any]
    sha256: str
    preprocessing: dict[str, Any]

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """images (B, C, N, N) float32 in [0, 1]; masks (B, 1, N, N), 1 = valid, 0 = hole.

        Returns the composite (B, C, N, N): valid pixels copied from the input, holes repainted.
        """
        ...


@dataclass(frozen=True)
class SearchParams:
    """Autoinpainting parameters, in pixels of the paper's 512 x 512 grid (scaled by N / 512).

    Paper defaults (§2.5, supplement 2.2): circle radius 27 px, stride 15 px, top-3 candidates,
    dilation ladder with square elements of width 7, 9, 11, 13, 15, smallest tumour radius 6 px.
    ``ladder_tol``: a rung "does not change" the residual when the summed residual grows by less
    than this fraction of the previous rung's. ``residual_level``: a residual pixel (channel-combined,
    [0, 1] units) takes part in the size filter's connected components when it is >= this level.
    Fast-mode knobs: ``group_period`` (checkerboard period g of the grouped passes, in grid
    steps), ``screen_subsample`` (the screen runs only the groups on every s-th grid step: g^2/s^2
    passes per slice; flagged slices then run the other groups unless ``complete_groups`` is False:
    then the best screen circles are re-scored directly, on the screen's coarser grid), ``rescore_k``
    (grouped candidates re-scored exactly), ``screen_quantile`` (healthy
    calibration quantile), ``screen_fallback_k`` (when no calibrated level exists, flag slices whose
    screen score exceeds median + k * 1.4826 * MAD of the volume's own OOI slices), ``grow_slices``
    (the OOI slices within this many slices of a flagged one are searched too), ``unflagged``: what
    the OOI slices the screen does not flag get: "skip" (output = input; neighbour growth applies) or
    "coarse" (the top-k of their screen scores, on the screen's coarser grid, go through the ladder
    and size filter: no extra scoring passes, ladder passes only).

    Accuracy parts (issue #11; the defaults reproduce the paper's search): ``candidates`` "sweep" (the
    organ-wide circle sweep), "hotspot" (circles seeded on the PET hot-spot map given to the engine:
    one circle per 2-D hot component, centred on its hottest pixel, radius = its reach +
    ``hot_margin_px``, at least ``radius_px``, at most ``hot_max_radius_px``) or "both"; ``sign``
    "abs" | "hyper" and ``channel_weights``: the residual rule (:class:`refine.ResidualRule`);
    ``gate_level``: a candidate (hot component) or a swept slice counts only when its area-normalised
    residual (mean over its pixels) exceeds this level (None = no gating; calibrated on healthy
    validation patients; ``gate_scope`` "lesion": a 3-D hot component counts by its best slice,
    "candidate": each slice's component on its own; "region": the 3-D region (26-connected, model
    grid) of the hot spots joined by residual >= ``gate_region_level`` counts by its PEAK residual, so the
    fragments of a large, mildly avid tumour count together while an isolated noise spike stays
    alone); ``coverage_passes``: grow a union by ``hot_margin_px`` and re-inpaint while
    more than ``coverage_fraction`` of its border ring keeps a residual >= ``residual_level``.
    """

    radius_px: float = 27.0
    stride_px: float = 15.0
    top_k: int = 3
    ladder_widths: tuple[int, ...] = (7, 9, 11, 13, 15)
    ladder_tol: float = 0.05
    min_tumour_radius_px: float = 6.0
    residual_level: float = 0.05
    score: ScoreKind = "sum"
    combine: Combine = "mean"
    group_period: int = 4
    screen_subsample: int = 2
    complete_groups: bool = True
    rescore_k: int = 5
    screen_quantile: float = 0.99
    screen_fallback_k: float = 6.0
    grow_slices: int = 2
    unflagged: Unflagged = "coarse"
    slice_batch: int = 64
    candidates: Candidates = "sweep"
    sign: Sign = "abs"
    channel_weights: tuple[float, ...] | None = None
    gate_level: float | None = None
    gate_scope: GateScope = "lesion"
    gate_region_level: float = 0.08
    coverage_passes: int = 0
    coverage_fraction: float = 0.25
    hot_margin_px: float = 8.0
    hot_max_radius_px: float = 80.0

    def residual_rule(self, pet_channel: int | None) -> ResidualRule:
        """The residual rule of these parameters for a model whose PET channel is ``pet_channel``."""
        from autopaint.segment.refine import ResidualRule

        return ResidualRule(self.combine, self.sign, pet_channel, self.channel_weights)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ladder_widths"] = list(self.ladder_widths)
        d["channel_weights"] = None if self.channel_weights is None else list(self.channel_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchParams:
        d = dict(d)
        if "ladder_widths" in d:
            d["ladder_widths"] = tuple(int(w) for w in d["ladder_widths"])
        if d.get("channel_weights") is not None:
            d["channel_weights"] = tuple(float(w) for w in d["channel_weights"])
        d.pop("early_stop_ladder", None)  # removed field (was never read)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Geometry:
    """SearchParams scaled to a model grid of N pixels (all in model pixels)."""

    size: int
    radius: float
    stride: float
    ladder_widths: tuple[int, ...]
    min_area: float
    hot_margin: float = 2.0
    hot_max_radius: float = 20.0

    @classmethod
    def for_size(cls, params: SearchParams, size: int) -> Geometry:
        """Scale the paper's pixel sizes from 512 to ``size``.

        Ladder rule: a square element of width w grows a mask by (w - 1) / 2 px on each side; that
        growth is scaled and rounded (>= 1), giving an odd width >= 3. Consecutive duplicate widths
        are dropped (at N = 128 the paper's 7..15 become 3, 5), so no inpainting is repeated.
        Size filter: a component is "smaller than the minimum tumour radius" when its area is
        below pi * r_min^2 with r_min scaled to the model grid.
        """
        s = size / PAPER_SIZE
        widths: list[int] = []
        for w in params.ladder_widths:
            half = max(1, int(math.floor((w - 1) / 2 * s + 0.5)))
            width = 2 * half + 1
            if not widths or width > widths[-1]:
                widths.append(width)
        r_min = params.min_tumour_radius_px * s
        return cls(size=size, radius=params.radius_px * s, stride=params.stride_px * s,
                   ladder_widths=tuple(widths), min_area=math.pi * r_min * r_min,
                   hot_margin=params.hot_margin_px * s, hot_max_radius=params.hot_max_radius_px * s)


CancelFn = Callable[[], bool]


class FastSource(StrEnum):
    """The parts of fast mode, each switchable (``autoinpaint(sources=...)``, see :mod:`engine`)."""

    SCREEN = "screen"
    GROUPED = "grouped"
    EARLY_STOP = "early_stop"
    BATCH = "batch"


@dataclass
class Counters:
    """Forward-pass bookkeeping per source (images inpainted, as counted by the inpainter)."""

    images: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, n: int) -> None:
        self.images[stage] = self.images.get(stage, 0) + int(n)

    @property
    def total(self) -> int:
        return int(sum(self.images.values()))
