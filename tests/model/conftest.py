"""Fixtures for the model tests: a tiny slice dataset in the docs/INTERFACES.md format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autopaint.model.networks import ModelConfig

TINY = dict(size=32, depth=3, base_width=8, max_width=16, kernel_sizes=(5, 3, 3))


def tiny_config(arch: str = "gconv_lap", in_channels: int = 2, **kw: object) -> ModelConfig:
    return ModelConfig(arch=arch, in_channels=in_channels, **{**TINY, **kw})  # type: ignore[arg-type]


def _slices(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth two-channel 'anatomy': a body ellipse (ch 0) and a few warm blobs (ch 1), uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 2, size, size), np.uint8)
    for i in range(n):
        a, b = rng.uniform(0.3, 0.45, 2)
        body = ((yy - 0.5) / a) ** 2 + ((xx - 0.5) / b) ** 2 <= 1
        ct = 0.2 + 0.5 * body + 0.1 * np.sin(6 * xx + i)
        pet = np.zeros_like(ct)
        for _ in range(3):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            pet += 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
        out[i, 0] = np.clip(ct * 255, 0, 255)
        out[i, 1] = np.clip(pet * body * 255, 0, 255)
    return out


def write_dataset(root: Path, size: int = 32, n_train: int = 24, n_val: int = 8, channels: int = 2) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", 4)):
        imgs = _slices(rng, n, size)[:, :channels]
        np.savez(
            root / f"{split}.npz",
            images=imgs,
            ooi=np.ones((n, size, size), np.uint8),
            case_ids=np.array([f"{split}{i % 3}" for i in range(n)]),
            slice_index=np.arange(n),
        )
    modality = "petct" if channels == 2 else "ct"
    manifest = {"params": {"preset": "thorax", "modality": modality, "size": size, "ct_window": [-1000, 500],
                           "suv_window": [0.0, 12.0], "quantize_8bit": True}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny nets run fastest single-threaded; the shared 2-core machine thrashes with 2 threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds")


@pytest.fixture()
def make_cfg():  # type: ignore[no-untyped-def]
    return tiny_config


@pytest.fixture()
def make_dataset():  # type: ignore[no-untyped-def]
    return write_dataset
