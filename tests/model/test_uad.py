"""Dense AE / VAE baselines: shapes, a few training steps lower the loss, residual maps, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autopaint.errors import ModelError
from autopaint.model.uad import (
    UADConfig,
    build_uad,
    load_uad,
    reconstruct,
    residual_maps,
    save_uad,
    train_uad,
    uad_loss,
)


def _images(n: int = 12, c: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth synthetic 'healthy slices': a bright disc of random radius on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, c, size, size), dtype=np.float32)
    for i in range(n):
        r = rng.uniform(size * 0.2, size * 0.4)
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r**2).astype(np.float32)
        for ch in range(c):
            out[i, ch] = 0.2 + 0.5 * disc * (ch + 1) / c
    return out


@pytest.mark.parametrize("kind", ["dae", "vae"])
@pytest.mark.parametrize(("channels", "size"), [(1, 32), (2, 64)])
def test_shapes(kind: str, channels: int, size: int) -> None:
    cfg = UADConfig(kind=kind, in_channels=channels, size=size, base_channels=8, latent_dim=16)
    model = build_uad(cfg).eval()
    out = model(torch.rand(3, channels, size, size))
    assert out["recon"] is not None and out["recon"].shape == (3, channels, size, size)
    recon = out["recon"].detach()
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert out["mu"] is not None and out["mu"].shape == (3, 16)
    assert (out["logvar"] is not None) == (kind == "vae")


def test_wrong_input_shape_raises() -> None:
    model = build_uad(UADConfig(in_channels=2, size=32, base_channels=4, latent_dim=8))
    with pytest.raises(ModelError):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ModelError):
        UADConfig(size=48)


def test_vae_kl_term() -> None:
    model = build_uad(UADConfig(kind="vae", in_channels=1, size=32, base_channels=4, latent_dim=8)).train()
    x = torch.rand(4, 1, 32, 32)
    losses = {k: v.detach() for k, v in uad_loss(model(x), x, kl_weight=1.0).items()}
    assert float(losses["kl"]) > 0.0
    assert float(losses["total"]) == pytest.approx(float(losses["rec"] + losses["kl"]), rel=1e-5)


@pytest.mark.parametrize("kind", ["dae", "vae"])
def test_training_lowers_loss(kind: str) -> None:
    imgs = _images()
    model = build_uad(UADConfig(kind=kind, in_channels=2, size=32, base_channels=8, latent_dim=16))
    before = float(np.mean(np.abs(reconstruct(model, imgs) - imgs)))
    # step-bounded (the time bound is only a safety net on a loaded CPU)
    summary = train_uad(model, imgs, max_seconds=120, max_steps=30, batch_size=6, lr=3e-3, seed=1, val_images=imgs)
    assert summary.steps == 30
    assert summary.val_l1 is not None and summary.val_l1 < 0.6 * before
    assert summary.last_loss < summary.first_loss


def test_residual_maps_shape_and_ooi() -> None:
    imgs = _images(n=4, c=2, size=32)
    model = build_uad(UADConfig(in_channels=2, size=32, base_channels=4, latent_dim=8))
    ooi = np.zeros((4, 32, 32), dtype=bool)
    ooi[:, 8:24, 8:24] = True
    res = residual_maps(model, imgs, ooi)
    assert res.shape == (4, 32, 32) and res.dtype == np.float32
    assert np.all(res[~ooi] == 0.0)
    rec = reconstruct(model, imgs)
    np.testing.assert_allclose(res[ooi], np.abs(imgs - rec).mean(axis=1)[ooi], atol=1e-6)
    res_max = residual_maps(model, imgs, channel_reduce="max")
    assert np.all(res_max >= residual_maps(model, imgs) - 1e-7)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    imgs = _images(n=4, c=1, size=32)
    model = build_uad(UADConfig(kind="vae", in_channels=1, size=32, base_channels=4, latent_dim=8))
    summary = train_uad(model, imgs, max_seconds=10, max_steps=3, batch_size=2)
    path = save_uad(model, tmp_path / "vae.pt", preprocessing={"modality": "pet"}, training_summary=summary)
    loaded = load_uad(path)
    assert loaded.cfg == model.cfg
    np.testing.assert_allclose(reconstruct(loaded, imgs), reconstruct(model, imgs), atol=1e-6)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["training_summary"]["steps"] == 3 and ckpt["preprocessing"] == {"modality": "pet"}
