"""Healthy-slice training sets (paper §2.3: the inpainting network learns from healthy slices only).

:func:`build_dataset` preprocesses every case of a cohort (:func:`autopaint.imaging.preprocess.prepare_case`),
computes its organ-of-interest mask (:func:`autopaint.imaging.organs.ooi_mask`), and keeps the axial
slices that are *healthy* — no tumour voxel within ``margin_slices`` slices — and show some organ
(>= ``min_ooi_fraction`` of the model image). Patients are split into train / val / test (no patient
in two splits; tumour and tumour-free patients are spread proportionally; deterministic by seed);
the tumour slices of test patients go to ``test_tumour.npz`` with their labels.

Output (see docs/INTERFACES.md): ``manifest.json`` and ``{train,val,test,test_tumour}.npz`` with
``images`` uint8 (n, C, N, N) (0..255 = [0, 1]; channel 0 CT, 1 PET), ``ooi`` uint8 (n, N, N),
``case_ids`` str (n,), ``slice_index`` int32 (n,) = index k into ``PreparedCase.images`` (canonical
axial order, inferior -> superior), plus ``labels`` uint8 (n, N, N) in test_tumour. The npz files are
written with fixed zip timestamps so that building twice gives byte-identical files and checksums.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.data.cohorts import CaseRef, discover, load_case
from autopaint.errors import InvalidInput
from autopaint.fsutil import atomic_write_bytes, sha256_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Slices of one split: ``images`` float32 (n, C, N, N) in [0, 1], ``ooi`` bool (n, N, N),
    ``case_ids`` str (n,), ``slice_index`` int (n,), ``labels`` bool (n, N, N) or None."""

    images: np.ndarray
    ooi: np.ndarray
    case_ids: np.ndarray
    slice_index: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def split_patients(refs: list[CaseRef], has_tumour: dict[str, bool], fractions: tuple[float, float, float],
                   seed: int) -> dict[str, str]:
    """case_id -> split. Counts follow ``fractions`` (val/test get >= 1 patient when their fraction > 0
    and there are enough patients); tumour and tumour-free patients are interleaved before cutting so
    each split gets a proportional share. Deterministic for ``seed``."""
    f = np.asarray(fractions, float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0, atol=1e-6):
        raise InvalidInput(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}",
                           code="bad_split")
    n = len(refs)
    rng = np.random.default_rng(seed)
    keyed = []
    for group in (True, False):
        ids = sorted(r.case_id for r in refs if has_tumour[r.case_id] == group)
        for rank, i in enumerate(rng.permutation(len(ids))):
            keyed.append(((rank + 0.5) / len(ids), not group, ids[i]))
    order = [cid for _, _, cid in sorted(keyed)]
    n_test = max(1, int(round(f[2] * n))) if f[2] > 0 and n >= 2 else int(round(f[2] * n))
    n_val = max(1, int(round(f[1] * n))) if f[1] > 0 and n >= 3 else int(round(f[1] * n))
    n_test, n_val = min(n_test, n), min(n_val, max(n - n_test, 0))
    out = {cid: "test" for cid in order[:n_test]}
    out.update({cid: "val" for cid in order[n_test:n_test + n_val]})
    out.update({cid: "train" for cid in order[n_test + n_val:]})
    return out


