from __future__ import annotations

import numpy as np
import pytest

from tests.segment.stubs import ConstantInpainter

N = 128
BG = 0.2


def disk(n: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture()
def stub() -> ConstantInpainter:
    return ConstantInpainter(fill=(BG, BG), size=N)


@pytest.fixture()
def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (K, 2, N, N), ooi (K, N, N), label (K, N, N)): 12 slices, background 0.2, a round OOI,
    a tumour (value 0.9 in both channels) of radius 5 px on slices 4..7 (radius 2 px on slice 8)."""
    k = 12
    images = np.full((k, 2, N, N), BG, dtype=np.float32)
    ooi = np.zeros((k, N, N), dtype=bool)
    label = np.zeros((k, N, N), dtype=bool)
    for s in range(1, 11):
        ooi[s] = disk(N, 64, 64, 40)
    for s, r in ((4, 5), (5, 5), (6, 5), (7, 5), (8, 1.2)):
        t = disk(N, 58, 70, r)
        label[s] = t
        images[s][:, t] = 0.9
    return images, ooi, label
