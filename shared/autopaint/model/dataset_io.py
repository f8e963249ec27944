"""Reading a slice dataset (docs/INTERFACES.md, ``data/datasets.py``) for training.

Reads splits with ``autopaint.data.datasets.load_split`` (npz ``images`` uint8 ``(n, C, N, N)``,
0..255 = [0, 1]) and the preprocessing params from ``manifest.json`` (key ``preprocessing``).
Modality selects channels from a PET/CT dataset (channel 0 = CT, channel 1 = PET), so one
``petct`` dataset serves ``ct``, ``pet`` and ``petct`` models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autopaint.data.datasets import load_split
from autopaint.errors import InvalidInput
from autopaint.imaging.modality import PET_CT_CHANNELS

log = logging.getLogger(__name__)

MODALITIES = ("ct", "pet", "petct")


@dataclass
class TrainSplit:
    """``images`` float32 ``(n, C, N, N)`` in [0, 1] (channels already selected), ``case_ids (n,)``."""

    images: np.ndarray
    case_ids: np.ndarray


def read_manifest(dataset: str | Path) -> dict[str, Any]:
    p = Path(dataset) / "manifest.json"
    if not p.is_file():
        raise InvalidInput(f"{dataset} has no manifest.json (build it with `autopaint data build`)",
                           code="dataset_missing")
    try:
        manifest = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"bad manifest {p}: {exc}", code="dataset_invalid") from exc
    if not isinstance(manifest, dict):
        raise InvalidInput(f"bad manifest {p}", code="dataset_invalid")
    return manifest


def manifest_params(manifest: dict[str, Any]) -> dict[str, Any]:
    """The dataset's ``PreprocessParams.to_dict()`` (key ``preprocessing`` or ``params``)."""
    for key in ("preprocessing", "params", "preprocess"):
        v = manifest.get(key)
        if isinstance(v, dict):
            return dict(v)
    return {}


def channel_index(dataset_modality: str, n_channels: int, modality: str) -> list[int]:
    """Channels of the dataset to train a ``modality`` model on (raises ``InvalidInput``)."""
    if modality not in MODALITIES:
        raise InvalidInput(f"modality must be one of {MODALITIES}, got {modality!r}", code="bad_modality")
    if n_channels == 2:
        return PET_CT_CHANNELS[modality]
    if n_channels == 1 and (dataset_modality in ("", modality)) and modality != "petct":
        return [0]
    raise InvalidInput(
        f"a {modality} model cannot be trained on a {dataset_modality or '?'} dataset with {n_channels} channel(s)",
        code="modality_mismatch",
    )


def _read_npz(dataset: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    s = load_split(dataset, split)
    return np.asarray(s.images, np.float32), np.asarray(s.case_ids)


def load_train_split(dataset: str | Path, split: str, modality: str) -> TrainSplit:
    """Images of one split with the channels for ``modality``."""
    d = Path(dataset)
    params = manifest_params(read_manifest(d))
    images, case_ids = _read_npz(d, split)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise InvalidInput(f"{d}/{split}: images must be (n, C, N, N), got {images.shape}", code="dataset_invalid")
    idx = channel_index(str(params.get("modality", "")), images.shape[1], modality)
    images = np.ascontiguousarray(images[:, idx])
    log.info("dataset %s split %s: %d images %s", d, split, len(images), images.shape[1:])
    return TrainSplit(images=images, case_ids=np.asarray(case_ids).astype(str))
