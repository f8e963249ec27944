"""run_pipeline end to end on a tiny synthetic PET/CT with the stub inpainter: geometry of the
outputs, determinism, detection, report contents, errors, CPU-only re-threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autopaint.errors import InvalidInput
from autopaint.imaging.io import write_volume
from autopaint.imaging.volume import Volume
from autopaint.segment.outputs import rethreshold
from autopaint.segment.pipeline import PipelineInputs, PipelineParams, load_inputs, run_pipeline
from tests.segment.stubs import ConstantInpainter

LUNG_HU, LUNG_SUV = -800.0, 1.0


def _q(x: float) -> float:
    return float(np.rint(x * 255) / 255)


def _stub() -> ConstantInpainter:
    # fills holes with healthy "lung" in model units (thorax window [-1000, 500], SUV [0, 12])
    return ConstantInpainter(fill=(_q((LUNG_HU + 1000) / 1500), _q(LUNG_SUV / 12)), size=128,
                             default_threshold=0.2)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CT (48, 48, 8) at 4 x 4 x 5 mm in an LPS-flipped affine, PET in SUV on a coarser grid, a
    10 mm-radius tumour (HU 40, SUV 8) centred at voxel (20, 26, 4), OOI = a 40 x 40 box."""
    d = tmp_path_factory.mktemp("case")
    aff = np.diag([-4.0, -4.0, 5.0, 1.0])
    aff[:3, 3] = (90.0, 80.0, -20.0)
    ii, jj, kk = np.meshgrid(np.arange(48), np.arange(48), np.arange(8), indexing="ij")
    world = np.stack([ii, jj, kk], -1) @ aff[:3, :3].T + aff[:3, 3]
    centre = aff[:3, :3] @ np.array([20, 26, 4]) + aff[:3, 3]
    tumour = ((world - centre) ** 2).sum(-1) <= 10.0 ** 2
    ct = np.full((48, 48, 8), LUNG_HU, np.float32)
    ct[tumour] = 40.0
    ooi = np.zeros((48, 48, 8), np.uint8)
    ooi[4:44, 4:44, :] = 1
    pet = np.full((48, 48, 8), LUNG_SUV, np.float32)
    pet[tumour] = 8.0
    paths = {"ct": d / "ct.nii.gz", "pet": d / "pet.nii.gz", "ooi": d / "ooi.nii.gz", "label": d / "label.nii.gz"}
    write_volume(Volume(ct, aff), paths["ct"], dtype=np.int16)
    write_volume(Volume(pet, aff), paths["pet"])
    write_volume(Volume(ooi, aff), paths["ooi"], dtype=np.uint8)
    write_volume(Volume(tumour.astype(np.uint8), aff), paths["label"], dtype=np.uint8)
    return paths


def _inputs(case: dict[str, Path], **kw: object) -> PipelineInputs:
    return load_inputs(case["ct"], case["pet"], case["ooi"], case["label"], suv_already=True, **kw)  # type: ignore[arg-type]


def test_pipeline_outputs_geometry_and_detection(case: dict[str, Path], tmp_path: Path) -> None:
    inputs = _inputs(case)
    assert set(inputs.sha256) == {"ct", "pet", "organ_mask", "label"}
    stub = _stub()
    res = run_pipeline(inputs, PipelineParams(mode="fast"), stub, tmp_path / "a")
    for name in ("mask.nii.gz", "residual.nii.gz", "inpainted_ct.nii.gz", "inpainted_pet.nii.gz",
                 "lesions.csv", "lesions.json", "report.json", "preview.png"):
        assert (tmp_path / "a" / name).is_file(), name
    ct_img = nib.load(case["ct"])
    m = nib.load(tmp_path / "a" / "mask.nii.gz")
    assert m.shape == ct_img.shape and np.allclose(m.affine, ct_img.affine, atol=1e-4)
    assert m.get_data_dtype() == np.uint8
    label = np.asarray(nib.load(case["label"]).dataobj) > 0
    mask = np.asarray(m.dataobj) > 0
    dice = 2 * (mask & label).sum() / (mask.sum() + label.sum())
    assert dice > 0.6, dice
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["threshold"] == {"value": 0.2, "source": "model_card"}
    assert report["forward_passes"]["total"] == stub.images_inpainted > 0
    assert report["flops"] == stub.images_inpainted * stub.flops_per_image
    assert report["inputs"]["sha256"]["ct"] == inputs.sha256["ct"]
    assert report["metrics"]["sweep"]["best"]["dice"] >= report["metrics"]["at_threshold"]["dice"]
    assert len(report["metrics"]["sweep"]["thresholds"]) == 41
    assert report["outputs"]["mask.nii.gz"] and "autoinpaint_screen" in report["timings_s"]
    assert len(res.lesions) >= 1 and res.lesions[0]["suv_max"] == pytest.approx(8.0, abs=0.5)
    # the inpainted PET lost the tumour; voxels never touched keep their exact values
    pet_in = np.asarray(nib.load(tmp_path / "a" / "inpainted_pet.nii.gz").dataobj)
    assert pet_in[label].mean() < 3.0
    assert np.array_equal(pet_in[:, :, 0], np.full((48, 48), LUNG_SUV, np.float32))


