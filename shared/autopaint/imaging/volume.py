"""The one in-memory image type: float32 voxels plus a 4x4 RAS+ affine.

Axis convention (used everywhere in autopaint): ``data[i, j, k]`` is the voxel at index
``(i, j, k)``; ``affine @ [i, j, k, 1]`` is its centre in RAS+ world millimetres (nibabel's
convention: +x towards the patient's Right, +y Anterior, +z Superior). SimpleITK's LPS world and
its (k, j, i) array order are converted in :mod:`autopaint.imaging.io` and nowhere else.
``k`` is the slice
axis for axial acquisitions: an axial slice is ``data[:, :, k]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image. ``data``: float32 (or a mask dtype) array of shape (I, J, K); ``affine``: (4, 4) float64."""

    data: np.ndarray
    affine: np.ndarray
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be 3D, got shape {self.data.shape}")
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {aff.shape}")
        object.__setattr__(self, "affine", aff)

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.data.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along (i, j, k): the column norms of the affine's 3x3 part."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS+, mm) of voxel (0, 0, 0)'s centre."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit column vectors: world direction of the i, j, k axes (RAS+)."""
        return self.affine[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm^3)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def with_data(self, data: np.ndarray) -> Volume:
        """Same geometry, new voxels (shape must match)."""
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} does not match volume shape {self.data.shape}")
        return Volume(data, self.affine.copy(), dict(self.meta))

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices -> (N, 3) RAS+ mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) RAS+ mm -> (N, 3) fractional voxel indices."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world bounding box (min, max) of the voxel extents (half a voxel beyond centres)."""
        corners = np.array(
            [[i, j, k] for i in (-0.5, self.shape[0] - 0.5) for j in (-0.5, self.shape[1] - 0.5)
             for k in (-0.5, self.shape[2] - 0.5)]
        )
        w = self.index_to_world(corners)
        return w.min(axis=0), w.max(axis=0)
