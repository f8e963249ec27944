"""Synthetic FDG-PET/CT phantoms (thorax / head-and-neck) with tumour labels, and cohorts of them.

``generate_case`` draws one patient from a seed: anatomy in continuous patient-frame millimetres
(:mod:`.phantom_thorax`, :mod:`.phantom_headneck`), rasterised on a scanner-like CT grid
(512 x 512 at ~0.9-1.05 mm, 3 mm slices; ``size="small"``: 256 x 256 at ~2 mm, 40 slices) and a PET
on its own coarser grid (~4 mm, offset in world space). Affines are RAS+ (nibabel convention) of an
LPS-style scanner: ``diag(-sx, -sy, sz)`` — i towards the patient's left, j posterior, k superior.
Everything is deterministic for a seed (one ``np.random.default_rng(seed)`` threaded through).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.data.phantom_common import Canvas, Grid
from autopaint.data.phantom_headneck import headneck_tumours, paint_headneck
from autopaint.data.phantom_scanner import finish_ct, finish_pet
from autopaint.data.phantom_thorax import benign_spots, paint_thorax, thorax_tumours
from autopaint.errors import InvalidInput
from autopaint.imaging.volume import Volume

log = logging.getLogger(__name__)

KINDS = ("thorax", "headneck")
SIZES = ("full", "small")


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic patient. ``ct``: int16 HU on the CT grid (I, J, K); ``pet``: float32 SUV on the PET
    grid; ``label``: uint8 tumour mask (1 = tumour) on the CT grid; ``info``: the cases.json entry."""

    case_id: str
    ct: Volume
    pet: Volume
    label: Volume
    info: dict[str, Any] = field(default_factory=dict)


def _grids(kind: str, size: str, rng: np.random.Generator) -> tuple[float, float, Grid, Grid, np.ndarray]:
    """Scan length H (mm), patient scale, CT grid, PET grid, and the patient's world offset."""
    if kind == "thorax":
        H, s = float(rng.uniform(270, 330)), float(rng.uniform(0.88, 1.1))
    else:
        H, s = float(rng.uniform(180, 240)), float(rng.uniform(0.9, 1.08))
    offset = np.array([rng.uniform(-15, 15), rng.uniform(-20, 10), rng.uniform(-700, -150)])
    if size == "full":
        n_ct, sxy, dz = 512, float(rng.uniform(0.9, 1.05)), 3.0
        k = int(round(H / dz))
        n_pet = int(rng.choice([144, 168]))
    else:
        n_ct, sxy, k = 256, float(rng.uniform(1.85, 2.05)), 40
        dz = H / k
        n_pet = 128
    s_pet = float(rng.choice([4.07, 4.07, 4.0, 4.17]))
    ct = Grid.centred((n_ct, n_ct, k), (sxy, sxy, dz), (0.0, 0.0, float(offset[2] + H / 2)))
    pet_centre = (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)),
                  float(offset[2] + H / 2 + rng.uniform(-dz / 2, dz / 2)))
    pet = Grid.centred((n_pet, n_pet, k - 1), (s_pet, s_pet, dz), pet_centre)
    return H, s, ct, pet, offset


