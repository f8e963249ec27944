"""Building blocks of the synthetic PET/CT phantoms: scanner grids, analytic shapes, a painter.

Anatomy is described in a continuous *patient frame* in millimetres (x towards the patient's
Right, y Anterior, z Superior — the RAS+ axes — with z = 0 at the caudal end of the scanned
region); a patient is placed on the table at a world offset. Each shape answers "is this point
inside?" for broadcast coordinate arrays, so it can be rasterised on any grid; the :class:`Canvas`
paints shapes in order (later shapes overwrite earlier ones, optionally only over some tissues)
on the CT grid, recording HU, FDG activity (SUV), a tissue id and a lesion id per voxel.
The PET image is made from the same activity map (PSF blur, resampling onto the PET's own grid,
signal-dependent noise) so that CT and PET agree in world space by construction.

Hand-written on purpose: no library rasterises analytic anatomy; the geometry here is a handful
of quadrics and tubes evaluated with numpy broadcasting inside each shape's bounding box.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Arr = np.ndarray
Value = float | Callable[[Arr, Arr, Arr], Arr]


class T:
    """Tissue ids painted into :attr:`Canvas.tissue` (uint8)."""

    AIR, FAT, MUSCLE, LUNG, VESSEL, CORTEX, MARROW, SOFT, HEART, MYO = range(10)
    BLOOD, LIVER, AIRWAY, GLAND, TUMOUR, NECROSIS, CORD, BRAIN, CARTILAGE, TABLE = range(10, 20)
    TEETH, NODE, DISC, MEDFAT = range(20, 24)


SOFT_TISSUES = (T.FAT, T.MUSCLE, T.SOFT, T.GLAND, T.NODE, T.MEDFAT, T.TUMOUR, T.NECROSIS, T.VESSEL)


@dataclass(frozen=True)
class Grid:
    """An axis-aligned scanner grid, LPS-style: i towards patient Left, j Posterior, k Superior.

    In RAS+ the affine is ``diag(-sx, -sy, sz)`` plus ``origin`` (world mm of voxel (0, 0, 0)).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> Arr:
        a = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])
        a[:3, 3] = self.origin
        return a

    def axes(self) -> tuple[Arr, Arr, Arr]:
        """World coordinates (mm, RAS+) of the voxel centres along i, j, k: shapes (I,), (J,), (K,)."""
        sx, sy, sz = self.spacing
        ox, oy, oz = self.origin
        return (ox - sx * np.arange(self.shape[0]), oy - sy * np.arange(self.shape[1]),
                oz + sz * np.arange(self.shape[2]))

    @staticmethod
    def centred(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                centre: tuple[float, float, float]) -> Grid:
        """A grid whose field of view is centred on world point ``centre`` (mm)."""
        org = tuple(float(c + sgn * s * (n - 1) / 2.0) for c, s, n, sgn
                    in zip(centre, spacing, shape, (1.0, 1.0, -1.0), strict=True))
        return Grid(shape, spacing, (org[0], org[1], org[2]))


class Shape(ABC):
    """A solid in the patient frame: ``contains`` takes broadcastable x (n,1,1), y (1,m,1), z (1,1,l)."""

    @abstractmethod
    def bbox(self) -> tuple[Arr, Arr]:
        """World bounding box (lo (3,), hi (3,)) in mm."""

    @abstractmethod
    def contains(self, x: Arr, y: Arr, z: Arr) -> Arr:
        """Boolean inside-mask broadcast over the given world coordinates (mm)."""


@dataclass
class Ellipsoid(Shape):
    """Ellipsoid with centre ``c`` (3,), semi-axes ``r`` (3,) and optional rotation ``rot`` (3x3, columns = axes)."""

    c: Arr
    r: Arr
    rot: Arr | None = None

    def bbox(self) -> tuple[Arr, Arr]:
        c, r = np.asarray(self.c, float), np.asarray(self.r, float)
        ext = r if self.rot is None else np.abs(np.asarray(self.rot)) @ r
        return c - ext, c + ext

    def contains(self, x: Arr, y: Arr, z: Arr) -> Arr:
        dx, dy, dz = x - self.c[0], y - self.c[1], z - self.c[2]
        if self.rot is not None:
            m = np.asarray(self.rot)
            dx, dy, dz = (m[0, a] * dx + m[1, a] * dy + m[2, a] * dz for a in range(3))
        return (dx / self.r[0]) ** 2 + (dy / self.r[1]) ** 2 + (dz / self.r[2]) ** 2 <= 1.0


