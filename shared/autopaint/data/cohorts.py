"""One interface over the cohorts autopaint trains and evaluates on.

Supported folders (detected by :func:`discover`):

- **phantom**: written by :func:`autopaint.data.phantom.write_cohort` (``cases.json`` +
  ``<case>/{ct,pet,label}.nii.gz``); PET in SUV on its own grid, label on the CT grid.
- **ibsi-sts**: ``STS_0NN/{CT_image,PET_image,CT_mask}.nii.gz`` — CT in HU, PET already in SUV on its
  own grid, ``CT_mask`` = gross tumour on the CT grid.
- **openkbp-hn-ct**: ``pt_N/ct.nii.gz`` (CT only, 128^3) with the radiotherapy targets
  ``PTV70/PTV63/PTV56.nii.gz`` (tumour plus margin) whose union is used as the label; no PET.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autopaint.errors import InvalidInput
from autopaint.imaging.volume import Volume


@dataclass(frozen=True)
class CaseRef:
    """Where one case's files are. ``extra_label_paths`` are unioned into the label (each put on the
    CT grid from its own header); ``suv``: PET values are SUV."""

    case_id: str
    cohort: str
    ct_path: Path | None
    pet_path: Path | None
    label_path: Path | None
    organ_mask_path: Path | None = None
    suv: bool = True
    extra_label_paths: tuple[Path, ...] = ()


@dataclass(frozen=True, eq=False)
class Case:
    """A loaded case: ``ct`` (HU, float32), ``pet`` (SUV, float32, own grid), ``label`` (uint8 0/1 on
    the CT grid, or None), ``organ_mask`` (uint8 on the CT grid, or None)."""

    case_id: str
    ct: Volume | None
    pet: Volume | None
    label: Volume | None
    organ_mask: Volume | None
    suv: bool


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _opt(path: Path) -> Path | None:
    return path if path.exists() else None


def discover(path: str | Path) -> list[CaseRef]:
    """Cases of a phantom, ibsi-sts or openkbp-hn-ct folder, sorted by case id (natural order)."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidInput(f"cohort folder not found: {root}", code="cohort_not_found")
    if (root / "cases.json").exists():
        doc = json.loads((root / "cases.json").read_text())
        ids = [c["case_id"] for c in doc["cases"]]
        refs = [CaseRef(cid, "phantom", root / cid / "ct.nii.gz", root / cid / "pet.nii.gz",
                        root / cid / "label.nii.gz") for cid in ids]
        missing = [r.case_id for r in refs if not (r.ct_path and r.ct_path.exists())]
        if missing:
            raise InvalidInput(f"phantom cohort {root} lacks files of {missing[:3]}", code="cohort_incomplete")
        return refs
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: _natural(d.name))
    if any((d / "CT_image.nii.gz").exists() for d in dirs):
        return [CaseRef(d.name, "ibsi-sts", d / "CT_image.nii.gz", _opt(d / "PET_image.nii.gz"),
                        _opt(d / "CT_mask.nii.gz")) for d in dirs if (d / "CT_image.nii.gz").exists()]
    if any((d / "ct.nii.gz").exists() and list(d.glob("PTV*.nii.gz")) for d in dirs):
        refs = []
        for d in dirs:
            if not (d / "ct.nii.gz").exists():
                continue
            ptvs = tuple(sorted(d.glob("PTV*.nii.gz")))
            refs.append(CaseRef(d.name, "openkbp-hn-ct", d / "ct.nii.gz", None, ptvs[0] if ptvs else None,
                                suv=False, extra_label_paths=ptvs[1:]))
        return refs
    raise InvalidInput(f"{root} is not a phantom, ibsi-sts or openkbp-hn-ct folder", code="unknown_cohort")


def _on_ct(vol: Volume, ct: Volume | None) -> Volume:
    """A label/mask as uint8 on the CT grid (its own grid when there is no CT)."""
    from autopaint.imaging.resample import mask_on_grid

    if ct is None:
        return vol.with_data((np.asarray(vol.data) > 0.5).astype(np.uint8))
    return ct.with_data(mask_on_grid(vol, ct).astype(np.uint8))


def load_case(ref: CaseRef) -> Case:
    """Read a case; the label (union of all label files, > 0) is returned on the CT grid as uint8."""
    from autopaint.imaging.io import read_volume
    ct = read_volume(ref.ct_path) if ref.ct_path else None
    pet = read_volume(ref.pet_path) if ref.pet_path else None
    label = None
    paths = [p for p in (ref.label_path, *ref.extra_label_paths) if p is not None]
    for p in paths:
        lab = _on_ct(read_volume(p, dtype=np.float32), ct)
        label = lab if label is None else label.with_data(label.data | lab.data)
    organ = None
    if ref.organ_mask_path is not None:
        organ = _on_ct(read_volume(ref.organ_mask_path, dtype=np.float32), ct)
    return Case(ref.case_id, ct, pet, label, organ, ref.suv)
