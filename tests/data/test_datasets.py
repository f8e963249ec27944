"""Cohort discovery/loading and healthy-slice dataset building (split by patient, reproducible)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autopaint.cli import app
from autopaint.data.cohorts import CaseRef, discover, load_case
from autopaint.data.datasets import build_dataset, healthy_slices, load_split, split_patients
from autopaint.data.phantom import write_cohort
from autopaint.errors import InvalidInput
from autopaint.paths import data_dir


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_cohort("thorax", 5, seed=4, out=out, size="small", healthy_fraction=0.2)
    return out


@pytest.fixture(scope="module")
def built(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ds")
    return out, build_dataset(cohort, "thorax", "petct", 64, out, margin_slices=2, split=(0.6, 0.2, 0.2), seed=0)


def test_healthy_slices_respects_margin_and_organ() -> None:
    tumour = np.zeros(12, bool)
    tumour[5] = True
    ooi = np.full(12, 0.2)
    ooi[0] = 0.0
    assert healthy_slices(tumour, ooi, 2, 0.01).tolist() == [1, 2, 8, 9, 10, 11]
    assert healthy_slices(tumour, ooi, 0, 0.01).tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]


def test_split_patients_is_disjoint_deterministic_and_stratified() -> None:
    refs = [CaseRef(f"c{i:02d}", "phantom", None, None, None) for i in range(20)]
    tum = {r.case_id: i % 4 != 0 for i, r in enumerate(refs)}
    a, b = split_patients(refs, tum, (0.7, 0.1, 0.2), 3), split_patients(refs, tum, (0.7, 0.1, 0.2), 3)
    assert a == b and set(a) == {r.case_id for r in refs}
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 2, "test": 4}
    assert any(not tum[c] for c, s in a.items() if s == "test") or counts["test"] < 4
    assert split_patients(refs, tum, (0.7, 0.1, 0.2), 4) != a
    with pytest.raises(InvalidInput):
        split_patients(refs, tum, (0.5, 0.1, 0.1), 0)


def test_discover_and_load_phantom_cohort(cohort: Path) -> None:
    refs = discover(cohort)
    assert [r.case_id for r in refs] == [f"thorax_s4_{i:03d}" for i in range(5)]
    case = load_case(refs[0])
    assert case.ct is not None and case.pet is not None and case.label is not None and case.suv
    assert case.label.shape == case.ct.shape and case.pet.shape != case.ct.shape
    with pytest.raises(InvalidInput):
        discover(cohort / "thorax_s4_000")


def test_dataset_manifest_splits_and_healthy_slices(built: tuple[Path, dict], cohort: Path) -> None:
    out, man = built
    splits = man["splits"]
    members = [set(splits[s]["cases"]) for s in ("train", "val", "test")]
    assert set.union(*members) == {r.case_id for r in discover(cohort)}
    assert sum(len(m) for m in members) == 5  # disjoint: no patient in two splits
    for c in man["cases"]:
        t = np.asarray(c["tumour_slices"], int)
        h = np.asarray(c["healthy_slices"], int)
        if t.size and h.size:
            assert np.abs(h[:, None] - t[None, :]).min() > man["margin_slices"]
        assert c["split"] in ("train", "val", "test")
    for name in ("train", "val", "test"):
        s = load_split(out, name)
        assert s.images.shape == (splits[name]["n_slices"], 2, 64, 64) and s.images.dtype == np.float32
        assert 0.0 <= s.images.min() and s.images.max() <= 1.0 and s.labels is None
        assert set(s.case_ids.tolist()) <= set(splits[name]["cases"])
        assert all(s.ooi.reshape(len(s), -1).mean(axis=1) >= 0.01)
    tt = load_split(out, "test_tumour")
    assert tt.labels is not None and len(tt) == man["test_tumour"]["n_slices"]
    if len(tt):
        assert tt.labels.reshape(len(tt), -1).any(axis=1).mean() > 0.5
    assert man["preprocessing"]["modality"] == "petct" and man["preprocessing"]["size"] == 64


def test_dataset_build_is_reproducible_via_cli(built: tuple[Path, dict], cohort: Path, tmp_path: Path) -> None:
    out, man = built
    res = CliRunner().invoke(app, ["dataset", "build", "--cohort", str(cohort), "--preset", "thorax", "--modality",
                                   "petct", "--size", "64", "--out", str(tmp_path), "--split", "0.6,0.2,0.2"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again == json.loads((out / "manifest.json").read_text())
    for name in ("train.npz", "val.npz", "test.npz", "test_tumour.npz"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_phantom_cli_writes_cohort(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["phantom", "--kind", "headneck", "--n", "1", "--seed", "9", "--out", str(tmp_path),
                                   "--size", "small"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "cases.json").read_text())
    assert doc["cases"][0]["case_id"] == "headneck_s9_000"
    assert (tmp_path / "headneck_s9_000" / "label.nii.gz").exists()


def _real(name: str) -> Path:
    path = data_dir() / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available")
    return path


def test_ibsi_sts_cohort() -> None:
    refs = discover(_real("ibsi-sts"))
    assert len(refs) == 20 and refs[0].case_id == "STS_001" and refs[0].cohort == "ibsi-sts"
    case = load_case(refs[0])
    assert case.ct is not None and case.pet is not None and case.label is not None
    assert case.label.shape == case.ct.shape and case.label.data.any() and case.suv
    assert case.pet.spacing[0] > 3.0


def test_openkbp_cohort_uses_ptv_union() -> None:
    refs = discover(_real("openkbp-hn-ct"))
    assert len(refs) == 60 and refs[0].case_id == "pt_1" and refs[0].pet_path is None and not refs[0].suv
    case = load_case(refs[0])
    assert case.pet is None and case.label is not None and case.ct is not None
    from autopaint.imaging.io import read_volume

    ptv70 = read_volume(refs[0].label_path) if refs[0].label_path else None
    assert ptv70 is not None and case.label.data.sum() >= (ptv70.data > 0).sum()
