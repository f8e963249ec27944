"""World-space resampling of one Volume onto another's grid (paper §2.2: PET -> CT, cubic B-spline).

The general path is SimpleITK's ResampleImageFilter. SimpleITK's B-spline is slow on a full CT
grid (about 25 s for 128^2 x 150 -> 512^2 x 150 on 2 cores), so when the reference -> moving index
map is axis-aligned (a diagonal scale + shift: the usual PET/CT case, same directions, any spacing)
we evaluate the SAME interpolant separably: a tensor-product B-spline (or linear) interpolant at
the points of a separable grid equals three 1-D interpolations, each a small dense matrix
(n_out x n_in) applied with BLAS. Hand-written because no library in our stack offers separable
resampling; ``tests/imaging/test_preprocess.py`` checks it against SimpleITK.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from autopaint.imaging.io import from_sitk, to_sitk  # the one Volume <-> sitk.Image converter
from autopaint.imaging.volume import Volume

logger = logging.getLogger(__name__)

_INTERP = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    """True when both volumes have the same shape and affine (within ``tol_mm``)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=tol_mm))


def on_grid(vol: Volume, reference: Volume, order: int = 3) -> Volume:
    """``vol`` on ``reference``'s grid: itself when the grids agree, else resampled (``order`` as in
    :func:`resample_to`; for ``order`` 3 the B-spline's negative ringing is clamped to 0, as PET and
    residual maps are non-negative)."""
    if same_grid(vol, reference):
        return vol
    out = resample_to(vol.with_data(np.asarray(vol.data, np.float32)), reference, order=order)
    if order == 3:
        np.maximum(out.data, 0.0, out=out.data)
    return out


def mask_on_grid(vol: Volume, reference: Volume) -> np.ndarray:
    """A mask or label volume (> 0) as bool ``(I, J, K)`` on ``reference``'s grid (nearest neighbour)."""
    if same_grid(vol, reference):
        return np.asarray(vol.data) > 0
    return on_grid(vol.with_data((np.asarray(vol.data) > 0).astype(np.float32)), reference, order=0).data > 0.5


def resample_to(moving: Volume, reference: Volume, order: int = 3, default: float = 0.0,
                fast: bool = True) -> Volume:
    """Resample ``moving`` onto ``reference``'s grid (world space, mm).

    ``order`` 3 = third-order B-spline (paper), 1 = linear, 0 = nearest neighbour; reference voxels
    whose centre falls outside ``moving`` (beyond its outer voxel edges) get ``default``. Returns
    float32 ``(I, J, K)`` with the reference's affine and the moving volume's ``meta``. B-spline
    ringing can give small negative values: callers clamp where needed. ``fast=False`` forces the
    SimpleITK path.
    """
    if order not in _INTERP:
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    # reference index -> moving index
    m = np.linalg.inv(moving.affine) @ reference.affine
    lin = m[:3, :3]
    diagonal = bool(np.all(np.abs(lin - np.diag(np.diag(lin))) < 1e-6 * np.abs(lin).max()))
    if fast and order in (1, 3) and diagonal:
        data = _separable(moving.data, reference.shape, np.diag(lin), m[:3, 3], order, default)
    else:
        data = _sitk_resample(moving, reference, order, default)
    return Volume(data, reference.affine.copy(), dict(moving.meta))


def _sitk_resample(moving: Volume, reference: Volume, order: int, default: float) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(to_sitk(reference.with_data(np.zeros(reference.shape, np.float32))))
    f.SetInterpolator(_INTERP[order])
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(sitk.sitkFloat32)
    f.SetTransform(sitk.Transform())
    moved = from_sitk(f.Execute(to_sitk(moving.with_data(moving.data.astype(np.float32)))))
    return np.asarray(moved.data, dtype=np.float32)


def interp_matrix(n_in: int, positions: np.ndarray, order: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix W with ``W @ x`` = the 1-D order-``order`` spline interpolant of
    ``x`` (boundary as ITK: mirror for B-splines, edge for linear) at fractional ``positions``; rows of outside points are 0."""
    pos = np.asarray(positions, dtype=np.float64)
    w = np.zeros((pos.size, n_in))
    if n_in == 1:
        w[:, 0] = 1.0
    else:
        eye = np.eye(n_in)
        mode = "mirror" if order > 1 else "nearest"  # as ITK's B-spline / linear interpolators
        for col in range(n_in):
            w[:, col] = ndi.map_coordinates(eye[col], pos[None], order=order, mode=mode)
    w[(pos < -0.5) | (pos > n_in - 0.5)] = 0.0
    return w


def _separable(data: np.ndarray, out_shape: tuple[int, int, int], scale: np.ndarray,
               shift: np.ndarray, order: int, default: float) -> np.ndarray:
    x = np.asarray(data, dtype=np.float32)
    inside = []
    mats = []
    for ax in range(3):
        pos = np.arange(out_shape[ax]) * scale[ax] + shift[ax]
        mats.append(interp_matrix(x.shape[ax], pos, order).astype(np.float32))
        inside.append((pos >= -0.5) & (pos <= x.shape[ax] - 0.5))
    # cheapest axis order: the ones that shrink (or grow least) first
    for ax in sorted(range(3), key=lambda a: out_shape[a] / max(x.shape[a], 1)):
        w = mats[ax]
        if w.shape[0] == w.shape[1] and np.array_equal(w, np.eye(w.shape[0], dtype=np.float32)):
            continue
        x = np.moveaxis(np.tensordot(w, x, axes=([1], [ax])), 0, ax)
    out = np.ascontiguousarray(x, dtype=np.float32)
    if default != 0.0:
        outside = ~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
        out[outside] = np.float32(default)
    return out
