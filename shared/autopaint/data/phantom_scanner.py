"""Scanner simulation for the phantoms: CT blur + noise, PET partial volume, PSF, own grid, noise.

Hand-written glue around scipy.ndimage (Gaussian filters, affine resampling); the PET grid is
axis-aligned with the CT grid, so resampling is a diagonal affine map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from autopaint.data.phantom_common import Canvas, Grid

Arr = np.ndarray


def finish_ct(canvas: Canvas, rng: np.random.Generator, noise_hu: float, blur_px: float = 0.6) -> Arr:
    """CT image (I, J, K) int16 HU: slight in-plane blur (detector/reconstruction) plus Gaussian noise."""
    hu = ndimage.gaussian_filter(canvas.hu, sigma=(blur_px, blur_px, 0.0), mode="nearest")
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def finish_pet(canvas: Canvas, pet_grid: Grid, rng: np.random.Generator, fwhm_mm: float,
               noise_gain: float) -> Arr:
    """PET image (I', J', K') float32 SUV on ``pet_grid`` from the canvas activity.

    Steps: 2x2 in-plane block average (partial-volume integration onto a ~2 mm grid), Gaussian PSF
    of ``fwhm_mm``, linear resampling at the PET voxel centres (both grids are axis-aligned, so the
    map is diagonal: scipy's affine_transform), then noise with variance ``noise_gain * SUV``
    (Poisson-like), slightly correlated (0.6-voxel smoothing), clipped at 0.
    """
    act = canvas.act
    ci, cj, ck = act.shape
    fine = act[: ci // 2 * 2, : cj // 2 * 2].reshape(ci // 2, 2, cj // 2, 2, ck).mean(axis=(1, 3))
    sx, sy, sz = canvas.grid.spacing
    sigma_mm = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    fine = ndimage.gaussian_filter(fine, sigma=(sigma_mm / (2 * sx), sigma_mm / (2 * sy), sigma_mm / sz),
                                   mode="nearest")
    # fractional CT index of each PET voxel centre, then fine index = (ct_index - 0.5) / 2 in-plane
    to_ct = np.linalg.inv(canvas.grid.affine) @ pet_grid.affine
    scale = np.diag(to_ct)[:3] * np.array([0.5, 0.5, 1.0])
    shift = (to_ct[:3, 3] - np.array([0.5, 0.5, 0.0])) * np.array([0.5, 0.5, 1.0])
    pet = ndimage.affine_transform(fine, scale, offset=shift, output_shape=pet_grid.shape, order=1,
                                   mode="constant", cval=0.0).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.standard_normal(pet.shape, dtype=np.float32), 0.6)
    noise /= max(float(noise.std()), 1e-6)
    pet += np.sqrt(noise_gain * np.maximum(pet, 0.0) + 0.0025).astype(np.float32) * noise
    return np.maximum(pet, 0.0).astype(np.float32)
