"""Which accuracy configuration a run uses: the paper's search, or the model card's measured default.

A model card may carry ``accuracy``: the configuration chosen on validation patients (issue #11)::

    {"search": {SearchParams fields that differ from the paper}, "delineation": {...} | null,
     "hotspot": {"k": 0.0, "floor_suv": 2.0}, "threshold": 0.02, "calibration": {...}}

``profile="default"`` uses it (falling back to the paper when the card has none); ``"paper"`` is the
paper's organ-wide sweep with the residual-threshold mask (the card's ``default_threshold``), kept
reproducible for the tables. Explicit ``search``/``delineation`` given by a caller win over both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from autopaint.segment.delineate import DelineationParams
from autopaint.segment.hotspot import ReferenceUptake
from autopaint.segment.types import SearchParams

Profile = Literal["default", "paper"]
PROFILES: tuple[str, ...] = ("default", "paper")


@dataclass(frozen=True)
class HotspotGate:
    """The hot-spot gate in SUV: ``gate_suv`` when given, else ``max(floor_suv, ref mean + k * ref SD)``
    of the patient's reference uptake (:func:`hotspot.reference_uptake`)."""

    k: float = 0.0
    floor_suv: float = 2.0
    gate_suv: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def suv(self, reference: ReferenceUptake) -> float:
        """The gate in SUV for a patient whose reference uptake is ``reference``."""
        return float(self.gate_suv) if self.gate_suv is not None else reference.gate(self.k, self.floor_suv)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HotspotGate:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Accuracy:
    """A resolved configuration: engine search, delineation (None: the residual-threshold mask),
    hot-spot gate, the card's threshold for it (None: none recorded) and where it came from."""

    search: SearchParams
    delineation: DelineationParams | None
    hotspot: HotspotGate
    threshold: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"search": self.search.to_dict(),
                "delineation": None if self.delineation is None else self.delineation.to_dict(),
                "hotspot": self.hotspot.to_dict(), "threshold": self.threshold, "source": self.source}


def paper(card: dict[str, Any] | None = None, default_threshold: float | None = None) -> Accuracy:
    """The paper's search and residual-threshold mask, with the model's ``default_threshold`` (else
    the card's)."""
    thr = default_threshold if default_threshold is not None else (card or {}).get("default_threshold")
    return Accuracy(SearchParams(), None, HotspotGate(), None if thr is None else float(thr), "paper")


def from_card(card: dict[str, Any] | None, default_threshold: float | None = None) -> Accuracy:
    """The card's measured default (``card["accuracy"]``), else the paper's."""
    acc = (card or {}).get("accuracy")
    if not acc:
        return paper(card, default_threshold)
    search = SearchParams.from_dict({**SearchParams().to_dict(), **(acc.get("search") or {})})
    delin = acc.get("delineation")
    thr = acc.get("threshold")
    return Accuracy(search, None if delin is None else DelineationParams.from_dict(delin),
                    HotspotGate.from_dict(acc.get("hotspot") or {}), None if thr is None else float(thr),
                    "model_card")


def resolve(profile: str, card: dict[str, Any] | None, search: SearchParams | None = None,
            delineation: DelineationParams | None = None, hotspot: HotspotGate | None = None,
            default_threshold: float | None = None) -> Accuracy:
    """The configuration of a run: the profile's, with explicit parts replacing the profile's.
    ``default_threshold``: the model's paper-search threshold (``Inpainter.default_threshold``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown accuracy profile {profile!r}; choose one of {PROFILES}")
    base = paper(card, default_threshold) if profile == "paper" else from_card(card, default_threshold)
    if search is not None:
        base = replace(base, search=search, source="explicit")
    if delineation is not None:
        base = replace(base, delineation=delineation, source="explicit")
    if hotspot is not None:
        base = replace(base, hotspot=hotspot, source="explicit")
    return base
