"""dAE / VAE rows of ``bench/accuracy.py`` (issue #11: the unsupervised baselines on the same patients).

    # once per model: train a dAE and a VAE on the healthy slices of a TRAINING phantom cohort (generated
    # when missing; its seed must differ from the validation / test cohorts'), choose each one's residual
    # threshold on the VALIDATION patients, write work/uad/<model>/{dae.pt, vae.pt, uad.json}
    .venv/bin/python bench/accuracy.py calibrate-uad --model thorax-petct-gconvlap-128 \
        --cohort work/cohorts/thorax-val --train-cohort work/cohorts/thorax-train --uad-seconds 180
    # then `evaluate` adds the rows "dAE" and "VAE" (``--uad DIR``; default work/uad/<model> when it exists)

Training data: ``data.datasets.build_dataset`` on the training cohort with the inpainting model's own
preprocessing (preset, windows, image size): the healthy slices (no tumour within 2 slices, some organ
in view) of every training patient, split by patient into train / val (val: the L1 reported after
training). Networks and recipe: ``bench.quality_inpaint.train_uad_model`` (the dense AE / VAE of
``model.uad``, Adam, a wall-clock budget), as in the quality tables. Residual:
``bench.quality_seg.uad_residual`` (|x - x_hat| averaged over the PET/CT channels on the model grid,
back on the CT grid, zero outside the organ of interest). Threshold: the paper's sweep 0..0.8, the one
with the highest mean Dice over the validation patients with tumour
(``segment.calibrate.choose_threshold``, like the other residual rows of ``calibrate``). The scoring on
held-out patients is ``accuracy_cases.score_mask`` (Dice + autoPET lesion-wise numbers), as for every
other row; "images" is 0 (nothing is inpainted), seconds = reconstruction + threshold per volume.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.imaging.preprocess import PreprocessParams
from autopaint.model.uad import DenseAutoencoder, load_uad
from autopaint.segment.calibrate import choose_threshold
from autopaint.segment.thresholds import sweep, sweep_thresholds
from bench.accuracy_cases import Prepared, cohort_command, prepare, score_mask
from bench.quality_seg import uad_residual

log = logging.getLogger("bench.accuracy")
REPO = Path(__file__).resolve().parents[1]
TS = sweep_thresholds()
KINDS = {"dAE": "dae", "VAE": "vae"}  # row name -> model.uad kind (and file stem)
META = "uad.json"
TRAIN_SPLIT = (0.85, 0.15, 0.0)  # training cohort patients: train / val (L1 after training) / none held out


def default_dir(model_name: str) -> Path:
    return REPO / "work" / "uad" / model_name


@dataclass(frozen=True)
class TrainCohort:
    """Where the healthy training slices come from; generated (``autopaint phantom``) when missing."""

    path: Path
    kind: str = "thorax"
    n: int = 20
    seed: int = 11
    size: str = "full"
    healthy_fraction: float = 0.25

    def ensure(self) -> str | None:
        """Generate the cohort when its folder has no cases.json; returns its generating command."""
        if not (self.path / "cases.json").is_file():
            from autopaint.data.phantom import write_cohort

            log.info("generating the training cohort %s (%d %s phantoms, seed %d)", self.path, self.n, self.kind,
                     self.seed)
            write_cohort(self.kind, self.n, self.seed, self.path, size=self.size, healthy_fraction=self.healthy_fraction)
        return cohort_command(self.path)


def _case_ids(cohort: Path) -> list[str]:
    from autopaint.data.cohorts import discover

    return [r.case_id for r in discover(cohort)]


def training_slices(cohort: Path, pp: PreprocessParams, out: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(train, val) healthy slice sets of ``cohort`` with preprocessing ``pp`` (built into ``out`` once,
    reused while its cohort and preprocessing match) and the dataset manifest."""
    from autopaint.data.datasets import build_dataset, load_split

    man_path = out / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.is_file() else None
    if (manifest is None or manifest.get("cohort") != str(cohort)
            or PreprocessParams.from_dict(manifest["preprocessing"]) != pp):
        manifest = build_dataset(cohort, pp.preset, pp.modality, pp.size, out, split=TRAIN_SPLIT, seed=0,
                                 ct_window=pp.ct_window)
    built = PreprocessParams.from_dict(manifest["preprocessing"])
    if built != pp:
        raise SystemExit(f"healthy slices built with {built.to_dict()}, the model needs {pp.to_dict()}")
    return load_split(out, "train"), load_split(out, "val"), manifest


