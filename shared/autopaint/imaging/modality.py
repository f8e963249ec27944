"""Which images each input modality needs — the one rule used by the CLI, the API and the pipeline.

A model's modality (its card, ``ct`` | ``pet`` | ``petct``) fixes the image channels it reads; a
case must bring those images. Missing ones are refused with one code, ``missing_input``, wherever
the check runs (at submit in the API, before reading in the CLI, in the pipeline).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from autopaint.errors import InvalidInput

Modality = Literal["ct", "pet", "petct"]
MODALITIES: tuple[str, ...] = get_args(Modality)
IMAGE_ROLES: dict[str, tuple[str, ...]] = {"ct": ("ct",), "pet": ("pet",), "petct": ("ct", "pet")}
"""Modality -> the image roles it needs."""
PET_CT_CHANNELS: dict[str, list[int]] = {"ct": [0], "pet": [1], "petct": [0, 1]}
"""Modality -> the channels it reads of a two-channel stack (CT = 0, PET = 1: the prepared images of
:func:`autopaint.imaging.preprocess.prepare_case` and the slice datasets)."""


def check_roles(modality: str | None, present: Iterable[str]) -> None:
    """Raise ``InvalidInput(code="missing_input")`` unless ``present`` holds a CT or a PET and every
    image the ``modality`` needs (``None``: only the CT-or-PET rule)."""
    have = set(present)
    if not have & {"ct", "pet"}:
        raise InvalidInput("give a CT and/or a PET image", code="missing_input")
    if modality is None:
        return
    if modality not in IMAGE_ROLES:
        raise InvalidInput(f"unknown modality {modality!r} (one of {', '.join(MODALITIES)})",
                           code="modality_mismatch")
    missing = [r for r in IMAGE_ROLES[modality] if r not in have]
    if missing:
        raise InvalidInput(f"modality {modality!r} needs {' and '.join(r.upper() for r in IMAGE_ROLES[modality])};"
                           f" missing {', '.join(r.upper() for r in missing)}", code="missing_input")


def check_model_modality(requested: str | None, model_modality: str | None, model: str) -> None:
    """A job that names a modality must name its model's (``modality_mismatch`` otherwise)."""
    if requested is not None and model_modality is not None and requested != model_modality:
        raise InvalidInput(f"the job asks for modality {requested!r}, model {model!r} is {model_modality!r}",
                           code="modality_mismatch")
