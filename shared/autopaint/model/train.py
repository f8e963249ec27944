"""Training loop (paper §2.4): healthy slices, random irregular holes, Adam, batch 8, two phases.

Phase 1 (epochs ``< phase2_epoch``): all BN layers on, lr 1e-4. Phase 2: encoder BN layers in eval
mode (running statistics frozen; their affine parameters still learn), lr 5e-5. Validation every
epoch on the val split with FIXED seeded holes (MSE/PSNR/SSIM on 0–255); the best epoch (highest
PSNR) is kept as ``<out>/model.pt`` + ``card.json``; ``<out>/last.pt`` holds the optimizer and
position for ``--resume``. Masks and shuffling are derived from ``(seed, epoch, batch)``, so a run
is reproducible and a resumed run sees the same batches. CUDA: bf16 autocast + channels_last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autopaint.errors import InvalidInput
from autopaint.model.checkpoint import load_checkpoint, save_checkpoint, write_card
from autopaint.model.dataset_io import load_train_split, manifest_params, read_manifest
from autopaint.model.evaluate import autocast_for, validate
from autopaint.model.holes import HoleGenerator, fixed_masks
from autopaint.model.losses import InpaintingLoss, LossWeights
from autopaint.model.networks import ModelConfig, build_network, encoder_batchnorms, preset_config
from autopaint.model.vgg import build_vgg

log = logging.getLogger(__name__)

CHANNELS = {"ct": 1, "pet": 1, "petct": 2}


@dataclass
class TrainConfig:
    dataset: str
    out: str
    arch: str = "gconv_lap"
    modality: str = "petct"
    preset: str = "demo"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    lr_phase2: float = 5e-5
    phase2_epoch: int | None = None  # default: epochs // 2 (the paper: 150 of 300)
    resume: str | None = None
    max_steps: int | None = None
    time_budget_min: float | None = None
    device: str = "auto"
    seed: int = 0
    vgg_weights: str | None = None
    # "imagenet" (needs vgg_weights) | "random" | "off". Default "off": bench/results/vgg_ablation.md
    # measured no gain from a random VGG at 4.6x the CPU cost per step.
    perceptual: str = "off"
    max_val: int = 256
    val_seed: int = 12345
    loss_weights: dict[str, float] | None = None  # None: LossWeights.for_arch(arch)
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def phase2_start(self) -> int:
        return self.epochs // 2 if self.phase2_epoch is None else self.phase2_epoch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("--device cuda requested but CUDA is not available", code="no_cuda")
    return torch.device(name)


def set_phase(net: nn.Module, opt: torch.optim.Optimizer, phase: int, cfg: TrainConfig) -> None:
    """Train mode; phase 2 also puts the encoder's BN in eval mode and lowers the lr."""
    net.train()
    lr = cfg.lr if phase == 1 else cfg.lr_phase2
    for g in opt.param_groups:
        g["lr"] = lr
    if phase == 2:
        for bn in encoder_batchnorms(net):
            bn.eval()


