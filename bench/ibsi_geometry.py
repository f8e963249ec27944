"""PET -> CT resampling check on the real IBSI soft-tissue-sarcoma FDG-PET/CT (20 cases).

For every case the PET (SUV, own grid) is resampled onto the CT grid with the third-order B-spline
used by ``prepare_case`` (negatives clamped to 0); the tumour SUVmax inside CT_mask on the CT grid
must be within +-10 % of the SUVmax inside PET_mask on the native PET grid. Also reports the global
SUVmax of the volume (is the tumour the hottest spot?), how much of each slice the tumour fills in
these 5 cm crops (the healthy context an inpainting network has to work from) and, when a real CT in
``totalseg-ct`` contains lung, the automatic lung-field volume.

Usage: ``.venv/bin/python bench/ibsi_geometry.py [--data DIR] [--out bench/results/ibsi_geometry.md]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from autopaint.imaging.io import read_dicom_series, read_volume
from autopaint.imaging.organs import body_mask, lung_mask, mask_volume_ml
from autopaint.imaging.preprocess import resample_to
from autopaint.paths import data_dir

TOLERANCE = 0.10
TEST_IDS = ("STS_003", "STS_005", "STS_007", "STS_020")  # bench/results/accuracy_ibsi.md


def case_row(case: Path) -> dict[str, float | str]:
    """Numbers for one ``STS_xxx`` folder (SUV, ml, seconds)."""
    ct = read_volume(case / "CT_image.nii.gz")
    pet = read_volume(case / "PET_image.nii.gz")
    ct_mask = read_volume(case / "CT_mask.nii.gz").data > 0.5
    pet_mask = read_volume(case / "PET_mask.nii.gz").data > 0.5
    t0 = time.perf_counter()
    on_ct = resample_to(pet, ct, order=3)
    np.maximum(on_ct.data, 0.0, out=on_ct.data)
    seconds = time.perf_counter() - t0
    native = float(pet.data[pet_mask].max())
    resampled = float(on_ct.data[ct_mask].max())
    return {
        "case": case.name,
        "ct_shape": "x".join(str(s) for s in ct.shape),
        "pet_mm": f"{pet.spacing[0]:.2f}",
        "suvmax_pet_mask_native": native,
        "suvmax_ct_mask_resampled": resampled,
        "ratio": resampled / native,
        "suvmax_global_native": float(pet.data.max()),
        "suvmax_global_resampled": float(on_ct.data.max()),
        "tumour_ml_ct": mask_volume_ml(ct_mask, ct),
        "tumour_ml_pet": mask_volume_ml(pet_mask, pet),
        "resample_s": seconds,
    }


def crop_row(case: Path, split: dict[str, str]) -> dict[str, float | str]:
    """How much of the 5 cm crop the tumour fills: in-plane field of view, slices with/without
    tumour, the tumour's share of the body (`body_mask`) on its slices, its largest
    in-plane equivalent diameter and that diameter over the field of view's width."""
    ct = read_volume(case / "CT_image.nii.gz")
    tumour = read_volume(case / "CT_mask.nii.gz").data > 0.5
    body = body_mask(ct) | tumour
    sp = ct.spacing
    on = np.flatnonzero(tumour.any(axis=(0, 1)))
    t_area = tumour.sum(axis=(0, 1))[on].astype(np.float64)
    share = t_area / np.maximum(body.sum(axis=(0, 1))[on], 1)
    fov = min(ct.shape[0] * sp[0], ct.shape[1] * sp[1])
    diam = 2.0 * np.sqrt(t_area.max() * sp[0] * sp[1] / np.pi)
    return {
        "case": case.name,
        "split": split.get(case.name, "-"),
        "fov_mm": f"{ct.shape[0] * sp[0]:.0f}x{ct.shape[1] * sp[1]:.0f}",
        "slices_tumour": int(on.size),
        "slices_without": int(ct.shape[2] - on.size),
        "tumour_share_of_body_median": float(np.median(share)),
        "tumour_share_of_body_max": float(share.max()),
        "tumour_diameter_mm": float(diam),
        "diameter_over_fov": float(diam / fov),
    }