def _tumour_stats(cv: Canvas, pet: np.ndarray, pet_grid: Grid, tumours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured per-tumour volume (ml), equivalent diameter (mm), world centroid (mm) and SUVmax; the
    placement centre ``centre_mm`` in the same world frame (RAS+ mm, as the NIfTI affines)."""
    lesion = cv.lesion
    vox_ml = float(abs(np.linalg.det(cv.grid.affine[:3, :3])) / 1000.0)
    # nearest CT voxel of every PET voxel centre (diagonal map), to read the label on the PET grid
    to_ct = np.linalg.inv(cv.grid.affine) @ pet_grid.affine
    idx = [np.rint(to_ct[a, a] * np.arange(pet_grid.shape[a]) + to_ct[a, 3]).astype(int) for a in range(3)]
    valid = [(v >= 0) & (v < lesion.shape[a]) for a, v in enumerate(idx)]
    on_pet = np.zeros(pet_grid.shape, np.uint8)
    sub = np.ix_(*[np.nonzero(v)[0] for v in valid])
    on_pet[sub] = lesion[np.ix_(*[i[v] for i, v in zip(idx, valid, strict=True)])]
    out = []
    for t in tumours:
        ijk = np.argwhere(lesion == t["id"])
        if len(ijk) == 0:
            continue
        vol = len(ijk) * vox_ml
        centroid = cv.grid.affine[:3, :3] @ ijk.mean(axis=0) + cv.grid.affine[:3, 3]
        inside = pet[on_pet == t["id"]]
        if inside.size == 0:  # smaller than a PET voxel: nearest PET voxel to the centroid
            pj = np.linalg.inv(pet_grid.affine) @ np.append(centroid, 1.0)
            pj = np.clip(np.rint(pj[:3]).astype(int), 0, np.array(pet_grid.shape) - 1)
            inside = pet[pj[0], pj[1], pj[2]][None]
        # the painters place tumours in the canvas's body frame (world - offset): report world RAS mm,
        # the frame of ``centroid_mm`` and of the NIfTI affines
        centre = [round(float(v) + float(o), 1) for v, o in zip(t["centre_mm"], cv.offset, strict=True)]
        out.append({**t, "centre_mm": centre, "volume_ml": round(vol, 3), "eq_diameter_mm": round(float((6 * vol * 1000 / np.pi) ** (1 / 3)), 1),
                     "centroid_mm": [round(float(v), 2) for v in centroid], "suv_max": round(float(inside.max()), 3)})
    return out


def generate_case(kind: str = "thorax", seed: int = 0, size: str = "full", healthy: bool = False,
                  case_id: str | None = None) -> PhantomCase:
    """Draw one synthetic PET/CT patient (see module doc). Same arguments -> identical arrays."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown phantom kind {kind!r}; choose one of {KINDS}", code="bad_phantom_kind")
    if size not in SIZES:
        raise InvalidInput(f"unknown phantom size {size!r}; choose one of {SIZES}", code="bad_phantom_size")
    rng = np.random.default_rng(seed)
    H, s, ct_grid, pet_grid, offset = _grids(kind, size, rng)
    cv = Canvas(ct_grid, offset)
    tumours: list[dict[str, Any]]
    if kind == "thorax":
        anat = paint_thorax(cv, rng, H, s)
        hila = anat["hila"]
        assert isinstance(hila, dict)
        n_benign = benign_spots(cv, rng, hila, int(rng.integers(0, 3)) if healthy else int(rng.integers(0, 2)))
        tumours = [] if healthy else thorax_tumours(cv, rng, anat, int(rng.integers(1, 4)))
        myo = float(anat["myo_suv"])  # type: ignore[arg-type]
        extra = {"myocardium_suv": round(myo, 2), "benign_spots": n_benign, "breast": bool(anat["breast"])}
    else:
        anat = paint_headneck(cv, rng, H, s)
        tumours = [] if healthy else headneck_tumours(cv, rng, anat, int(rng.integers(0, 3)))
        extra = {"normal_nodes": int(anat["n_nodes"])}  # type: ignore[call-overload]
    ct = finish_ct(cv, rng, float(rng.uniform(10, 20)))
    pet = finish_pet(cv, pet_grid, rng, float(rng.uniform(6.0, 7.0)), float(rng.uniform(0.03, 0.08)))
    stats = _tumour_stats(cv, pet, pet_grid, tumours)
    label = (cv.lesion > 0).astype(np.uint8)
    cid = case_id or f"{kind}_s{seed}_000"
    info: dict[str, Any] = {
        "case_id": cid, "kind": kind, "size": size, "seed": int(seed), "healthy": not stats,
        "n_tumours": len(stats), "tumour_volumes_ml": [t["volume_ml"] for t in stats],
        "suv_max": [t["suv_max"] for t in stats], "tumours": stats, **extra,
        "ct_shape": list(ct_grid.shape), "ct_spacing_mm": [round(v, 4) for v in ct_grid.spacing],
        "pet_shape": list(pet_grid.shape), "pet_spacing_mm": [round(v, 4) for v in pet_grid.spacing],
    }
    log.debug("phantom %s: %d tumours", cid, len(stats))
    return PhantomCase(cid, Volume(ct, ct_grid.affine, {"modality": "CT", "units": "HU"}),
                       Volume(pet, pet_grid.affine, {"modality": "PT", "units": "SUV"}),
                       Volume(label, ct_grid.affine, {"modality": "label"}), info)


def case_seed(cohort_seed: int, index: int) -> int:
    """Seed of case ``index`` of a cohort drawn with ``cohort_seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(cohort_seed), int(index)]).generate_state(1)[0])


def write_cohort(kind: str, n: int, seed: int, out: str | Path, size: str = "full",
                 healthy_fraction: float = 0.0) -> list[dict[str, Any]]:
    """Write ``n`` cases to ``out/<case_id>/{ct,pet,label}.nii.gz`` plus ``out/cases.json``.

    Exactly ``round(healthy_fraction * n)`` cases are healthy (which ones is drawn from ``seed``).
    Returns the per-case entries of cases.json.
    """
    from autopaint.imaging.io import write_volume

    if n < 1:
        raise InvalidInput("n must be >= 1", code="bad_cohort_size")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise InvalidInput("healthy fraction must be in [0, 1]", code="bad_healthy_fraction")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    healthy = set(np.random.default_rng(seed).permutation(n)[: int(round(healthy_fraction * n))].tolist())
    entries = []
    for i in range(n):
        cid = f"{kind}_s{seed}_{i:03d}"
        case = generate_case(kind, case_seed(seed, i), size, i in healthy, case_id=cid)
        d = out / cid
        d.mkdir(exist_ok=True)
        write_volume(case.ct, d / "ct.nii.gz", dtype=np.int16)
        write_volume(case.pet, d / "pet.nii.gz", dtype=np.float32)
        write_volume(case.label, d / "label.nii.gz", dtype=np.uint8)
        entries.append(case.info)
        log.info("phantom %s (%d/%d): %d tumour(s)", cid, i + 1, n, case.info["n_tumours"])
    doc = {"kind": kind, "seed": int(seed), "n": n, "size": size, "healthy_fraction": healthy_fraction,
           "cases": entries}
    tmp = out / "cases.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "cases.json")
    return entries
