"""A small real slice dataset for the model benchmarks: OpenKBP head-and-neck CT (128^3, real).

Writes the docs/INTERFACES.md dataset format (manifest.json + train/val/test npz, uint8 images
(n, 1, 128, 128)) from ``<data_dir>/openkbp-hn-ct``: CT windowed to the ``headneck`` preset
[-200, 200] HU, axial slices ``data[:, :, k]`` that contain body (> 15 % of pixels above -200 HU)
and NO planning-target-volume voxel (healthy slices), patients split 70/10/20 by a seeded shuffle.
The model benchmarks use it so that quality numbers come from real anatomy.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from autopaint.paths import data_dir


def build(out: Path, n_patients: int = 60, seed: int = 0, max_per_patient: int = 60) -> Path:
    if (out / "manifest.json").is_file():
        return out
    src = data_dir() / "openkbp-hn-ct"
    pts = sorted(p for p in src.iterdir() if (p / "ct.nii.gz").is_file())[:n_patients]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pts))
    n_tr, n_va = int(0.7 * len(pts)), int(0.1 * len(pts))
    splits = {"train": order[:n_tr], "val": order[n_tr : n_tr + n_va], "test": order[n_tr + n_va :]}
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"source": str(src), "params": {"preset": "headneck", "modality": "ct", "size": 128,
                                                     "ct_window": [-200.0, 200.0], "suv_window": [0.0, 12.0],
                                                     "quantize_8bit": True}, "splits": {}}
    for split, idx in splits.items():
        imgs, cases, ks = [], [], []
        for i in idx:
            p = pts[int(i)]
            ct = np.asarray(nib.load(p / "ct.nii.gz").dataobj, dtype=np.float32)
            ptv = np.zeros(ct.shape, bool)
            for f in p.glob("PTV*.nii.gz"):
                ptv |= np.asarray(nib.load(f).dataobj) > 0
            win = np.clip((ct + 200.0) / 400.0, 0, 1)
            good = [k for k in range(ct.shape[2]) if not ptv[:, :, k].any() and (ct[:, :, k] > -200).mean() > 0.15]
            if len(good) > max_per_patient:
                good = [good[j] for j in np.linspace(0, len(good) - 1, max_per_patient).round().astype(int)]
            for k in good:
                imgs.append(np.round(win[:, :, k] * 255).astype(np.uint8))
                cases.append(p.name)
                ks.append(k)
        images = np.stack(imgs)[:, None] if imgs else np.zeros((0, 1, 128, 128), np.uint8)
        np.savez(out / f"{split}.npz", images=images, ooi=np.ones((len(images), 128, 128), np.uint8),
                 case_ids=np.array(cases), slice_index=np.array(ks, dtype=np.int64))
        manifest["splits"][split] = sorted(set(cases))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
