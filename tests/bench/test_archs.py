"""The shipped Gconv / Pconv baselines really had the shipped GconvLap's budget (bench/archs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.archs import budget_of
from bench.quality_inpaint import SHIPPED, shipped_name

MODELS = Path(__file__).resolve().parents[2] / "models"
# what may differ between the reference and a sibling: the architecture, where it was written, the
# wall-clock cap (off for siblings: epochs are the budget) and the dataset's spelling (absolute path)
PER_MODEL = {"arch", "out", "time_budget_min", "resume", "dataset"}


def test_sibling_names() -> None:
    assert shipped_name("thorax", "gconv_lap") == "thorax-petct-gconvlap-128"
    assert shipped_name("thorax", "pconv") == "thorax-petct-pconv-128"
    assert shipped_name("ibsi-sts", "gconv") == "ibsi-petct-gconv-128"
    assert shipped_name("headneck", "gconv") == "headneck-petct-gconv-128"
    assert shipped_name("openkbp", "gconv") is None


@pytest.mark.parametrize("cohort", sorted(SHIPPED))
@pytest.mark.parametrize("arch", ["gconv", "pconv"])
def test_shipped_siblings_share_the_reference_budget(cohort: str, arch: str) -> None:
    ref_dir = MODELS / str(shipped_name(cohort, "gconv_lap"))
    sib_dir = MODELS / str(shipped_name(cohort, arch))
    if not (sib_dir / "model.pt").is_file():
        pytest.skip(f"{sib_dir.name} is not shipped")
    ref, sib = budget_of(ref_dir), budget_of(sib_dir)
    assert sib["arch"] == arch and ref["arch"] == "gconv_lap"
    assert {k: v for k, v in sib.items() if k not in PER_MODEL} == {k: v for k, v in ref.items() if k not in PER_MODEL}
    assert Path(sib["dataset"]).name == Path(ref["dataset"]).name
