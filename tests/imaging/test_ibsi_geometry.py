"""Real data: B-spline PET -> CT resampling keeps the tumour SUVmax within 10 % on IBSI STS."""

from __future__ import annotations

import importlib.util

import pytest

from autopaint.paths import REPO_ROOT, data_dir

IBSI = data_dir() / "ibsi-sts"


def _bench():
    spec = importlib.util.spec_from_file_location("ibsi_geometry", REPO_ROOT / "bench" / "ibsi_geometry.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not IBSI.is_dir(), reason="IBSI STS data not available")
def test_resampled_tumour_suvmax_within_10_percent_for_every_case():
    bench = _bench()
    cases = sorted(p for p in IBSI.glob("STS_*") if p.is_dir())
    assert len(cases) == 20
    bad = []
    for case in cases:
        row = bench.case_row(case)
        assert float(row["suvmax_pet_mask_native"]) > 1.0          # a real FDG-avid tumour
        if abs(float(row["ratio"]) - 1.0) > bench.TOLERANCE:
            bad.append((case.name, round(float(row["ratio"]), 3)))
        # the tumour masks on both grids describe the same volume (geometry is consistent)
        assert float(row["tumour_ml_ct"]) == pytest.approx(float(row["tumour_ml_pet"]), rel=0.05)
    assert not bad, bad
