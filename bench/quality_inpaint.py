"""Models for bench/quality.py (train or reuse) and the inpainting-quality tables (paper Tables 1-2).

Inpainting quality: held-out test patients' healthy slices (``test.npz`` of the slice dataset), one
fixed, seeded irregular hole per image (``model/holes.fixed_masks``: the training generator with a
fixed seed), the composite compared with the original on the paper's 0-255 scale
(``model/evaluate.image_metrics``: MSE, PSNR, SSIM) for the CT channel, the PET channel and both
("Multi") of the PET/CT models - the layout of the paper's Tables 1 and 2. Classical baseline:
scikit-image's biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``) on the same holes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from skimage.restoration import inpaint_biharmonic

from autopaint.model.evaluate import image_metrics
from autopaint.model.holes import fixed_masks
from autopaint.model.inpainter import Inpainter
from autopaint.model.train import TrainConfig, train
from autopaint.model.uad import DenseAutoencoder, UADConfig, build_uad, load_uad, save_uad, train_uad
from autopaint.model_cards import DEFAULT_MODEL
from autopaint.paths import models_dir

log = logging.getLogger(__name__)

CHANNEL_SETS = {"CT": [0], "PET": [1], "Multi": [0, 1]}


SHIPPED = {"thorax": DEFAULT_MODEL, "headneck": "headneck-petct-gconvlap-128", "ibsi-sts": "ibsi-petct-gconvlap-128"}
ARCH_SLUG = {"gconv_lap": "gconvlap", "gconv": "gconv", "pconv": "pconv"}


def shipped_name(cohort: str, arch: str) -> str | None:
    """The registered PET/CT model of ``arch`` for ``cohort``: the shipped GconvLap, or its Gconv /
    Pconv sibling trained with the same recorded configuration (bench/archs.py)."""
    name = SHIPPED.get(cohort)
    return None if name is None else name.replace(ARCH_SLUG["gconv_lap"], ARCH_SLUG[arch])


def shipped_model(cohort: str, modality: str, arch: str, size: int, held_out: set[str],
                  test_ids: set[str] | frozenset[str] = frozenset()) -> Path | None:
    """A shipped PET/CT model of ``models/`` for this cohort and arch, when it fits and does not leak.

    It fits when its size and modality match; it leaks when a patient it was trained on
    (``training_summary.split_case_ids["train"]``) is one of ``held_out`` (our val + test patients), or
    a patient it was validated on (checkpoint selection) is one of our ``test_ids``.
    """
    name = shipped_name(cohort, arch) if arch in ARCH_SLUG else None
    d = models_dir() / name if name else None
    if d is None or modality != "petct" or not (d / "model.pt").is_file():
        return None
    try:
        inp = Inpainter.load(d, device="cpu")
    except Exception as exc:  # a broken shipped model must not stop the benchmark: retrain instead
        log.warning("shipped model %s unusable (%s); training one", name, exc)
        return None
    split = inp.training_summary.get("split_case_ids") or {}
    leak = (set(split.get("train", [])) & held_out) | (set(split.get("val", [])) & set(test_ids))
    if leak:
        log.warning("shipped model %s has seen our held-out cases %s; training one", name, sorted(leak))
        return None
    return d if inp.size == size and inp.modality == "petct" else None


def ensure_inpainting_model(work: Path, dataset: Path, cohort: str, arch: str, modality: str, seconds: float,
                            epochs: int, reuse_shipped: bool, size: int, device: str = "cpu",
                            held_out: frozenset[str] = frozenset(), tag: str = "",
                            test_ids: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Reuse (shipped model, or a model already in ``work``) or train one; returns its info dict.

    ``held_out``: our val + test case ids, ``test_ids``: our test ids (for the shipped model's leak check)."""
    if reuse_shipped:
        shipped = shipped_model(cohort, modality, arch, size, set(held_out), set(test_ids))
        if shipped is not None:
            inp = Inpainter.load(shipped, device=device)
            ts = inp.training_summary
            return {"path": str(shipped), "source": "shipped", "arch": arch, "modality": modality,
                    "steps": ts.get("steps"), "train_seconds": ts.get("wall_time_s"),
                    "val_psnr": (ts.get("val_metrics") or {}).get("psnr"), "data": ts.get("data_dir")}
    out = work / "models" / f"{cohort}-{modality}-{arch}{tag}"
    if not (out / "model.pt").is_file():
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        cfg = TrainConfig(dataset=str(dataset), out=str(out), arch=arch, modality=modality, preset="demo",
                          epochs=epochs, time_budget_min=seconds / 60.0, device=device, seed=0, max_val=32)
        summary = train(cfg, progress=False)
        log.info("trained %s %s %s in %.0fs", cohort, modality, arch, time.perf_counter() - t0)
        source = "trained"
    else:
        source = "cached"
    inp = Inpainter.load(out, device=device)
    summary = inp.training_summary
    return {"path": str(out), "source": source, "arch": arch, "modality": modality, "steps": summary.get("steps"),
            "train_seconds": summary.get("wall_time_s"), "val_psnr": (summary.get("val_metrics") or {}).get("psnr"),
            "data": summary.get("data_dir")}


