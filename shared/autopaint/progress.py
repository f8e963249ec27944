"""Progress of one segmentation: the one event type and the one stage vocabulary.

The library emits :class:`ProgressEvent` with these stages; the CLI draws them, the worker writes
them to the job row as they are, and the API reports them (``JobOut.stage``). Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """Where a job is: ``queued`` -> ``loading`` -> ``preprocessing`` -> ``searching`` ->
    ``refining`` -> ``thresholding`` -> ``writing`` -> ``done``."""

    queued = "queued"
    loading = "loading"
    preprocessing = "preprocessing"
    searching = "searching"
    refining = "refining"
    thresholding = "thresholding"
    writing = "writing"
    done = "done"


class Unit(StrEnum):
    """What ``done`` / ``total`` count."""

    volumes = "volumes"
    slices = "slices"
    circles = "circles"
    files = "files"


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: ``done`` of ``total`` ``unit`` in ``stage``; ``step`` names the part of
    the search (``sweep``, ``screen``, ``hotspot``...) where a stage has several."""

    stage: Stage
    done: int
    total: int
    unit: Unit
    step: str | None = None


ProgressFn = Callable[[ProgressEvent], None]