def lung_rows(folder: Path) -> list[dict[str, float | str]]:
    """Lung-field volume on each real CT of ``totalseg-ct`` (NIfTI and the DICOM series)."""
    rows: list[dict[str, float | str]] = []
    cts = []
    nii = folder / "example_ct_sm.nii.gz"
    if nii.exists():
        cts.append(("example_ct_sm.nii.gz", read_volume(nii)))
    dcm = folder / "example_ct_dicom"
    if dcm.is_dir():
        cts.append(("example_ct_dicom/", read_dicom_series(dcm)[0]))
    for name, ct in cts:
        t0 = time.perf_counter()
        try:
            lung = lung_mask(ct)
            lung_ml: float | str = mask_volume_ml(lung, ct)
        except Exception as exc:  # report, do not hide: e.g. empty_organ_mask on a non-thorax CT
            lung_ml = f"{type(exc).__name__}: {exc}"
        rows.append({"ct": name, "shape": "x".join(str(s) for s in ct.shape),
                     "spacing_mm": "x".join(f"{s:.2f}" for s in ct.spacing),
                     "body_ml": mask_volume_ml(body_mask(ct), ct),
                     "air_lt_-400_in_body_ml": mask_volume_ml((ct.data < -400) & body_mask(ct), ct),
                     "lung_ml": lung_ml, "seconds": time.perf_counter() - t0})
    return rows


def _fmt(v: float | str) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict[str, float | str]]) -> list[str]:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ibsi_geometry.md")
    args = ap.parse_args()
    cases = sorted(p for p in (args.data / "ibsi-sts").glob("STS_*") if p.is_dir())
    rows = [case_row(c) for c in cases]
    ratios = np.array([float(r["ratio"]) for r in rows])
    ok = bool(np.all(np.abs(ratios - 1.0) <= TOLERANCE))
    hottest = sum(abs(float(r["suvmax_global_native"]) - float(r["suvmax_pet_mask_native"])) < 1e-6
                  for r in rows)
    lines = ["# IBSI STS: PET -> CT B-spline resampling keeps the tumour SUVmax", "",
             f"{len(rows)} cases from `{args.data / 'ibsi-sts'}`; PET (SUV) resampled onto the CT grid "
             "with `resample_to(order=3)` and clamped at 0.", "",
             "ratio = SUVmax(resampled PET inside CT_mask) / SUVmax(native PET inside PET_mask); "
             f"required within +-{TOLERANCE:.0%} for every case.", ""]
    lines += _table(rows)
    lines += ["", f"ratio: min {ratios.min():.3f}, max {ratios.max():.3f}, mean {ratios.mean():.3f}; "
              f"all within +-{TOLERANCE:.0%}: **{ok}**",
              f"tumour SUVmax is the volume's global SUVmax (native PET) in {hottest}/{len(rows)} cases.",
              ""]
    card = json.loads((Path(__file__).resolve().parents[1] / "models" / "ibsi-petct-gconvlap-128" / "card.json")
                      .read_text())
    split = {c: name for name, ids in card["split"].items() for c in ids}
    split.update({c: "test" for c in TEST_IDS})
    crops = [crop_row(c, split) for c in cases]
    med = np.array([float(r["tumour_share_of_body_median"]) for r in crops])
    lines += ["## The 5 cm crop: how much of each slice the tumour fills", "",
              "Body = `body_mask` (CT > -500 HU, opened 3 mm, largest component, holes filled) plus the tumour; share = tumour area / body "
              "area on each slice with tumour; diameter = the equivalent diameter of the tumour's largest "
              "slice. split: the IBSI model card's train/val and the test patients of `accuracy_ibsi.md`.", ""]
    lines += _table(crops)
    lines += ["", f"median tumour share of the body on tumour slices: {np.median(med):.2f} "
              f"(range {med.min():.2f}-{med.max():.2f}); the inpainting network sees healthy tissue only in the "
              f"{int(np.sum([int(r['slices_without']) for r in crops]))} slices without tumour of these "
              f"{len(crops)} crops (5 cm above and below each tumour).", ""]
    lung = lung_rows(args.data / "totalseg-ct")
    if lung:
        lines += ["## Lung field on the real CTs of totalseg-ct", ""] + _table(lung) + [""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
