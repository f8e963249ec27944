from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autopaint.errors import InvalidInput, ModelError
from autopaint.model.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file
from autopaint.model.holes import fixed_masks
from autopaint.model.inpainter import Inpainter
from autopaint.model.losses import InpaintingLoss, LossWeights
from autopaint.model.networks import build_network, encoder_batchnorms
from autopaint.model.train import TrainConfig, set_phase, train, train_step
from autopaint.model_cards import list_cards, resolve_weights

TINY = {"depth": 3, "base_width": 8, "max_width": 16, "kernel_sizes": (5, 3, 3)}


def _cfg(ds: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict = dict(dataset=str(ds), out=str(out), preset="demo", epochs=2, batch_size=8, device="cpu",
                      perceptual="off", max_val=8, model_overrides=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


def test_phase2_freezes_encoder_bn_only(make_cfg) -> None:
    torch.manual_seed(0)
    net = build_network(make_cfg("gconv_lap", 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss = InpaintingLoss(LossWeights(), None)
    x = torch.rand(4, 2, 32, 32)
    m = torch.from_numpy(fixed_masks(4, 32))
    set_phase(net, opt, 1, _cfg(Path("."), Path(".")))
    enc_bn = encoder_batchnorms(net)
    assert enc_bn and all(bn.training for bn in enc_bn)
    before_p1 = [bn.running_mean.clone() for bn in enc_bn]
    train_step(net, loss, opt, x, m, torch.device("cpu"))
    assert any(not torch.equal(b, bn.running_mean) for b, bn in zip(before_p1, enc_bn, strict=True))

    set_phase(net, opt, 2, _cfg(Path("."), Path(".")))
    assert opt.param_groups[0]["lr"] == 5e-5
    dec_bn = [mod for mod in net.decoder.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    enc_before = [bn.running_mean.clone() for bn in enc_bn]
    dec_before = [bn.running_mean.clone() for bn in dec_bn]
    w_before = net.encoder[1].conv.weight.detach().clone()
    train_step(net, loss, opt, x, m, torch.device("cpu"))
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(enc_before, enc_bn, strict=True))
    assert all(not torch.equal(b, bn.running_mean) for b, bn in zip(dec_before, dec_bn, strict=True))
    assert not torch.equal(w_before, net.encoder[1].conv.weight)  # encoder still learns


def test_train_checkpoint_roundtrip_resume_and_inpainter(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny-petct"
    summary = train(_cfg(tiny_dataset, out, epochs=2, phase2_epoch=1), progress=False)
    assert summary["epochs_completed"] == 2 and summary["steps"] == 6
    assert [h["phase"] for h in summary["history"]] == [1, 2]
    assert summary["split_case_ids"]["train"] == ["train0", "train1", "train2"]
    # model.pt loads with weights_only=True (plain types only) and reproduces the outputs
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert set(ckpt) == {"format_version", "model_config", "preprocessing", "training_summary", "state_dict"}
    assert ckpt["preprocessing"]["modality"] == "petct"
    net, cfg = model_from_checkpoint(load_checkpoint(out / "model.pt"))
    assert cfg.size == 32 and cfg.in_channels == 2
    card = json.loads((out / "card.json").read_text())
    assert card["sha256"] == sha256_file(out / "model.pt") and card["default_threshold"] is None
    assert card["validation"]["psnr"] == pytest.approx(summary["val_metrics"]["psnr"])
    best_epoch = summary["best_epoch"]
    assert summary["history"][best_epoch - 1]["val"]["psnr"] == max(h["val"]["psnr"] for h in summary["history"])

    inp = Inpainter.load(out, device="cpu", max_batch=3)
    x = np.random.default_rng(0).random((5, 2, 32, 32)).astype(np.float32)
    m = fixed_masks(5, 32)
    comp = inp.inpaint(x, m)
    valid = np.broadcast_to(m > 0.5, x.shape)
    assert np.array_equal(comp[valid], x[valid])  # valid pixels kept exactly
    assert not np.allclose(comp[~valid], x[~valid])
    with torch.no_grad():
        ref = net(torch.from_numpy(x * m), torch.from_numpy(m)).numpy()
    assert np.allclose(comp[~valid], ref[~valid], atol=1e-6)  # same outputs after the round trip
    assert inp.images_inpainted == 5 and inp.flops_per_image > 0 and inp.sha256 == card["sha256"]
    assert inp.modality == "petct" and inp.default_threshold is None
    with pytest.raises(InvalidInput):
        inp.inpaint(x[:, :1], m)

    # resume: continue to 3 epochs from last.pt
    s2 = train(_cfg(tiny_dataset, out, epochs=3, phase2_epoch=1, resume=str(out)), progress=False)
    assert s2["epochs_completed"] == 3 and s2["steps"] == 9 and len(s2["history"]) == 3

    assert [c["name"] for c in list_cards(tmp_path / "models")] == ["tiny-petct"]
    assert resolve_weights("tiny-petct", tmp_path / "models") == out / "model.pt"
    with pytest.raises(ModelError):
        resolve_weights("nope", tmp_path / "models")


def test_modality_selection_max_steps_and_perceptual(tiny_dataset: Path, tmp_path: Path) -> None:
    s = train(_cfg(tiny_dataset, tmp_path / "ct", modality="ct", max_steps=2, perceptual="random"), progress=False)
    assert s["steps"] == 2 and s["stop_reason"] == "max_steps" and s["perceptual"] == "random"
    assert {"perceptual", "style_out", "style_comp", "lap"} <= set(s["history"][-1]["last_loss"])
    ckpt = load_checkpoint(tmp_path / "ct" / "model.pt")
    assert ckpt["model_config"]["in_channels"] == 1 and ckpt["preprocessing"]["modality"] == "ct"
    with pytest.raises(InvalidInput):
        train(_cfg(tiny_dataset, tmp_path / "x", modality="mri"), progress=False)


def test_training_lowers_hole_error(make_dataset, tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n_train=32)
    s = train(_cfg(ds, tmp_path / "m", arch="gconv", epochs=4, phase2_epoch=3, lr=3e-3, lr_phase2=1e-3), progress=False)
    psnr = [h["val"]["psnr"] for h in s["history"]]
    assert psnr[-1] > psnr[0] + 1.0, psnr


def test_seeded_runs_are_identical(tiny_dataset: Path, tmp_path: Path) -> None:
    a = train(_cfg(tiny_dataset, tmp_path / "a", arch="pconv", max_steps=2), progress=False)
    b = train(_cfg(tiny_dataset, tmp_path / "b", arch="pconv", max_steps=2), progress=False)
    assert a["history"][-1]["last_loss"] == b["history"][-1]["last_loss"]
