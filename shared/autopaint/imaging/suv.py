"""PET activity concentration (Bq/ml) -> body-weight SUV (paper §2.2, second step).

SUVbw = C(Bq/ml) * weight(g) / D_decay(Bq), with the injected dose decay-corrected to the start of
the acquisition: D_decay = D * 2^(-delay / T_half). (Hand-written: it is the definition; no library
in our stack implements it.) Units: weight in kg, dose in Bq, delay and half-life in seconds
(F-18 half-life 6586.2 s).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from autopaint.errors import InvalidInput
from autopaint.imaging.volume import Volume

logger = logging.getLogger(__name__)

F18_HALF_LIFE_S = 6586.2
_SUV_UNITS = {"GML", "SUV", "SUVBW", "G/ML"}
_ACTIVITY_UNITS = {"BQML", "BQ/ML"}


def decay_corrected_dose(injected_dose_bq: float, delay_s: float,
                         half_life_s: float = F18_HALF_LIFE_S) -> float:
    """Injected dose decayed to the scan start (Bq)."""
    return float(injected_dose_bq) * 2.0 ** (-float(delay_s) / float(half_life_s))


def suv_from_bqml(pet: Volume, weight_kg: float, injected_dose_bq: float, delay_s: float,
                  half_life_s: float = F18_HALF_LIFE_S) -> Volume:
    """PET in Bq/ml (any grid, (I, J, K)) -> PET in SUVbw (g/ml), float32, same grid.

    ``meta["units"]`` becomes ``"SUVbw"``; ``meta["suv_factor"]`` holds the multiplier used.
    """
    for name, value in (("weight_kg", weight_kg), ("injected_dose_bq", injected_dose_bq),
                        ("half_life_s", half_life_s)):
        if value is None or not np.isfinite(value) or value <= 0:
            raise InvalidInput(f"SUV conversion needs a positive {name}, got {value!r}",
                               code="missing_suv_info")
    if delay_s is None or not np.isfinite(delay_s) or delay_s < 0:
        raise InvalidInput(f"SUV conversion needs a non-negative delay_s, got {delay_s!r}",
                           code="missing_suv_info")
    dose = decay_corrected_dose(injected_dose_bq, delay_s, half_life_s)
    factor = float(weight_kg) * 1000.0 / dose
    data = (pet.data.astype(np.float32) * np.float32(factor)).astype(np.float32)
    meta = dict(pet.meta)
    meta.update(units="SUVbw", suv_factor=factor, suv_source="bqml")
    return Volume(data, pet.affine.copy(), meta)


def pet_to_suv(pet: Volume, tags: Mapping[str, object] | None = None,
               already_suv: bool = False) -> Volume:
    """Return the PET in SUV, using the tag dict of ``io.read_dicom_series`` when needed.

    ``already_suv=True`` or ``tags["units"]`` in {GML, SUV, SUVbw} -> passed through unchanged
    except for ``meta["suv_source"] = "passthrough"``. Otherwise the tags must give ``weight_kg``,
    ``injected_dose_bq`` and ``delay_s`` (``half_life_s`` defaults to F-18) and the units must be
    Bq/ml (or absent); ``decay_correction == "ADMIN"`` means no decay to correct. Missing information -> ``InvalidInput(code="missing_suv_info")``.
    """
    tags = dict(tags or {})
    units = str(tags.get("units") or "").strip().upper()
    if already_suv or units in _SUV_UNITS:
        meta = dict(pet.meta)
        meta.update(units="SUVbw", suv_source="passthrough")
        return Volume(pet.data.astype(np.float32, copy=False), pet.affine.copy(), meta)
    if units and units not in _ACTIVITY_UNITS:
        raise InvalidInput(f"PET units {units!r} cannot be converted to SUV (need BQML)",
                           code="missing_suv_info")
    missing = [k for k in ("weight_kg", "injected_dose_bq", "delay_s") if tags.get(k) is None]
    if missing:
        raise InvalidInput(f"PET is not in SUV and the SUV tags are missing: {', '.join(missing)}",
                           code="missing_suv_info")
    half_life = tags.get("half_life_s") or F18_HALF_LIFE_S
    delay = float(tags["delay_s"])  # type: ignore[arg-type]
    if str(tags.get("decay_correction") or "").strip().upper() == "ADMIN":
        delay = 0.0  # images already decay-corrected to the administration time
    logger.info("converting PET Bq/ml to SUVbw (weight %s kg, dose %s Bq, delay %s s)",
                tags["weight_kg"], tags["injected_dose_bq"], tags["delay_s"])
    return suv_from_bqml(pet, float(tags["weight_kg"]), float(tags["injected_dose_bq"]),  # type: ignore[arg-type]
                         delay, float(half_life))  # type: ignore[arg-type]
