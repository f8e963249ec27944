"""A PET in Bq/mL made from a real SUV PET (the IBSI NIfTI copies): the units trap of the DICOM/SUV
issue, shared by the CLI and the API tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autopaint.imaging.io import read_volume, write_volume
from autopaint.imaging.suv import decay_corrected_dose

WEIGHT, DOSE, DELAY = 75.0, 3.7e8, 3600.0
"""A Bq/mL PET: 75 kg, 370 MBq injected 60 min before the scan."""


def write_bqml_pet(suv_pet: Path, out: Path) -> Path:
    """``suv_pet`` divided by the SUV factor of :data:`WEIGHT`/:data:`DOSE`/:data:`DELAY` (F-18), as float32."""
    pet = read_volume(suv_pet)
    factor = WEIGHT * 1000.0 / decay_corrected_dose(DOSE, DELAY)
    write_volume(pet.with_data((pet.data / factor).astype(np.float32)), out)
    return out