def healthy_slices(tumour_per_slice: np.ndarray, ooi_fraction: np.ndarray, margin: int,
                   min_ooi_fraction: float) -> np.ndarray:
    """Indices k with no tumour in slices [k - margin, k + margin] and ooi_fraction[k] >= the minimum.
    ``tumour_per_slice`` bool (K,), ``ooi_fraction`` float (K,) in [0, 1]."""
    t = np.asarray(tumour_per_slice, bool)
    near = t.copy()
    for d in range(1, margin + 1):
        near[d:] |= t[:-d]
        near[:-d] |= t[d:]
    return np.nonzero(~near & (np.asarray(ooi_fraction) >= min_ooi_fraction))[0]


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Deterministic compressed npz (fixed zip timestamps), written atomically; returns its sha256."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=6)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _case_slices(ref: CaseRef, params: Any, preset: str, margin: int, min_ooi: float,
                 keep_tumour: bool) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Preprocess one case -> (manifest entry, healthy arrays, tumour arrays or None)."""
    from autopaint.imaging.organs import ooi_mask
    from autopaint.imaging.preprocess import prepare_case

    case = load_case(ref)
    if "pet" in params.channels and case.pet is None:
        raise InvalidInput(f"case {ref.case_id} has no PET but modality is {params.modality!r}", code="missing_pet")
    if case.ct is None:
        raise InvalidInput(f"case {ref.case_id} has no CT (needed for the organ mask)", code="missing_ct")
    # a PET-only model still uses the CT grid (organ mask, labels): prepare both, keep the PET channel
    prep_params = replace(params, modality="petct") if params.modality == "pet" else params
    prep = prepare_case(case.ct, case.pet if "pet" in params.channels else None, prep_params)
    images = prep.images[:, 1:2] if params.modality == "pet" else prep.images
    ooi = prep.mask_to_model(ooi_mask(case.ct, preset, user_mask=case.organ_mask))
    n = params.size
    ooi_frac = ooi.reshape(ooi.shape[0], -1).sum(axis=1) / float(n * n)
    if case.label is not None:
        lab_can = prep.canonical.to_canonical(case.label.data > 0)
        tumour_k = np.asarray(lab_can.reshape(-1, lab_can.shape[2]).any(axis=0))
    else:
        tumour_k = np.zeros(ooi.shape[0], bool)
    keep = healthy_slices(tumour_k, ooi_frac, margin, min_ooi)
    images8 = np.rint(images * 255.0).astype(np.uint8)
    healthy = {"images": images8[keep], "ooi": ooi[keep].astype(np.uint8), "slice_index": keep.astype(np.int32)}
    tumour: dict[str, np.ndarray] | None = None
    tk = np.nonzero(tumour_k)[0]
    if keep_tumour and tk.size and case.label is not None:
        labels = prep.mask_to_model(case.label.data > 0)[tk]
        tumour = {"images": images8[tk], "ooi": ooi[tk].astype(np.uint8), "slice_index": tk.astype(np.int32),
                  "labels": labels.astype(np.uint8)}
    entry: dict[str, Any] = {"case_id": ref.case_id, "n_slices": int(ooi.shape[0]),
                             "healthy_slices": keep.tolist(), "tumour_slices": tk.tolist(),
                             "has_tumour": bool(tk.size)}
    return entry, healthy, tumour


def _concat(parts: list[tuple[str, dict[str, np.ndarray]]], c: int, n: int, labels: bool) -> dict[str, np.ndarray]:
    keys = ["images", "ooi", "slice_index"] + (["labels"] if labels else [])
    empty: dict[str, np.ndarray] = {"images": np.zeros((0, c, n, n), np.uint8), "ooi": np.zeros((0, n, n), np.uint8),
             "slice_index": np.zeros(0, np.int32), "labels": np.zeros((0, n, n), np.uint8)}
    out: dict[str, np.ndarray] = {k: (np.concatenate([p[k] for _, p in parts]) if parts else empty[k])
                                  for k in keys}
    out["case_ids"] = np.array([cid for cid, p in parts for _ in range(len(p["slice_index"]))] or [], dtype="<U64")
    return out


def build_dataset(cohort_dir: str | Path, preset: str, modality: str, size: int, out: str | Path,
                  margin_slices: int = 2, split: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0,
                  min_ooi_fraction: float = 0.01, ct_window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Build the healthy-slice dataset of a cohort into ``out``; returns the manifest (see module doc)."""
    from autopaint.imaging.preprocess import params_for

    overrides = {"ct_window": tuple(ct_window)} if ct_window is not None else {}
    params = params_for(preset, modality, size, **overrides)
    if margin_slices < 0:
        raise InvalidInput("margin_slices must be >= 0", code="bad_margin")
    refs = discover(cohort_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    healthy: dict[str, dict[str, np.ndarray]] = {}
    tumour: dict[str, dict[str, np.ndarray]] = {}
    for i, ref in enumerate(refs):
        entry, h, t = _case_slices(ref, params, preset, margin_slices, min_ooi_fraction, keep_tumour=True)
        entries[ref.case_id], healthy[ref.case_id] = entry, h
        if t is not None:
            tumour[ref.case_id] = t
        log.info("dataset %s (%d/%d): %d healthy, %d tumour slices of %d", ref.case_id, i + 1, len(refs),
                 len(entry["healthy_slices"]), len(entry["tumour_slices"]), entry["n_slices"])
    assignment = split_patients(refs, {cid: e["has_tumour"] for cid, e in entries.items()}, split, seed)
    c = len(params.channels)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "cohort": str(cohort_dir), "cohort_kind": refs[0].cohort,
        "preset": preset, "modality": modality, "size": int(size), "margin_slices": int(margin_slices),
        "min_ooi_fraction": min_ooi_fraction, "seed": int(seed), "split_fractions": list(split),
        "preprocessing": params.to_dict(),
        "slice_index": "k into PreparedCase.images (canonical axial order, inferior -> superior)",
        "cases": [{**entries[r.case_id], "split": assignment[r.case_id]} for r in refs], "splits": {},
    }
    for name in SPLITS:
        ids = [r.case_id for r in refs if assignment[r.case_id] == name]
        arrays = _concat([(cid, healthy[cid]) for cid in ids], c, params.size, labels=False)
        sha = _write_npz(out / f"{name}.npz", arrays)
        manifest["splits"][name] = {"file": f"{name}.npz", "sha256": sha, "cases": ids,
                                    "n_slices": int(len(arrays["slice_index"])),
                                    "slices": [[str(a), int(b)] for a, b in zip(arrays["case_ids"], arrays["slice_index"],
                                                                                strict=True)]}
    test_ids = [cid for cid in manifest["splits"]["test"]["cases"] if cid in tumour]
    arrays = _concat([(cid, tumour[cid]) for cid in test_ids], c, params.size, labels=True)
    manifest["test_tumour"] = {"file": "test_tumour.npz", "sha256": _write_npz(out / "test_tumour.npz", arrays),
                               "cases": test_ids, "n_slices": int(len(arrays["slice_index"]))}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")
    return manifest


def load_split(directory: str | Path, split: str) -> SliceSet:
    """Load ``train`` | ``val`` | ``test`` | ``test_tumour`` of a built dataset as float images in [0, 1]."""
    path = Path(directory) / f"{split}.npz"
    if split not in (*SPLITS, "test_tumour") or not path.exists():
        raise InvalidInput(f"no split {split!r} in {directory}", code="split_not_found")
    with np.load(path, allow_pickle=False) as z:
        labels = z["labels"].astype(bool) if "labels" in z.files else None
        return SliceSet(images=z["images"].astype(np.float32) / np.float32(255.0), ooi=z["ooi"].astype(bool),
                        case_ids=z["case_ids"], slice_index=z["slice_index"].astype(np.int64), labels=labels)