def test_pipeline_is_deterministic_and_exact_agrees(case: dict[str, Path], tmp_path: Path) -> None:
    inputs = _inputs(case)
    a = run_pipeline(inputs, PipelineParams(mode="fast", write_preview=False), _stub(), tmp_path / "a")
    b = run_pipeline(inputs, PipelineParams(mode="fast", write_preview=False), _stub(), tmp_path / "b")
    assert (tmp_path / "a" / "mask.nii.gz").read_bytes() == (tmp_path / "b" / "mask.nii.gz").read_bytes()
    assert (tmp_path / "a" / "residual.nii.gz").read_bytes() == (tmp_path / "b" / "residual.nii.gz").read_bytes()
    stub = _stub()
    e = run_pipeline(inputs, PipelineParams(mode="exact", write_preview=False), stub, tmp_path / "e")
    assert e.report["forward_passes"]["total"] > 3 * a.report["forward_passes"]["total"]
    inter = ((a.mask > 0) & (e.mask > 0)).sum()
    assert 2 * inter / ((a.mask > 0).sum() + (e.mask > 0).sum()) > 0.95
    del b


def test_rethreshold_matches_and_needs_no_torch(case: dict[str, Path], tmp_path: Path) -> None:
    res = run_pipeline(_inputs(case), PipelineParams(write_preview=False), _stub(), tmp_path / "a")
    out = rethreshold(tmp_path / "a" / "residual.nii.gz", res.threshold, pet=case["pet"],
                      label=case["label"], out_dir=tmp_path / "r")
    assert (tmp_path / "r" / "mask.nii.gz").read_bytes() == (tmp_path / "a" / "mask.nii.gz").read_bytes()
    assert out["lesions"][0]["voxels"] == res.lesions[0]["voxels"]
    assert out["metrics"]["dice"] == pytest.approx(res.report["metrics"]["at_threshold"]["dice"])
    code = ("import sys; from autopaint.segment.outputs import rethreshold; "
            f"rethreshold({str(tmp_path / 'a' / 'residual.nii.gz')!r}, 0.3, out_dir={str(tmp_path / 'x')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pipeline_errors(case: dict[str, Path], tmp_path: Path) -> None:
    inputs = _inputs(case)
    empty = Volume(np.zeros((48, 48, 8), np.uint8), inputs.ct.affine)  # type: ignore[union-attr]
    with pytest.raises(InvalidInput) as ei:
        run_pipeline(PipelineInputs(ct=inputs.ct, pet=inputs.pet, organ_mask=empty), PipelineParams(),
                     _stub(), tmp_path / "x")
    assert ei.value.code == "empty_organ_mask"
    with pytest.raises(InvalidInput) as em:  # the PET/CT model needs both images
        run_pipeline(PipelineInputs(ct=inputs.ct, organ_mask=inputs.organ_mask), PipelineParams(),
                     _stub(), tmp_path / "x")
    assert em.value.code == "missing_input"
    with pytest.raises(InvalidInput) as es:
        load_inputs(case["ct"], case["pet"])
    assert es.value.code == "missing_suv_info"
    with pytest.raises(InvalidInput):
        load_inputs(tmp_path / "missing.nii.gz")


def test_job_default_preset_is_the_models(case: dict[str, Path], tmp_path: Path) -> None:
    """A service job without a preset runs the model's own organ mask (custom = body for the
    IBSI model), not the thorax lungs."""
    from autopaint.contracts import JobParams
    from autopaint.imaging.preprocess import params_for

    job = JobParams()
    assert job.preset is None
    assert JobParams(preset="custom").preset == "custom"
    with pytest.raises(ValueError):
        JobParams(preset="lungs")  # type: ignore[arg-type]
    stub = _stub()
    stub.preprocessing = params_for("custom", "petct", 128, ct_window=(-1000.0, 500.0)).to_dict()
    inputs = load_inputs(case["ct"], case["pet"], None, case["label"], suv_already=True)
    res = run_pipeline(inputs, PipelineParams(preset=job.preset), stub, tmp_path / "a")
    assert res.report["params"]["preset"] == "custom"
    assert res.report["ooi"]["voxels"] > 0


CARD_ACCURACY = {"search": {"candidates": "hotspot", "sign": "hyper", "channel_weights": [0.0, 1.0],
                            "combine": "max", "gate_level": 0.2, "coverage_passes": 2},
                 "delineation": {"fraction": 0.3, "solid_hu": -500.0, "min_ml": 0.1},
                 "hotspot": {"k": 0.0, "floor_suv": 2.0}, "threshold": 0.02}


def test_default_profile_runs_the_cards_configuration(case: dict[str, Path], tmp_path: Path) -> None:
    """With ``accuracy`` on the card, the default run seeds circles on hot spots, gates, delineates and
    reports lesion-wise numbers; the paper profile on the same model is the paper's search."""
    inputs = _inputs(case)
    stub = _stub()
    stub.card = {"name": "stub", "accuracy": CARD_ACCURACY}
    res = run_pipeline(inputs, PipelineParams(write_preview=False), stub, tmp_path / "d")
    rep = res.report
    assert rep["accuracy"]["source"] == "model_card" and rep["threshold"]["value"] == 0.02
    assert rep["hotspot_gate_suv"] == pytest.approx(2.0)
    assert rep["reference_uptake"]["region"] in ("soft_tissue", "none", "liver")
    assert rep["candidates"] and all(c["kept"] for c in rep["candidates"])
    assert rep["forward_passes"]["total"] == rep["forward_passes"]["hotspot"] <= 2 * 8
    lw = rep["metrics"]["lesionwise"]
    assert lw["lesions_found"] == lw["lesions"] == 1 and lw["fp_components"] == 0
    assert rep["metrics"]["at_threshold"]["dice"] > 0.85
    assert rep["delineation"] and rep["delineation"][0]["peak_suv"] > 6
    paper = run_pipeline(inputs, PipelineParams(profile="paper", write_preview=False), _stub(), tmp_path / "p")
    assert paper.report["accuracy"]["source"] == "paper" and paper.report["candidates"] is None
    assert paper.report["forward_passes"]["total"] > rep["forward_passes"]["total"]
    exact = PipelineParams(mode="exact").accuracy(stub)
    assert exact.search.candidates == "both"  # exact mode always runs the exhaustive sweep too