@dataclass
class Capsule(Shape):
    """Tapered tube from ``p0`` to ``p1`` with radius ``r0`` → ``r1`` (mm); ``flat`` ignores z (a 2D
    segment extruded between ``p0[2]`` and ``p1[2]``)."""

    p0: Arr
    p1: Arr
    r0: float
    r1: float
    flat: bool = False

    def bbox(self) -> tuple[Arr, Arr]:
        p0, p1 = np.asarray(self.p0, float), np.asarray(self.p1, float)
        r = max(self.r0, self.r1)
        lo, hi = np.minimum(p0, p1) - r, np.maximum(p0, p1) + r
        if self.flat:
            lo[2], hi[2] = min(p0[2], p1[2]), max(p0[2], p1[2])
        return lo, hi

    def contains(self, x: Arr, y: Arr, z: Arr) -> Arr:
        p0, d = np.asarray(self.p0, float), np.asarray(self.p1, float) - np.asarray(self.p0, float)
        if self.flat:
            d[2] = 0.0
        dd = float(d @ d) or 1e-9
        rx, ry = x - p0[0], y - p0[1]
        rz = 0.0 * z if self.flat else z - p0[2]
        t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / dd, 0.0, 1.0)
        dist2 = (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2
        rad = self.r0 + (self.r1 - self.r0) * t
        inside = dist2 <= rad**2
        if self.flat:
            inside = inside & (z >= min(p0[2], self.p1[2])) & (z <= max(p0[2], self.p1[2]))
        return inside


@dataclass
class Extrusion(Shape):
    """Axial superellipse whose centre and semi-axes vary with z (piecewise linear in keyframes ``zk``).

    Semi-axes differ on each side: ``ax_pos`` for x > cx, ``ax_neg`` for x < cx, likewise ``by_pos``
    (anterior) and ``by_neg`` (posterior). ``harm`` = [(m, amplitude, phase), ...] perturbs the
    radius with angular harmonics (a smooth irregular outline); ``p`` is the superellipse exponent.
    """

    zk: Any  # array-like, converted to float arrays
    cx: Any  # array-like, converted to float arrays
    cy: Any  # array-like, converted to float arrays
    ax_pos: Any  # array-like, converted to float arrays
    ax_neg: Any  # array-like, converted to float arrays
    by_pos: Any  # array-like, converted to float arrays
    by_neg: Any  # array-like, converted to float arrays
    p: float = 2.0
    harm: tuple[tuple[int, float, float], ...] = ()
    shrink: float = 0.0

    def __post_init__(self) -> None:
        for name in ("zk", "cx", "cy", "ax_pos", "ax_neg", "by_pos", "by_neg"):
            v = np.asarray(getattr(self, name), float)
            setattr(self, name, np.broadcast_to(v, np.shape(self.zk)).copy() if name != "zk" else v)

    def at(self, z: Arr | float) -> tuple[Arr, ...]:
        """Interpolated (cx, cy, ax_pos, ax_neg, by_pos, by_neg) at z (shrink applied)."""
        zz = np.asarray(z, float)
        vals = [np.interp(zz, self.zk, np.asarray(v, float)) for v in
                (self.cx, self.cy, self.ax_pos, self.ax_neg, self.by_pos, self.by_neg)]
        return (vals[0], vals[1], *(np.maximum(v - self.shrink, 0.5) for v in vals[2:]))

    def bbox(self) -> tuple[Arr, Arr]:
        cx, cy, axp, axn, byp, byn = (np.asarray(v, float) for v in
                                      (self.cx, self.cy, self.ax_pos, self.ax_neg, self.by_pos, self.by_neg))
        grow = 1.0 + sum(abs(a) for _, a, _ in self.harm)
        lo = np.array([np.min(cx - axn * grow), np.min(cy - byn * grow), self.zk[0]])
        hi = np.array([np.max(cx + axp * grow), np.max(cy + byp * grow), self.zk[-1]])
        return lo, hi

    def contains(self, x: Arr, y: Arr, z: Arr) -> Arr:
        cx, cy, axp, axn, byp, byn = (v.astype(np.float32) for v in self.at(z))
        dx, dy = (x - cx).astype(np.float32), (y - cy).astype(np.float32)
        ux = np.abs(dx) / np.where(dx >= 0, axp, axn)
        uy = np.abs(dy) / np.where(dy >= 0, byp, byn)
        if self.p == 2.0:
            rho = np.sqrt(ux * ux + uy * uy)
        else:
            rho = (ux**self.p + uy**self.p) ** (1.0 / self.p)
        limit: Arr | float = 1.0
        if self.harm:
            theta = np.arctan2(dy, dx)
            limit = 1.0 + sum(a * np.cos(m * theta + ph) for m, a, ph in self.harm)
        z_ok = (z >= self.zk[0]) & (z <= self.zk[-1])
        return (rho <= limit) & z_ok


def cyl(z0: float, z1: float, cx: float, cy: float, rx: float, ry: float) -> Extrusion:
    """Elliptic cylinder along z from ``z0`` to ``z1`` (mm), centre (cx, cy), semi-axes (rx, ry)."""
    two = np.ones(2)
    return Extrusion(np.array([z0, z1]), cx * two, cy * two, rx * two, rx * two, ry * two, ry * two)


@dataclass
class FuncShape(Shape):
    """Any solid given by a bounding box and an inside-function."""

    lo: Arr
    hi: Arr
    fn: Callable[[Arr, Arr, Arr], Arr]

    def bbox(self) -> tuple[Arr, Arr]:
        return np.asarray(self.lo, float), np.asarray(self.hi, float)

    def contains(self, x: Arr, y: Arr, z: Arr) -> Arr:
        return self.fn(x, y, z)


@dataclass
class Lobulated(Shape):
    """Tumour-like solid: union of spheres (centres ``cs`` (n,3), radii ``rs`` (n,)) whose surfaces
    carry low-frequency radial noise ``1 + sum a cos(k . u + phase)`` over the unit direction u."""

    cs: Arr
    rs: Arr
    waves: Arr  # (m, 3) wave vectors on the direction sphere
    amps: Arr  # (m,)
    phases: Arr  # (m,)

    def bbox(self) -> tuple[Arr, Arr]:
        grow = 1.0 + float(np.sum(np.abs(self.amps)))
        r = (self.rs * grow)[:, None]
        return (self.cs - r).min(axis=0), (self.cs + r).max(axis=0)

    def contains(self, x: Arr, y: Arr, z: Arr) -> Arr:
        out: Arr | None = None
        for c, r in zip(self.cs, self.rs, strict=True):
            dx, dy, dz = x - c[0], y - c[1], z - c[2]
            d = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
            ux, uy, uz = dx / d, dy / d, dz / d
            lim = 1.0 + sum(a * np.cos(k[0] * ux + k[1] * uy + k[2] * uz + ph)
                            for k, a, ph in zip(self.waves, self.amps, self.phases, strict=True))
            inside = d <= r * lim
            out = inside if out is None else (out | inside)
        assert out is not None
        return out


@dataclass
class Field:
    """Smooth random field in the patient frame: sum of plane waves, roughly zero mean, unit std."""

    k: Arr  # (n, 3) rad/mm
    phase: Arr  # (n,)

    @staticmethod
    def random(rng: np.random.Generator, wavelength: tuple[float, float], n: int = 6) -> Field:
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength, size=n)
        return Field(d * (2 * np.pi / lam)[:, None], rng.uniform(0, 2 * np.pi, size=n))

    def __call__(self, x: Arr, y: Arr, z: Arr) -> Arr:
        acc = sum(np.cos((k[0] * x + k[1] * y + k[2] * z + ph).astype(np.float32))
                  for k, ph in zip(self.k, self.phase, strict=True))
        return np.asarray(acc, dtype=np.float32) * np.float32(np.sqrt(2.0 / len(self.k)))