def calibrate_uad(inp: Any, val_cases: Iterable[tuple[str, Any]], val_cohort: Path, train: TrainCohort, out: Path, *,
                  seconds: float, width: int = 16, device: str = "cpu", preset: str | None = None,
                  command: str = "") -> dict[str, Any]:
    """Train the dAE and the VAE for ``inp`` (an Inpainter: its preprocessing, name, sha256), choose
    their thresholds on ``val_cases`` ((case id, PipelineInputs with label) of ``val_cohort``), write
    ``out/{dae.pt, vae.pt, uad.json}``; returns uad.json's content."""
    from bench.quality_inpaint import train_uad_model

    pp = PreprocessParams.from_dict(inp.preprocessing)
    train_command = train.ensure()
    train_ids = _case_ids(train.path)
    leak = set(train_ids) & set(_case_ids(val_cohort))
    if leak:
        raise SystemExit(f"training cohort {train.path} shares patients with {val_cohort}: {sorted(leak)[:5]}")
    t0 = time.perf_counter()
    tr, va, manifest = training_slices(train.path, pp, out / "dataset")
    data_s = time.perf_counter() - t0
    log.info("healthy slices: %d train, %d val (%.0f s)", len(tr), len(va), data_s)
    models: dict[str, DenseAutoencoder] = {}
    training: dict[str, dict[str, Any]] = {}
    for row, kind in KINDS.items():
        models[row], info = train_uad_model(out / f"{kind}.pt", kind, tr.images, va.images, seconds, pp.size,
                                            pp.to_dict(), width, device)
        training[row] = {k: v for k, v in info.items() if k != "path"} | {"file": f"{kind}.pt"}
        log.info("%s: %s", row, training[row])
    del tr, va
    # validation: each patient's residual per model (one patient in memory at a time)
    curves: dict[str, dict[str, list[float]]] = {row: {} for row in KINDS}
    healthy_pos: dict[str, dict[str, list[float]]] = {row: {} for row in KINDS}
    best: dict[str, dict[str, dict[str, float]]] = {row: {} for row in KINDS}
    val_ids: list[str] = []
    t0 = time.perf_counter()
    for cid, x in val_cases:
        p = prepare(cid, x, inp, preset)
        val_ids.append(cid)
        for row, model in models.items():
            res = uad_residual(model, p.case, p.ooi, device=device)
            if p.healthy:  # false-positive ml per threshold (recorded at the chosen one)
                r = np.sort(res[res > 0], axis=None)
                healthy_pos[row][cid] = ((r.size - np.searchsorted(r, TS, side="right")) * p.voxel_ml).tolist()
            else:
                sw = sweep(res, p.label, TS)
                curves[row][cid] = sw["dice"]
                best[row][cid] = {"best_dice": sw["best"]["dice"], "best_threshold": sw["best"]["threshold"]}
        log.info("%s (%s): %s", cid, "healthy" if p.healthy else "tumour",
                 ", ".join(f"{row} [Dice] {best[row][cid]['best_dice']:.3f}" for row in KINDS if cid in best[row]))
        del p
    thresholds: dict[str, float] = {}
    val_dice: dict[str, float] = {}
    per_case: dict[str, dict[str, dict[str, Any]]] = {}
    mean_curves: dict[str, list[float]] = {}
    for row in KINDS:
        t, mean = choose_threshold(curves[row], TS)
        i = int(np.argmin(np.abs(TS - t)))
        thresholds[row], val_dice[row], mean_curves[row] = t, float(mean[i]), [round(float(v), 6) for v in mean]
        per_case[row] = {cid: {**b, "dice_at_threshold": curves[row][cid][i]} for cid, b in best[row].items()}
        per_case[row].update({cid: {"healthy": True, "fp_ml_at_threshold": v[i]} for cid, v in healthy_pos[row].items()})
    meta = {
        "model": (inp.card or {}).get("name"), "model_sha256": inp.sha256, "preprocessing": pp.to_dict(),
        "command": command, "train_cohort": str(train.path), "train_cohort_command": train_command,
        "train_cases": train_ids, "dataset": {"dir": str(out / "dataset"), "split": list(TRAIN_SPLIT),
                                              "slices": {s: manifest["splits"][s]["n_slices"] for s in ("train", "val")},
                                              "seconds": data_s},
        "budget_s": seconds, "width": width, "training": training,
        "val_cohort": str(val_cohort), "val_cohort_command": cohort_command(val_cohort), "val_cases": val_ids,
        "val_tumour_cases": sorted(curves["dAE"]), "val_seconds": time.perf_counter() - t0,
        "thresholds": thresholds, "val_dice": val_dice, "mean_dice_per_threshold": mean_curves, "per_case": per_case,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(out / META)
    return meta


@dataclass
class UadRows:
    """The trained dAE / VAE and their validation thresholds, scored on prepared held-out cases."""

    models: dict[str, DenseAutoencoder]
    thresholds: dict[str, float]
    meta: dict[str, Any]
    device: str = "cpu"

    @classmethod
    def load(cls, folder: Path, inp: Any, cohort_ids: Iterable[str], device: str = "cpu") -> UadRows:
        """Load ``folder`` (written by :func:`calibrate_uad`); refuses models built for another
        preprocessing and cohorts that share patients with the UAD training or validation patients."""
        meta = json.loads((folder / META).read_text())
        pp = PreprocessParams.from_dict(inp.preprocessing)
        if PreprocessParams.from_dict(meta["preprocessing"]) != pp:
            raise SystemExit(f"{folder}: dAE/VAE trained for {meta['preprocessing']}, the model uses {pp.to_dict()}")
        seen = (set(meta["train_cases"]) | set(meta["val_cases"])) & set(cohort_ids)
        if seen:
            raise SystemExit(f"{folder}: dAE/VAE trained or tuned on patients of this cohort: {sorted(seen)[:5]}")
        if meta.get("model_sha256") != inp.sha256:
            log.warning("%s was calibrated with another %s (sha256 %s); the dAE/VAE rows do not depend on it",
                        folder, meta.get("model"), str(meta.get("model_sha256"))[:12])
        models = {row: load_uad(folder / f"{kind}.pt", device=device) for row, kind in KINDS.items()}
        return cls(models, {row: float(meta["thresholds"][row]) for row in KINDS}, meta, device)

    def rows(self, p: Prepared) -> dict[str, dict[str, Any]]:
        """Per method: Dice + lesion-wise numbers at the validation threshold, [Dice] (tumour patients),
        images 0, seconds, threshold."""
        out: dict[str, dict[str, Any]] = {}
        for row, model in self.models.items():
            t0 = time.perf_counter()
            res = uad_residual(model, p.case, p.ooi, device=self.device)
            mask = res > self.thresholds[row]
            seconds = time.perf_counter() - t0
            rec = score_mask(p, mask)
            if not p.healthy:
                rec["best_dice"] = sweep(res, p.label, TS)["best"]["dice"]
            out[row] = {**rec, "images": 0, "seconds": seconds, "threshold": self.thresholds[row]}
        return out

    def summary(self, folder: Path) -> dict[str, Any]:
        """What the report says about the dAE / VAE rows."""
        m = self.meta
        return {"dir": str(folder), "thresholds": self.thresholds, "val_dice": m["val_dice"], "command": m["command"],
                "train_cohort_command": m["train_cohort_command"], "val_cases": m["val_cases"],
                "budget_s": m["budget_s"], "slices": m["dataset"]["slices"],
                "training": {row: {k: t.get(k) for k in ("steps", "epochs", "train_seconds", "val_l1")}
                             for row, t in m["training"].items()}}


def resolve(folder: Path | None, model_name: str) -> Path | None:
    """``--uad`` (must exist) or the default work folder when it exists; None (logged) otherwise."""
    if folder is not None:
        if not (folder / META).is_file():
            raise SystemExit(f"--uad {folder}: no {META} (run `calibrate-uad` first)")
        return folder
    d = default_dir(model_name)
    if (d / META).is_file():
        return d
    log.info("no dAE/VAE rows: %s has no %s (run `bench/accuracy.py calibrate-uad` to add them)", d, META)
    return None
