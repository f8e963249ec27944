"""preview.png: lesion slices chosen (largest first, not the most-residual slices), healthy wording,
radiological orientation from the affine, true-aspect MIP with lesion numbers, legend / colour bars /
notices, deterministic small PNG without metadata, speed on a full-size volume."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from autopaint.imaging.volume import Volume
from autopaint.segment.lesions import lesion_table
from autopaint.segment.preview import RESEARCH_NOTICE, preview_figure, render_preview
from autopaint.segment.preview_lesions import NO_LESION

REPORT = {"model": {"name": "thorax-petct-gconvlap-128", "sha256": "7c9311d921e7b2ee" + "0" * 48},
          "threshold": {"value": 0.2, "source": "model_card"}, "params": {"mode": "fast"}}


def _ball(shape: tuple[int, int, int], affine: np.ndarray, centre_mm: tuple[float, float, float],
          radius_mm: float) -> np.ndarray:
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = np.stack([ii, jj, kk], -1) @ affine[:3, :3].T + affine[:3, 3]
    return ((world - np.asarray(centre_mm)) ** 2).sum(-1) <= radius_mm ** 2


def _case(affine: np.ndarray, shape: tuple[int, int, int] = (48, 48, 24),
          lesions: tuple[tuple[tuple[float, float, float], float], ...] = (((20.0, 10.0, 18.0), 10.0),
                                                                           ((-24.0, -12.0, 48.0), 5.0)),
          decoy: tuple[float, float, float] | None = (0.0, 0.0, 60.0)) -> dict[str, Any]:
    """CT 0 HU (the body fills the grid), PET 1 SUV, lesions SUV 8 (mask + residual 0.6) and a decoy of
    strong residual without a detection (the "heart" of the old preview)."""
    ct = np.zeros(shape, np.float32)
    pet = np.ones(shape, np.float32)
    mask = np.zeros(shape, bool)
    res = np.zeros(shape, np.float32)
    for centre, r in lesions:
        b = _ball(shape, affine, centre, r)
        pet[b], ct[b], res[b] = 8.0, 40.0, 0.6
        mask |= b
    if decoy is not None:
        res[_ball(shape, affine, decoy, 14.0)] = 0.95
    return {"ct": ct, "pet": pet, "residual": res, "mask": mask, "affine": affine}


def _aff(diag: tuple[float, float, float], origin: tuple[float, float, float] | None = None) -> np.ndarray:
    a = np.diag([*diag, 1.0])
    if origin is None:  # centre the grid on x = y = 0, z from 0 upwards
        origin = (-diag[0] * 23.5, -diag[1] * 23.5, 0.0 if diag[2] > 0 else -diag[2] * 23)
    a[:3, 3] = origin
    return a


def _texts(fig: Any) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
    return out


def _axes(fig: Any, label: str) -> Any:
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, (label, [ax.get_label() for ax in fig.axes])
    return found[0]


def _world_z(affine: np.ndarray, shape: tuple[int, int, int], mask: np.ndarray) -> float:
    """World z of the axial slice with the largest cross-section of ``mask`` (RAS grids: k = z)."""
    k = int(np.argmax(mask.sum(axis=(0, 1))))
    return float((affine @ [(shape[0] - 1) / 2, (shape[1] - 1) / 2, k, 1])[2])


def test_rows_are_lesion_slices_largest_first_not_residual_slices() -> None:
    aff = _aff((2.0, 2.0, 3.0))
    c = _case(aff)
    rows = lesion_table(Volume(c["mask"].astype(np.uint8), aff), Volume(c["pet"], aff))
    assert len(rows) == 2 and rows[0]["volume_ml"] > rows[1]["volume_ml"]
    fig = preview_figure(c["ct"], c["pet"], c["residual"], c["mask"], affine=aff, lesions=rows, report=REPORT)
    titles = [t for t in _texts(fig) if t.startswith("Lesion ")]
    assert [t.split("  ·  ")[0] for t in titles] == ["Lesion 1", "Lesion 2"]
    assert f"{rows[0]['volume_ml']:.1f} ml" in titles[0] and f"SUVmax {rows[0]['suv_max']:.1f}" in titles[0]
    big = _ball(c["mask"].shape, aff, (20.0, 10.0, 18.0), 10.0)
    small = _ball(c["mask"].shape, aff, (-24.0, -12.0, 48.0), 5.0)
    assert f"axial z = {_world_z(aff, big.shape, big):.1f} mm" in titles[0]
    assert f"axial z = {_world_z(aff, small.shape, small):.1f} mm" in titles[1]
    # the decoy residual (z = 60 mm, the most residual) is not a row; "k=" slice names are gone
    assert not any("60.0 mm" in t for t in titles) and not any("k=" in t for t in _texts(fig))
    labels = {ax.get_label() for ax in fig.axes}
    assert {"axial-0-ct", "axial-0-pet", "axial-0-res", "axial-1-res"} <= labels
    assert not any(lab.startswith("axial-2") for lab in labels)
    # the lesion numbers are drawn beside the sections on the fused and residual panels
    assert "1" in [t.get_text() for t in _axes(fig, "axial-0-pet").texts]


def test_lesions_default_to_the_table_and_rows_are_capped() -> None:
    aff = _aff((2.0, 2.0, 3.0))
    centres = [((-30.0 + 15 * i, 0.0, 9.0 + 12 * i), 4.0 + i) for i in range(5)]
    c = _case(aff, lesions=tuple(centres), decoy=None)
    fig = preview_figure(c["ct"], c["pet"], c["residual"], c["mask"], affine=aff, report=REPORT, max_rows=3)
    texts = _texts(fig)
    assert sum(t.startswith("Lesion ") for t in texts) == 3
    assert any("5 lesions detected" in t and "Rows show the 3 largest" in t and "all 5" in t for t in texts)
    mip_numbers = sorted(t.get_text() for t in _axes(fig, "mip").texts if t.get_text().isdigit())
    assert mip_numbers == ["1", "2", "3", "4", "5"]


def test_healthy_result_says_so_with_one_representative_slice() -> None:
    aff = _aff((2.0, 2.0, 3.0))
    c = _case(aff, lesions=(), decoy=(0.0, 0.0, 30.0))
    fig = preview_figure(c["ct"], c["pet"], c["residual"], c["mask"], affine=aff, lesions=[], report=REPORT)
    texts = _texts(fig)
    assert f"{NO_LESION} in the analysed region." in texts
    row = [t for t in texts if t.startswith(f"{NO_LESION}  ·  representative axial slice")]
    assert len(row) == 1 and "mm" in row[0]
    assert not any(t.startswith("Lesion ") for t in texts)
    assert not any(ax.get_label().startswith("axial-1") for ax in fig.axes)


@pytest.mark.parametrize("diag", [(2.0, 2.0, 3.0), (-2.0, -2.0, 3.0), (-2.0, 2.0, -3.0)])
def test_axial_is_radiological_and_mip_superior_up_whatever_the_affine(diag: tuple[float, float, float]) -> None:
    """A lesion at the patient's right-anterior-superior corner shows top-left on the axial panels
    (anterior up, patient right on the viewer's left) and top-left on the coronal MIP."""
    aff = _aff(diag)
    c = _case(aff, lesions=(((30.0, 30.0, 50.0), 8.0),), decoy=None)
    c["ct"][c["mask"]] = 1000.0
    for data_axes in ((0, 1, 2), (1, 0, 2)):  # also a grid stored with i and j swapped
        perm = np.eye(4)[[*data_axes, 3]].T
        a2 = aff @ perm
        arrs = {k: np.transpose(c[k], data_axes) for k in ("ct", "pet", "residual", "mask")}
        fig = preview_figure(arrs["ct"], arrs["pet"], arrs["residual"], arrs["mask"], affine=a2, report=REPORT)
        img = np.asarray(_axes(fig, "axial-0-ct").images[0].get_array())[..., 0]
        h, w = img.shape
        quads = {"tl": img[:h // 2, :w // 2], "tr": img[:h // 2, w // 2:], "bl": img[h // 2:, :w // 2],
                 "br": img[h // 2:, w // 2:]}
        assert max(quads, key=lambda q: float(quads[q].mean())) == "tl", (diag, data_axes)
        mip = np.asarray(_axes(fig, "mip").images[0].get_array())
        h, w = mip.shape
        assert np.unravel_index(np.argmax(mip), mip.shape)[0] < h // 2  # superior up
        assert np.unravel_index(np.argmax(mip), mip.shape)[1] < w // 2  # patient right on the left


def test_mip_has_true_proportions_and_numbers_at_centroids() -> None:
    aff = _aff((1.0, 1.0, 4.0), origin=(-30.0, -30.0, 0.0))
    shape = (60, 60, 20)  # 60 mm wide, 80 mm tall
    c = _case(aff, shape=shape, lesions=(((10.0, 0.0, 40.0), 8.0), ((-15.0, 5.0, 16.0), 5.0)), decoy=None)
    rows = lesion_table(Volume(c["mask"].astype(np.uint8), aff), Volume(c["pet"], aff))
    fig = preview_figure(c["ct"], c["pet"], c["residual"], c["mask"], affine=aff, lesions=rows, report=REPORT)
    ax = _axes(fig, "mip")
    assert ax.get_aspect() == 1.0
    left, right, bottom, top = ax.images[0].get_extent()
    assert abs(left - right) == pytest.approx(60.0) and abs(top - bottom) == pytest.approx(80.0)
    assert left > right  # patient right (larger x) on the viewer's left
    fig.canvas.draw()
    box = ax.get_window_extent()
    assert box.width / box.height == pytest.approx(60.0 / 80.0, rel=0.03)
    nums = {t.get_text(): t.get_position() for t in ax.texts if t.get_text().isdigit()}
    for r in rows:
        x, z = nums[str(r["id"])]
        assert x == pytest.approx(r["centroid_x_mm"], abs=1.0) and z == pytest.approx(r["centroid_z_mm"], abs=4.0)
    marks = {t.get_text() for t in ax.texts}
    assert {"R", "L", "S", "I"} <= marks
    assert {"R", "L", "A", "P"} <= {t.get_text() for t in _axes(fig, "axial-0-ct").texts}


def test_legend_colour_bars_notice_and_model_line() -> None:
    aff = _aff((2.0, 2.0, 3.0))
    c = _case(aff)
    fig = preview_figure(c["ct"], c["pet"], c["residual"], c["mask"], affine=aff, report=REPORT, date="2024-05-01")
    texts = _texts(fig)
    assert RESEARCH_NOTICE.upper() in texts and any(t.startswith(RESEARCH_NOTICE) for t in texts)
    footer = [t for t in texts if t.startswith("Model ")]
    assert len(footer) == 1 and "thorax-petct-gconvlap-128" in footer[0] and "7c9311d921e7" in footer[0]
    assert "date 2024-05-01" in footer[0] and "threshold 0.2" in footer[0]
    for name, word in (("ct", "HU"), ("pet", "SUV"), ("res", "threshold 0.2")):
        assert word in _axes(fig, f"colorbar-{name}").get_title()
    legend = _axes(fig, "legend").get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    assert len(entries) == 3 and "Outline" in entries[0] and "SUV" in entries[1] and "Residual" in entries[2]


def test_ct_only_and_pet_only() -> None:
    aff = _aff((2.0, 2.0, 3.0))
    c = _case(aff)
    fig = preview_figure(c["ct"], None, c["residual"], c["mask"], affine=aff, report=REPORT)
    assert {ax.get_label() for ax in fig.axes if ax.get_label().startswith("axial-0")} == {"axial-0-ct", "axial-0-res"}
    assert any(t.startswith("Coronal CT MIP") for t in _texts(fig))
    fig = preview_figure(None, c["pet"], c["residual"], c["mask"], affine=aff, report=REPORT)
    assert {ax.get_label() for ax in fig.axes if ax.get_label().startswith("axial-0")} == {"axial-0-pet", "axial-0-res"}
    with pytest.raises(ValueError):
        preview_figure(None, None, c["residual"], c["mask"], affine=aff)


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos + 4:pos + 8])
        pos += 12 + n
    return out


def test_png_is_deterministic_small_and_has_no_metadata() -> None:
    aff = _aff((2.0, 2.0, 3.0))
    c = _case(aff)
    rng = np.random.default_rng(0)
    c["ct"] += rng.normal(0, 30, c["ct"].shape).astype(np.float32)  # noisy images compress worst
    c["pet"] += rng.gamma(2.0, 0.2, c["pet"].shape).astype(np.float32)
    kw: dict[str, Any] = {"affine": aff, "report": REPORT, "date": "2024-05-01"}
    a = render_preview(c["ct"], c["pet"], c["residual"], c["mask"], **kw)
    b = render_preview(c["ct"].copy(), c["pet"].copy(), c["residual"].copy(), c["mask"].copy(), **kw)
    assert a == b
    chunks = _png_chunks(a)
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(chunks)
    assert len(a) < 400_000
    img = Image.open(io.BytesIO(a))
    assert img.mode == "P" and img.size[0] > 1000


@pytest.mark.slow
def test_full_size_volume_is_fast_and_small() -> None:
    """512 x 512 x 150 (0.98 x 0.98 x 3 mm), noisy CT and PET, three lesions: about 1 s on 2 cores
    (the first call, matplotlib's imports included, about 1.4 s; asserted with slack) and < 400 KB."""
    shape = (512, 512, 150)
    aff = _aff((0.977, 0.977, 3.0), origin=(-250.0, -250.0, -450.0))
    rng = np.random.default_rng(1)
    ii, jj = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    body = ((ii - 256) / 230.0) ** 2 + ((jj - 256) / 160.0) ** 2 <= 1.0
    ct = np.where(body[..., None], rng.normal(20, 40, shape), -1000).astype(np.float32)
    pet = np.where(body[..., None], rng.gamma(4.0, 0.3, shape), 0).astype(np.float32)
    mask = np.zeros(shape, bool)
    for ci, cj, ck, r in ((200, 250, 40, 20), (330, 280, 90, 12), (260, 200, 120, 8)):
        mask[ci - r:ci + r, cj - r:cj + r, ck - r // 3:ck + r // 3] = True
    pet[mask] = 9.0
    res = np.zeros(shape, np.float32)
    res[mask] = 0.7
    res[240:300, 240:300, 60:80] = 0.9
    rows = lesion_table(Volume(mask.astype(np.uint8), aff), Volume(pet, aff))  # the pipeline passes its table
    t0 = time.perf_counter()
    png = render_preview(ct, pet, res, mask, affine=aff, lesions=rows, report=REPORT, date="2024-05-01")
    dt = time.perf_counter() - t0
    assert len(png) < 400_000
    assert dt < 4.0, dt