def ensure_uad_model(work: Path, cohort: str, kind: str, train_images: np.ndarray, val_images: np.ndarray,
                     seconds: float, size: int, preprocessing: dict[str, Any],
                     width: int = 16, device: str = "cpu") -> tuple[DenseAutoencoder, dict[str, Any]]:
    """Train (or reload from ``work``) a dAE / VAE on the cohort's PET/CT healthy training slices."""
    path = work / "models" / f"{cohort}-petct-{kind}.pt"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        return load_uad(path, device=device), {**json.loads(info_path.read_text()), "source": "cached"}
    model, info = train_uad_model(path, kind, train_images, val_images, seconds, size, preprocessing, width, device)
    info_path.write_text(json.dumps(info))
    return model, info


def train_uad_model(path: Path, kind: str, train_images: np.ndarray, val_images: np.ndarray, seconds: float,
                    size: int, preprocessing: dict[str, Any], width: int = 16, device: str = "cpu"
                    ) -> tuple[DenseAutoencoder, dict[str, Any]]:
    """Train a fresh dAE / VAE (``kind``) for ``seconds`` on healthy slices ``(n, C, N, N)`` and save it
    to ``path`` (``model.uad.save_uad``); returns the model and its info (steps, seconds, losses, val L1
    on at most 64 ``val_images``). The one training recipe of the UAD baselines (bench/quality.py,
    bench/accuracy_uad.py): Adam 1e-3, batch 16, seed 0, ``width`` channels in the first stage."""
    model = build_uad(UADConfig(kind=kind, in_channels=train_images.shape[1], size=size, base_channels=width,
                                max_channels=8 * width))
    summary = train_uad(model, train_images, max_seconds=seconds, batch_size=16, lr=1e-3, seed=0,
                        val_images=val_images[:64] if len(val_images) else None, device=device)
    save_uad(model, path, preprocessing=preprocessing, training_summary=summary)
    info = {"path": str(path), "source": "trained", "arch": kind, "modality": preprocessing.get("modality", "petct"),
            "steps": summary.steps, "epochs": summary.epochs, "train_seconds": summary.seconds,
            "loss_first": summary.first_loss, "loss_last": summary.last_loss, "val_l1": summary.val_l1}
    return model, info


def test_holes(images: np.ndarray, max_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An evenly spaced subset of at most ``max_images`` test images and their fixed seeded masks."""
    if len(images) > max_images:
        idx = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        images = images[idx]
    return images, fixed_masks(len(images), images.shape[-1], seed)


def _metrics_by_channel(pred: np.ndarray, gt: np.ndarray) -> dict[str, dict[str, list[float]]]:
    out = {}
    for name, ch in CHANNEL_SETS.items():
        if max(ch) >= gt.shape[1]:
            continue
        m = image_metrics(pred[:, ch], gt[:, ch])
        out[name] = {k: [float(x) for x in v] for k, v in m.items()}
    return out


def inpainting_quality(model_dirs: dict[str, str], images: np.ndarray, masks: np.ndarray,
                       device: str = "cpu") -> dict[str, Any]:
    """Per-image MSE/PSNR/SSIM by channel for each model and for biharmonic inpainting.

    ``images`` float32 ``(n, 2, N, N)`` PET/CT in [0, 1]; ``masks`` ``(n, 1, N, N)`` 1 = valid.
    Returns ``{method: {"CT"|"PET"|"Multi": {"mse": [...], "psnr": [...], "ssim": [...]}}, "_seconds": {...}}``.
    """
    out: dict[str, Any] = {"_seconds": {}}
    for name, path in model_dirs.items():
        t0 = time.perf_counter()
        inp = Inpainter.load(path, device=device)
        comp = inp.inpaint(images, masks)
        out[name] = _metrics_by_channel(comp, images)
        out["_seconds"][name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bih = np.stack([
        np.moveaxis(inpaint_biharmonic(np.moveaxis(img, 0, -1), m[0] < 0.5, channel_axis=-1), -1, 0)
        for img, m in zip(images, masks, strict=True)
    ]).astype(np.float32)
    out["Biharmonic"] = _metrics_by_channel(bih, images)
    out["_seconds"]["Biharmonic"] = time.perf_counter() - t0
    return out