def train_step(
    net: nn.Module,
    loss_fn: InpaintingLoss,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """One optimisation step on a batch ``images (B,C,N,N)`` [0,1], ``masks (B,1,N,N)`` 1 = valid."""
    opt.zero_grad(set_to_none=True)
    with autocast_for(device):
        pred = net(images * masks, masks)
        total, terms = loss_fn(pred, images, masks)
    total.backward()
    opt.step()
    return terms


def _batch_masks(cfg: TrainConfig, size: int, epoch: int, b: int, n: int) -> np.ndarray:
    gen = HoleGenerator(size, seed=0)
    gen.rng = np.random.default_rng([cfg.seed, epoch, b])
    return gen.batch(n)


def _val_subset(images: np.ndarray, n: int) -> np.ndarray:
    if len(images) <= n:
        return images
    return images[np.linspace(0, len(images) - 1, n).round().astype(int)]


class _Progress:
    """A rich progress bar showing the loss terms (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.bar: Any = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("training", total=total)

    def update(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(cfg: TrainConfig, progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train a model; writes ``<out>/{model.pt, card.json, last.pt}``; returns the training summary."""
    t_start = time.time()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    manifest = read_manifest(cfg.dataset)
    train_set = load_train_split(cfg.dataset, "train", cfg.modality)
    val_set = load_train_split(cfg.dataset, "val", cfg.modality)
    if len(train_set.images) == 0:
        raise InvalidInput(f"{cfg.dataset}: empty train split", code="dataset_empty")
    if len(val_set.images) == 0:
        log.warning("empty val split: validating on a subset of train")
        val_set = train_set
    size = train_set.images.shape[-1]
    mcfg = preset_config(cfg.preset, cfg.arch, CHANNELS[cfg.modality], size=size, **cfg.model_overrides)
    weights = LossWeights.from_dict(cfg.loss_weights) if cfg.loss_weights else LossWeights.for_arch(cfg.arch)
    perceptual = "imagenet" if cfg.vgg_weights else cfg.perceptual
    net, loss_fn, opt, fmt = _build(cfg, mcfg, weights, device)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best": None, "history": [], "wall_s": 0.0}
    if cfg.resume:
        state = _resume(cfg.resume, net, opt, mcfg, state)
    val_images = _val_subset(val_set.images, cfg.max_val)
    val_masks = fixed_masks(len(val_images), size, cfg.val_seed)
    params = manifest_params(manifest)
    if params:
        params["modality"] = cfg.modality
    n_train = len(train_set.images)
    steps_per_epoch = (n_train + cfg.batch_size - 1) // cfg.batch_size
    bar = _Progress(progress, cfg.epochs * steps_per_epoch)
    deadline = t_start + cfg.time_budget_min * 60 if cfg.time_budget_min else None
    wall0 = float(state["wall_s"])
    stop_reason = "epochs"
    base = {"cfg": cfg, "mcfg": mcfg, "params": params, "weights": weights, "perceptual": perceptual,
            "train": train_set, "val": val_set, "out": out, "device": device}
    try:
        while state["epoch"] < cfg.epochs and stop_reason == "epochs":
            epoch = int(state["epoch"])
            phase = 1 if epoch < cfg.phase2_start() else 2
            set_phase(net, opt, phase, cfg)
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(n_train)
            t_ep = time.time()

            def step(b: int, idx: np.ndarray, epoch: int = epoch, phase: int = phase) -> dict[str, float]:
                x = torch.from_numpy(train_set.images[idx]).to(device, memory_format=fmt)
                m = torch.from_numpy(_batch_masks(cfg, size, epoch, b, len(idx))).to(device, memory_format=fmt)
                terms = train_step(net, loss_fn, opt, x, m, device)
                bar.update(f"ep {epoch + 1}/{cfg.epochs} p{phase} " + " ".join(f"{k}={v:.4g}" for k, v in terms.items()))
                return terms

            terms, n_ep, stop_reason = _epoch_steps(cfg, state, perm, steps_per_epoch, deadline, step)
            finished_epoch = state["batch"] >= steps_per_epoch
            if n_ep == 0 and not finished_epoch:
                break
            metrics = validate(net, val_images, val_masks, device)
            rec = {"epoch": epoch + 1, "complete": finished_epoch, "phase": phase, "step": state["step"],
                   "train_images_per_s": n_ep / max(time.time() - t_ep, 1e-9), "last_loss": terms, "val": metrics}
            state["history"].append(rec)
            log.info("epoch %d val psnr %.3f ssim %.4f mse %.3f", epoch + 1, metrics["psnr"], metrics["ssim"], metrics["mse"])
            if finished_epoch:
                state["epoch"], state["batch"] = epoch + 1, 0
            state["wall_s"] = wall0 + time.time() - t_start
            if state["best"] is None or metrics["psnr"] > state["best"]["val"]["psnr"]:
                state["best"] = rec
                _save_best(base, net, state, stop_reason)
            _save_last(base, net, opt, state)
            if on_epoch is not None:
                on_epoch(rec)
    finally:
        bar.close()
    summary = _summary(base, state, stop_reason)
    log.info("training stopped (%s) after %d steps; best val psnr %.3f", stop_reason, state["step"],
             state["best"]["val"]["psnr"] if state["best"] else float("nan"))
    return summary


def _build(cfg: TrainConfig, mcfg: ModelConfig, weights: LossWeights, device: torch.device
           ) -> tuple[nn.Module, InpaintingLoss, torch.optim.Optimizer, torch.memory_format]:
    """The network on ``device`` (channels-last on CUDA), its loss (with the perceptual VGG when
    configured) and the Adam optimiser."""
    vgg = build_vgg(cfg.perceptual, cfg.vgg_weights, seed=cfg.seed)
    net = build_network(mcfg)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    net.to(device)
    net.to(memory_format=fmt)  # type: ignore[call-overload]
    loss_fn = InpaintingLoss(weights, vgg.to(device) if vgg is not None else None)
    return net, loss_fn, torch.optim.Adam(net.parameters(), lr=cfg.lr), fmt


def _epoch_steps(cfg: TrainConfig, state: dict[str, Any], perm: np.ndarray, steps_per_epoch: int,
                 deadline: float | None, step: Callable[[int, np.ndarray], dict[str, float]]
                 ) -> tuple[dict[str, float], int, str]:
    """The remaining batches of one epoch (from ``state["batch"]``; resumable mid-epoch), stopping
    early at ``cfg.max_steps`` or the time budget. Returns (last loss terms, images seen, stop reason)."""
    terms: dict[str, float] = {}
    n_ep = 0
    for b in range(int(state["batch"]), steps_per_epoch):
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            return terms, n_ep, "max_steps"
        if deadline is not None and time.time() >= deadline:
            return terms, n_ep, "time_budget"
        idx = np.sort(perm[b * cfg.batch_size : (b + 1) * cfg.batch_size])
        terms = step(b, idx)
        state["step"] += 1
        state["batch"] = b + 1
        n_ep += len(idx)
    return terms, n_ep, "epochs"


def _summary(base: dict[str, Any], state: dict[str, Any], stop_reason: str) -> dict[str, Any]:
    cfg: TrainConfig = base["cfg"]
    best = state["best"] or {}
    return {
        "arch": cfg.arch, "modality": cfg.modality, "preset": cfg.preset,
        "epochs_planned": cfg.epochs, "epochs_completed": int(state["epoch"]), "steps": int(state["step"]),
        "best_epoch": best.get("epoch"), "val_metrics": best.get("val"), "wall_time_s": float(state["wall_s"]),
        "stop_reason": stop_reason, "data_dir": str(Path(cfg.dataset).resolve()),
        "split_case_ids": {"train": sorted(set(base["train"].case_ids.tolist())),
                           "val": sorted(set(base["val"].case_ids.tolist()))},
        "n_train_images": len(base["train"].images), "perceptual": base["perceptual"],
        "loss_weights": base["weights"].to_dict(), "device": str(base["device"]), "seed": cfg.seed,
        "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("model_overrides", "loss_weights")},
        "history": state["history"],
    }


def _save_best(base: dict[str, Any], net: nn.Module, state: dict[str, Any], stop_reason: str) -> None:
    cfg: TrainConfig = base["cfg"]
    mcfg: ModelConfig = base["mcfg"]
    summary = _summary(base, state, stop_reason)
    out: Path = base["out"]
    save_checkpoint(out / "model.pt", mcfg, net.state_dict(), base["params"], summary)
    write_card(out, {
        "name": out.name, "architecture": cfg.arch, "modality": cfg.modality, "preset": cfg.preset,
        "image_size": mcfg.size, "in_channels": mcfg.in_channels, "data": summary["data_dir"],
        "split": summary["split_case_ids"], "epochs": summary["epochs_completed"], "best_epoch": summary["best_epoch"],
        "steps": summary["steps"], "validation": summary["val_metrics"], "perceptual": summary["perceptual"],
        "default_threshold": None,
    })


def _save_last(base: dict[str, Any], net: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    out: Path = base["out"]
    summary = _summary(base, state, "checkpoint")
    summary["resume"] = {"epoch": int(state["epoch"]), "batch": int(state["batch"]), "step": int(state["step"]),
                         "best": state["best"], "history": state["history"], "wall_s": float(state["wall_s"])}
    save_checkpoint(out / "last.pt", base["mcfg"], net.state_dict(), base["params"], summary)
    torch.save(opt.state_dict(), out / "last_optimizer.pt")


def _resume(path: str, net: nn.Module, opt: torch.optim.Optimizer, mcfg: ModelConfig, state: dict) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    ckpt = load_checkpoint(p)
    if ModelConfig.from_dict(ckpt["model_config"]) != mcfg:
        raise InvalidInput(f"cannot resume {p}: its model config differs from this run's", code="resume_mismatch")
    net.load_state_dict(ckpt["state_dict"])
    r = ckpt["training_summary"].get("resume")
    opt_path = p.with_name("last_optimizer.pt")
    if r is not None and opt_path.is_file():
        opt.load_state_dict(torch.load(opt_path, map_location="cpu", weights_only=True))
    if r is None:  # a best model.pt: continue after its completed epochs
        s = ckpt["training_summary"]
        return {**state, "epoch": int(s.get("epochs_completed", 0)), "step": int(s.get("steps", 0))}
    log.info("resuming %s at epoch %d batch %d (step %d)", p, r["epoch"], r["batch"], r["step"])
    return {**state, **r}