def textured(base: float, amp: float, field: Field) -> Callable[[Arr, Arr, Arr], Arr]:
    """``base + amp * field`` as a paint value."""
    return lambda x, y, z: base + amp * field(x, y, z)


class Canvas:
    """Painter on one grid. Arrays (I, J, K): ``hu`` float32 HU, ``act`` float32 SUV (pre-PSF),
    ``tissue`` uint8 (:class:`T`), ``lesion`` uint8 (0 = none, n = tumour n)."""

    def __init__(self, grid: Grid, offset: Arr) -> None:
        self.grid = grid
        self.offset = np.asarray(offset, float)
        wx, wy, wz = grid.axes()
        self.xs = (wx - self.offset[0]).astype(np.float32)
        self.ys = (wy - self.offset[1]).astype(np.float32)
        self.zs = (wz - self.offset[2]).astype(np.float32)
        self.hu = np.full(grid.shape, -1000.0, np.float32)
        self.act = np.zeros(grid.shape, np.float32)
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.lesion = np.zeros(grid.shape, np.uint8)

    def _window(self, lo: Arr, hi: Arr) -> tuple[slice, slice, slice] | None:
        out = []
        for ax, a, b in zip((self.xs, self.ys, self.zs), lo, hi, strict=True):
            idx = np.nonzero((ax >= a) & (ax <= b))[0]
            if idx.size == 0:
                return None
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return out[0], out[1], out[2]

    def paint(self, shape: Shape, tissue: int, hu: Value, suv: Value,
              only: tuple[int, ...] | None = None, lesion: int = 0, dry: bool = False) -> int:
        """Paint ``shape`` (over tissues ``only`` if given); returns the number of voxels painted
        (``dry=True``: only count them)."""
        sl = self._window(*shape.bbox())
        if sl is None:
            return 0
        x = self.xs[sl[0]][:, None, None]
        y = self.ys[sl[1]][None, :, None]
        z = self.zs[sl[2]][None, None, :]
        sub = self.tissue[sl]
        m = np.broadcast_to(shape.contains(x, y, z), sub.shape)
        if only is not None:
            allowed = np.zeros(256, bool)
            allowed[list(only)] = True
            m = m & allowed[sub]
        if dry or not m.any():
            return int(m.sum())
        for arr, val in ((self.hu, hu), (self.act, suv)):
            v = val(x, y, z) if callable(val) else val
            np.copyto(arr[sl], np.broadcast_to(np.asarray(v, np.float32), sub.shape), where=m)
        np.copyto(sub, np.uint8(tissue), where=m)
        np.copyto(self.lesion[sl], np.uint8(lesion), where=m)
        return int(m.sum())

    def tissue_at(self, p: Arr) -> int:
        """Tissue id at patient-frame point ``p`` (mm), nearest voxel; AIR outside the grid."""
        ijk = []
        for ax, v in zip((self.xs, self.ys, self.zs), p, strict=True):
            i = int(np.argmin(np.abs(ax - v)))
            if abs(float(ax[i]) - v) > abs(float(ax[1] - ax[0])):
                return T.AIR
            ijk.append(i)
        return int(self.tissue[ijk[0], ijk[1], ijk[2]])


