"""PET/CT preprocessing (paper §2.2) and slicing to the model grid (§2.5 "Preparing the input slices").

Steps: PET resampled onto the CT grid with a third-order B-spline (SimpleITK), PET in SUV
(:mod:`autopaint.imaging.suv`), CT/PET windows clamped and normalised to [0, 1], 8-bit quantised as
the paper's 8-bit gray-level slices, and every axial slice of the (canonically oriented, see
:mod:`autopaint.imaging.slicegrid`) reference grid mapped to a square ``N x N`` model image.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from autopaint.errors import InvalidInput
from autopaint.imaging.modality import MODALITIES, check_roles
from autopaint.imaging.resample import resample_to, same_grid
from autopaint.imaging.slicegrid import Canonical, SliceGrid
from autopaint.imaging.volume import Volume

__all__ = ["PRESET_CT_WINDOWS", "PreparedCase", "PreprocessParams", "denormalize", "normalize_ct",
           "normalize_pet", "params_for", "prepare_case"]

logger = logging.getLogger(__name__)

PRESET_CT_WINDOWS: dict[str, tuple[float, float]] = {
    "thorax": (-1000.0, 500.0),
    "headneck": (-200.0, 200.0),
}


@dataclass(frozen=True)
class PreprocessParams:
    """Everything that turns a PET/CT pair into model images (stored in checkpoints and datasets).

    ``ct_window`` in HU and ``suv_window`` in SUV are clamped and mapped linearly to [0, 1];
    ``quantize_8bit`` rounds to multiples of 1/255 (the paper's 8-bit slices).
    """

    preset: str = "thorax"
    modality: str = "petct"
    size: int = 128
    ct_window: tuple[float, float] = PRESET_CT_WINDOWS["thorax"]
    suv_window: tuple[float, float] = (0.0, 12.0)
    quantize_8bit: bool = True

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidInput(f"modality must be one of {MODALITIES}, got {self.modality!r}",
                               code="bad_modality")
        if int(self.size) < 8:
            raise InvalidInput(f"model size must be >= 8, got {self.size}", code="bad_size")
        for name in ("ct_window", "suv_window"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not hi > lo:
                raise InvalidInput(f"{name} must have hi > lo, got {(lo, hi)}", code="bad_window")
            object.__setattr__(self, name, (lo, hi))
        object.__setattr__(self, "size", int(self.size))

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names in model order: CT = 0, PET = 1."""
        return {"ct": ("ct",), "pet": ("pet",), "petct": ("ct", "pet")}[self.modality]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ct_window"] = list(self.ct_window)
        d["suv_window"] = list(self.suv_window)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessParams:
        known = {k: d[k] for k in ("preset", "modality", "size", "ct_window", "suv_window",
                                   "quantize_8bit") if k in d}
        for k in ("ct_window", "suv_window"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


def params_for(preset: str, modality: str, size: int, **overrides: Any) -> PreprocessParams:
    """Default parameters of a preset ("thorax", "headneck", "custom"); ``custom`` needs ``ct_window``
    when the modality has CT."""
    if preset not in (*PRESET_CT_WINDOWS, "custom"):
        raise InvalidInput(f"unknown preset {preset!r}", code="bad_preset")
    if preset == "custom" and "ct_window" not in overrides and modality != "pet":
        raise InvalidInput("preset 'custom' needs an explicit ct_window", code="bad_window")
    window = PRESET_CT_WINDOWS.get(preset, PRESET_CT_WINDOWS["thorax"])
    base = PreprocessParams(preset=preset, modality=modality, size=size, ct_window=window)
    return replace(base, **overrides) if overrides else base


def _window(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = (np.asarray(data, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_ct(hu: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """HU -> [0, 1] float32 through ``params.ct_window`` (no quantisation)."""
    return _window(hu, *params.ct_window)


def normalize_pet(suv: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """SUV -> [0, 1] float32 through ``params.suv_window`` (no quantisation)."""
    return _window(suv, *params.suv_window)


def denormalize(images01: np.ndarray, params: PreprocessParams
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Model images ``(..., C, N, N)`` in [0, 1] -> ``(hu, suv)`` arrays ``(..., N, N)`` (None where the
    modality has no such channel); values outside the windows were clamped and stay clamped."""
    x = np.asarray(images01, dtype=np.float32)
    hu = suv = None
    for c, name in enumerate(params.channels):
        lo, hi = params.ct_window if name == "ct" else params.suv_window
        val = x[..., c, :, :] * np.float32(hi - lo) + np.float32(lo)
        if name == "ct":
            hu = val
        else:
            suv = val
    return hu, suv


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """A case on the reference grid plus its model images.

    ``images``: float32 ``(K, C, N, N)`` in [0, 1], one per axial slice of the canonically oriented
    reference grid (k = inferior -> superior); channels CT = 0, PET = 1.
    ``reference``: the original CT (or PET when there is no CT), original affine; ``ct_on_ref`` (HU)
    and ``pet_on_ref`` (SUV) are on that grid. ``canonical`` maps the reference array to RAS order.
    """

    images: np.ndarray
    grid: SliceGrid
    reference: Volume
    ct_on_ref: Volume | None
    pet_on_ref: Volume | None
    params: PreprocessParams
    canonical: Canonical = field(repr=False)

    def to_reference(self, stack: np.ndarray, order: int = 1) -> np.ndarray:
        """Model-grid stack ``(K, N, N)`` or ``(K, C, N, N)`` -> float32 ``(I, J, K)`` or
        ``(I, J, K, C)`` on the ORIGINAL reference grid (use with ``reference.affine``)."""
        stack = np.asarray(stack)
        if stack.ndim not in (3, 4) or stack.shape[0] != self.canonical.canonical_shape[2]:
            raise ValueError(f"expected (K, [C,] N, N) with K={self.canonical.canonical_shape[2]},"
                             f" got {stack.shape}")
        back = self.grid.from_model(stack, order=order)          # (K, [C,] I', J')
        back = np.moveaxis(back, 0, -1)                          # ([C,] I', J', K)
        if back.ndim == 4:
            back = np.moveaxis(back, 0, -1)                      # (I', J', K, C)
        return np.ascontiguousarray(self.canonical.from_canonical(back))

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """Bool mask ``(I, J, K)`` on the reference grid -> bool ``(K, N, N)`` on the model grid (a
        model pixel is set when >= half of it is covered by the mask)."""
        mask = np.asarray(mask)
        if mask.shape != self.reference.shape:
            raise ValueError(f"mask shape {mask.shape} != reference shape {self.reference.shape}")
        can = np.moveaxis(self.canonical.to_canonical(mask.astype(np.float32)), 2, 0)
        return self.grid.to_model(can, order=1, antialias=True) >= 0.5

    def slice_to_model(self, volume_data: np.ndarray, order: int = 1) -> np.ndarray:
        """Any array ``(I, J, K)`` on the reference grid -> float32 ``(K, N, N)`` (no windowing)."""
        can = np.moveaxis(self.canonical.to_canonical(np.asarray(volume_data)), 2, 0)
        return self.grid.to_model(can, order=order)


def prepare_case(ct: Volume | None, pet: Volume | None, params: PreprocessParams) -> PreparedCase:
    """CT (HU) and/or PET (SUV, any grid) -> :class:`PreparedCase`.

    The reference grid is the CT's (PET's when there is no CT). The PET is resampled onto it with a
    B-spline (negatives from ringing clamped to 0). ``params.modality`` decides which inputs are
    required and the channels of ``images``.
    """
    check_roles(params.modality, [r for r, v in (("ct", ct), ("pet", pet)) if v is not None])
    reference = ct if ct is not None else pet
    assert reference is not None  # check_roles: a CT or a PET
    pet_on_ref: Volume | None = None
    if pet is not None:
        if same_grid(pet, reference):
            pet_on_ref = pet.with_data(pet.data.astype(np.float32, copy=False))
        else:
            moved = resample_to(pet, reference, order=3, default=0.0)
            np.maximum(moved.data, 0.0, out=moved.data)
            pet_on_ref = moved
    ct_on_ref = ct.with_data(ct.data.astype(np.float32, copy=False)) if ct is not None else None

    canonical = Canonical.for_affine(reference.affine, reference.shape)
    ci, cj, ck = canonical.canonical_shape
    sp = canonical.canonical_spacing(reference.affine)
    grid = SliceGrid(shape_ij=(ci, cj), spacing_ij=(float(sp[0]), float(sp[1])), size=params.size)
    n = params.size
    images = np.empty((ck, len(params.channels), n, n), dtype=np.float32)
    for c, name in enumerate(params.channels):
        src = ct_on_ref if name == "ct" else pet_on_ref
        assert src is not None
        norm = normalize_ct(src.data, params) if name == "ct" else normalize_pet(src.data, params)
        can = np.moveaxis(canonical.to_canonical(norm), 2, 0)   # (K, I', J') view
        images[:, c] = grid.to_model(can, order=1, antialias=True, cval=0.0)
        del norm, can
    np.clip(images, 0.0, 1.0, out=images)
    if params.quantize_8bit:  # in place: round(x * 255) / 255
        np.rint(np.multiply(images, 255.0, out=images), out=images)
        np.divide(images, 255.0, out=images)
    logger.info("prepared %d slices of %s (%dx%d -> %dx%d, %.3f mm/px)", ck, params.modality,
                ci, cj, n, n, grid.pixel_mm)
    return PreparedCase(images=images, grid=grid, reference=reference, ct_on_ref=ct_on_ref,
                        pet_on_ref=pet_on_ref, params=params, canonical=canonical)
