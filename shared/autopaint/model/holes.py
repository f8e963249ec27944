"""Irregular training holes from circles, ellipses and thick lines (paper §2.4).

"Irregular holes were synthesized by carefully combining ... circles, ellipses, and lines ...
distributed randomly ... to occupy, on average per batch, 25 to 30 percent of the image size."
Hand-written (numpy distance fields) because the paper defines this generator.

Each mask draws a target coverage ``t ~ U(0.17, 0.37)`` and adds random shapes until the hole
fraction reaches ``t``; shapes are sized relative to N (circles r ∈ [0.03, 0.12]·N, ellipse
semi-axes ∈ [0.02, 0.15]·N at any angle, lines of width [0.01, 0.04]·N and length [0.1, 0.5]·N).
The measured mean coverage is ≈ 0.28 (tests/model/test_holes.py checks it lies in [0.25, 0.30]).
Masks are float32 ``(B, 1, N, N)``, **1 = valid, 0 = hole**.
"""

from __future__ import annotations

import numpy as np

COVERAGE_RANGE = (0.17, 0.37)


def _box(hole: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Window of ``hole`` around (cy, cx) ± (ry, rx) and pixel-centre coordinates inside it."""
    n = hole.shape[0]
    y0, y1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, n)
    x0, x1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, n)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    return slice(y0, y1), slice(x0, x1), yy, xx


def _circle(hole: np.ndarray, rng: np.random.Generator) -> None:
    n = hole.shape[0]
    cy, cx = rng.uniform(0, n, 2)
    r = rng.uniform(0.03, 0.12) * n
    sy, sx, yy, xx = _box(hole, cy, cx, r, r)
    hole[sy, sx] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _ellipse(hole: np.ndarray, rng: np.random.Generator) -> None:
    n = hole.shape[0]
    cy, cx = rng.uniform(0, n, 2)
    a, b = rng.uniform(0.02, 0.15, 2) * n
    th = rng.uniform(0, np.pi)
    r = max(a, b)
    sy, sx, yy, xx = _box(hole, cy, cx, r, r)
    u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
    v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
    hole[sy, sx] |= (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _line(hole: np.ndarray, rng: np.random.Generator) -> None:
    n = hole.shape[0]
    y0, x0 = rng.uniform(0, n, 2)
    length = rng.uniform(0.1, 0.5) * n
    th = rng.uniform(0, 2 * np.pi)
    dy, dx = length * np.sin(th), length * np.cos(th)
    half_w = rng.uniform(0.01, 0.04) * n / 2 + 0.5
    sy, sx, yy, xx = _box(hole, y0 + dy / 2, x0 + dx / 2, abs(dy) / 2 + half_w, abs(dx) / 2 + half_w)
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0.0, 1.0)
    dist2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
    hole[sy, sx] |= dist2 <= half_w * half_w


_SHAPES = (_circle, _ellipse, _line)


def random_hole(rng: np.random.Generator, size: int, coverage: float | None = None) -> np.ndarray:
    """One hole map ``(N, N)`` bool, True = hole, covering about ``coverage`` of the image."""
    if coverage is None:
        coverage = float(rng.uniform(*COVERAGE_RANGE))
    hole = np.zeros((size, size), bool)
    for _ in range(200):
        if hole.mean() >= coverage:
            break
        _SHAPES[int(rng.integers(len(_SHAPES)))](hole, rng)
    return hole


class HoleGenerator:
    """Seeded source of training masks. ``batch(b) -> float32 (b, 1, N, N)``, 1 = valid, 0 = hole."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)

    def batch(self, b: int) -> np.ndarray:
        holes = np.stack([random_hole(self.rng, self.size) for _ in range(b)])
        return (~holes).astype(np.float32)[:, None]

    def state(self) -> dict:
        """The generator's bit-generator state (plain dict, for resumable training)."""
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def fixed_masks(n: int, size: int, seed: int = 12345) -> np.ndarray:
    """The same ``n`` masks for a given seed — used for validation so epochs are comparable."""
    return HoleGenerator(size, seed).batch(n)