def paint_tube(canvas: Canvas, pts: Arr, radii: Arr, tissue: int, hu: Value, suv: Value,
               only: tuple[int, ...] | None = None) -> None:
    """Paint a polyline tube: points (n, 3) mm with radii (n,) mm."""
    for a in range(len(pts) - 1):
        canvas.paint(Capsule(pts[a], pts[a + 1], float(radii[a]), float(radii[a + 1])), tissue, hu, suv, only)


def place_tumour(cv: Canvas, rng: np.random.Generator, propose: Callable[[], tuple[Arr, float]],
                 only: tuple[int, ...], tries: int = 30, min_fill: float = 0.4) -> tuple[Lobulated, Arr, float] | None:
    """Draw (centre, diameter) from ``propose`` until the tumour keeps >= ``min_fill`` of its nominal
    sphere volume after clipping to tissues ``only``; returns (shape, centre, diameter) or None."""
    vox_mm3 = float(np.prod(cv.grid.spacing))
    for _ in range(tries):
        c, diam = propose()
        shape = lobulated_tumour(rng, c, diam)
        if cv.paint(shape, T.TUMOUR, 0.0, 0.0, only, dry=True) * vox_mm3 >= min_fill * np.pi / 6 * diam**3:
            return shape, c, diam
    return None


def lobulated_tumour(rng: np.random.Generator, centre: Arr, diameter: float) -> Lobulated:
    """Irregular lobulated solid of roughly ``diameter`` mm equivalent diameter around ``centre``."""
    r0 = diameter / 2.0
    n_lobes = int(rng.integers(1, 4))
    cs, rs = [np.asarray(centre, float)], [r0 * 0.85]
    for _ in range(n_lobes):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        cs.append(np.asarray(centre, float) + d * r0 * rng.uniform(0.35, 0.6))
        rs.append(r0 * rng.uniform(0.45, 0.7))
    m = 4
    waves = rng.normal(size=(m, 3)) * 2.5
    amps = rng.uniform(0.03, 0.1, size=m)
    return Lobulated(np.array(cs), np.array(rs), waves, amps, rng.uniform(0, 2 * np.pi, size=m))


def paint_tumour(cv: Canvas, rng: np.random.Generator, shape: Lobulated, centre: Arr, diam: float,
                 suv_max: float, only: tuple[int, ...], lesion: int) -> tuple[int, bool]:
    """Paint a heterogeneous tumour (soft tissue 20-50 HU, SUV ``suv_max`` x (0.5..1) low-frequency
    pattern) and, in some larger ones, a necrotic core (~15 HU, low uptake) that stays in the label.
    Returns (voxels painted, necrotic)."""
    fld = Field.random(rng, (10, 30), 4)
    hu0 = float(rng.uniform(20, 50))
    n_vox = cv.paint(shape, T.TUMOUR, textured(hu0, 6.0, fld),
                     lambda x, y, z: suv_max * (0.75 + 0.25 * fld(x, y, z)), only, lesion=lesion)
    necrotic = bool(diam > 22 and rng.random() < 0.4)
    if necrotic and n_vox:
        cv.paint(Ellipsoid(centre, np.full(3, diam * rng.uniform(0.18, 0.28))), T.NECROSIS, 15.0,
                 float(rng.uniform(0.5, 1.0)), (T.TUMOUR,), lesion=lesion)
    return n_vox, necrotic
