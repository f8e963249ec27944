"""`autopaint segment` error paths (exit 2, one line) and, when the demo model exists, fast/exact
detection agreement on a small thorax phantom with the real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autopaint.cli import main
from autopaint.imaging.io import write_volume
from autopaint.imaging.volume import Volume
from autopaint.paths import models_dir

DEMO = "thorax-petct-gconvlap-128"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ex:
        main(argv)
    return int(ex.value.code or 0), capsys.readouterr().err


def test_cli_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    write_volume(Volume(np.full((16, 16, 4), -800, np.float32), aff), tmp_path / "ct.nii.gz", dtype=np.int16)
    write_volume(Volume(np.ones((16, 16, 4), np.float32), aff), tmp_path / "pet.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti at all")
    code, err = _run(["segment", "--ct", str(tmp_path / "ct.nii.gz"), "--pet", str(tmp_path / "pet.nii.gz"),
                      "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing_suv_info" in err and err.count("\n") == 1
    code, err = _run(["segment", "--ct", str(tmp_path / "bad.nii.gz"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("autopaint: error [") and err.count("\n") == 1
    code, err = _run(["segment", "--ct", str(tmp_path / "ct.nii.gz"), "--mode", "slow",
                      "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "bad_arguments" in err


@pytest.mark.skipif(not (models_dir() / DEMO / "model.pt").is_file(), reason="demo model not trained yet")
def test_fast_and_exact_agree_with_the_demo_model() -> None:
    """The shipped, calibrated demo model on a small thorax phantom (seed 901, not a training seed):
    fast mode (card's screen level) finds the tumour slices that exact mode finds, its mask at the
    card's threshold agrees with exact mode's, with at most half the images inpainted."""
    from autopaint.data.phantom import generate_case
    from autopaint.imaging.organs import ooi_mask
    from autopaint.imaging.preprocess import PreprocessParams, prepare_case
    from autopaint.model.inpainter import Inpainter
    from autopaint.segment.engine import autoinpaint
    from autopaint.segment.metrics import dice, slice_hit_rate

    inp = Inpainter.load(DEMO, device="cpu")
    level, thr = inp.card.get("screen_level"), inp.default_threshold
    assert level is not None and thr is not None, "the shipped demo model must be calibrated"
    ph = generate_case("thorax", seed=901, size="small")
    case = prepare_case(ph.ct, ph.pet, PreprocessParams.from_dict(inp.preprocessing))
    ooi = case.mask_to_model(np.asarray(ooi_mask(ph.ct, "thorax"), bool))
    label = case.mask_to_model(ph.label.data > 0)
    tumour_k = np.flatnonzero(label.any(axis=(1, 2)))
    assert tumour_k.size
    # the tumour slices plus one healthy neighbour on each side keep the test short
    ks = np.unique(np.clip(np.concatenate([tumour_k, tumour_k[[0, -1]] + [-1, 1]]), 0, len(ooi) - 1))
    ks = ks[ooi[ks].any(axis=(1, 2))]
    fast = autoinpaint(case.images[ks], ooi[ks], inp, mode="fast", screen_level=level)
    exact = autoinpaint(case.images[ks], ooi[ks], inp, mode="exact")
    assert fast.level_source == "calibrated"
    hit_fast, hit_exact = slice_hit_rate(fast.unions, label[ks]), slice_hit_rate(exact.unions, label[ks])
    assert hit_exact >= 0.5, hit_exact  # the model does find this tumour
    assert abs(hit_fast - hit_exact) <= 0.2, (hit_fast, hit_exact)  # at most one of its 6 slices apart
    assert dice(fast.residual > thr, exact.residual > thr) >= 0.8
    assert dice(fast.residual > thr, label[ks]) >= dice(exact.residual > thr, label[ks]) - 0.05
    assert exact.counters.total >= 2 * fast.counters.total
