"""Issue #11's parts, each on its own: residual sign, hot-spot candidates and gating, coverage growth,
reference uptake, delineation, 3-D consolidation, lesion-wise metrics, profiles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from autopaint.segment.delineate import DelineationParams, consolidate, delineate
from autopaint.segment.engine import autoinpaint
from autopaint.segment.guided import border_fraction, hot_candidates
from autopaint.segment.hotspot import hot_map, reference_uptake
from autopaint.segment.metrics import dice, lesion_metrics
from autopaint.segment.profile import from_card, paper, resolve
from autopaint.segment.refine import ResidualRule
from autopaint.segment.types import Geometry, SearchParams
from tests.segment.conftest import BG, N, disk
from tests.segment.stubs import ConstantInpainter

HOT = SearchParams(candidates="hotspot", sign="hyper", channel_weights=(0.0, 1.0), combine="max")


def test_hyper_residual_counts_only_pet_excess() -> None:
    img = np.zeros((1, 2, 4, 4), np.float32)
    rep = np.zeros_like(img)
    img[0, 1, 0, 0], rep[0, 1, 1, 1] = 0.5, 0.5          # PET: one hotter, one colder than the repaint
    img[0, 0, 2, 2] = 0.4                                   # CT: brighter than the repaint
    rep[0, 0, 3, 3] = 0.4                                   # CT: darker than the repaint
    r = ResidualRule("max", "hyper", pet_channel=1).per_channel(img, rep)[0]
    assert r[1, 0, 0] == pytest.approx(0.5) and r[1, 1, 1] == 0.0
    assert r[0, 2, 2] == pytest.approx(0.4) and r[0, 3, 3] == pytest.approx(0.4)
    assert ResidualRule("max", "abs", pet_channel=1).per_channel(img, rep)[0][1, 1, 1] == pytest.approx(0.5)
    weighted = ResidualRule("max", "hyper", 1, (0.0, 1.0))(img, rep)[0]
    assert weighted[2, 2] == 0.0 and weighted[0, 0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="channel weights"):
        ResidualRule(weights=(1.0,)).per_channel(img, rep)


def test_hot_candidate_covers_its_component() -> None:
    geom = Geometry.for_size(HOT, N)
    hot = disk(N, 40, 50, 9) | disk(N, 100, 100, 2)
    pet = np.where(hot, 0.5, 0.0).astype(np.float32)
    pet[42, 51] = 0.9
    cands = sorted(hot_candidates(3, hot, pet, geom), key=lambda c: -c.pixels.size)
    assert len(cands) == 2
    big = cands[0]
    assert big.centre == (42.0, 51.0) and big.k == 3
    rc = np.argwhere(disk(N, 40, 50, 9))
    assert np.sqrt(((rc - np.array(big.centre)) ** 2).sum(1)).max() < big.radius
    assert cands[1].radius == pytest.approx(geom.radius)  # small hot spot: the paper's circle


def _hot_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """images (10, 2, N, N) at BG, a strong lesion (PET 0.9, slices 3-5) and a weak hot spot (PET 0.3,
    slices 6-7), both marked hot; OOI a big disk."""
    k = 10
    images = np.full((k, 2, N, N), BG, np.float32)
    ooi = np.zeros((k, N, N), bool)
    hot = np.zeros_like(ooi)
    strong = disk(N, 50, 60, 6)
    weak = disk(N, 90, 40, 4)
    for s in range(1, 9):
        ooi[s] = disk(N, 64, 64, 50)
    for s in (3, 4, 5):
        images[s, 1][strong] = 0.9
        hot[s] |= strong
    for s in (6, 7):
        images[s, 1][weak] = 0.3
        hot[s] |= weak
    return images, ooi, hot, strong


def test_hotspot_search_gates_weak_hot_spots_and_counts_few_images() -> None:
    images, ooi, hot, strong = _hot_volume()
    stub = ConstantInpainter(fill=(BG, BG), size=N)
    res = autoinpaint(images, ooi, stub, replace(HOT, gate_level=0.3), hot=hot, pet_channel=1)
    assert stub.images_inpainted == 5  # one pass per hot slice, nothing else
    scores = {c["k"]: c for c in res.extra["candidates"]}
    assert scores[4]["kept"] and not scores[6]["kept"]
    assert scores[4]["score"] == pytest.approx(0.7, abs=1e-5)  # PET excess 0.9 - 0.2
    assert res.residual[4][strong].min() > 0.6
    assert res.residual[6].max() == 0.0 and res.residual[7].max() == 0.0
    # candidate scope: each slice on its own; lesion scope: the 3-D hot spot by its best slice
    ungated = autoinpaint(images, ooi, ConstantInpainter(fill=(BG, BG), size=N), HOT, hot=hot, pet_channel=1)
    assert ungated.residual[6].max() > 0.05


def test_hotspot_needs_a_pet_channel() -> None:
    images, ooi, hot, _ = _hot_volume()
    with pytest.raises(ValueError, match="PET channel"):
        autoinpaint(images, ooi, ConstantInpainter(fill=(BG, BG), size=N), HOT, hot=hot, pet_channel=None)


def test_coverage_grows_a_union_that_cuts_through_a_lesion() -> None:
    images = np.full((1, 2, N, N), BG, np.float32)
    lesion = disk(N, 64, 64, 14)
    images[0, 1][lesion] = 0.9
    hot = np.zeros((1, N, N), bool)
    hot[0] = disk(N, 64, 64, 3)  # only the core is hot: the circle is too small for the lesion
    ooi = np.ones((1, N, N), bool)
    small = replace(HOT, hot_margin_px=4.0)
    one = autoinpaint(images, ooi, ConstantInpainter(fill=(BG, BG), size=N), small, hot=hot, pet_channel=1)
    rule = small.residual_rule(1)
    assert border_fraction(one.unions[0], rule(images, one.autoinpainted)[0], 0.05) > 0.9
    grown = autoinpaint(images, ooi, ConstantInpainter(fill=(BG, BG), size=N),
                        replace(small, coverage_passes=8), hot=hot, pet_channel=1)
    assert grown.extra["coverage_passes"][0] >= 1
    assert (grown.residual[0] > 0.5).sum() > 2 * (one.residual[0] > 0.5).sum()
    assert (grown.residual[0][lesion] > 0.5).mean() > 0.9 > (one.residual[0][lesion] > 0.5).mean()


def _phantom(liver: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(suv, ct, affine): 2 mm voxels, RAS; soft tissue at SUV 0.8, a 'liver' on the right (x > 0),
    caudal half, at SUV 2.2 +- noise."""
    rng = np.random.default_rng(0)
    shape = (80, 60, 50)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-80.0, -60.0, -50.0)
    ct = np.full(shape, 45.0, np.float32) + rng.normal(0, 5, shape).astype(np.float32)
    suv = np.full(shape, 0.8, np.float32) + rng.normal(0, 0.1, shape).astype(np.float32)
    if liver:
        sl = (slice(48, 76), slice(10, 50), slice(2, 22))  # x 16..72 mm (right), z -46..-8 (caudal)
        ct[sl] = 60.0
        suv[sl] = 2.2 + rng.normal(0, 0.2, suv[sl].shape)
        ct[:, :, 30:] = -800.0  # lung above
        suv[:, :, 30:] = 0.4
    return suv, ct, aff


def test_reference_uptake_finds_the_liver_or_says_it_did_not() -> None:
    suv, ct, aff = _phantom(liver=True)
    ref = reference_uptake(suv, ct, aff)
    assert ref.region == "liver"
    assert ref.mean == pytest.approx(2.2, abs=0.1) and 0.1 < ref.sd < 0.35
    assert ref.centre_mm is not None and ref.centre_mm[0] > 0
    assert ref.gate(k=1.0, floor=2.0) == pytest.approx(ref.mean + ref.sd)
    assert ref.percist() == pytest.approx(1.5 * ref.mean + 2 * ref.sd)
    suv2, ct2, _ = _phantom(liver=False)
    soft = reference_uptake(suv2, ct2, aff)
    assert soft.region == "soft_tissue" and soft.mean == pytest.approx(0.8, abs=0.05)
    assert soft.gate(k=0.0, floor=2.0) == 2.0
    assert hot_map(suv, np.ones_like(suv, bool), 2.0).sum() > 0
    assert not hot_map(suv, np.ones_like(suv, bool), float("inf")).any()


def _blurred_sphere(necrotic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:

    shape = (60, 60, 30)
    zz = np.indices(shape).astype(np.float32)
    d = np.sqrt(((zz[0] - 30) * 1.0) ** 2 + ((zz[1] - 30) * 1.0) ** 2 + ((zz[2] - 15) * 2.0) ** 2)
    tumour = d <= 10.0
    act = np.where(tumour, 8.0, 0.4).astype(np.float32)
    if necrotic:
        act[d <= 6.0] = 0.5
    suv = ndimage.gaussian_filter(act, sigma=(2.5, 2.5, 1.25))
    ct = np.where(tumour, 40.0, -850.0).astype(np.float32)
    return suv, ct, tumour, np.ones(shape, bool)


def test_delineation_follows_the_lesion_not_the_detection() -> None:
    suv, ct, tumour, ooi = _blurred_sphere()
    detection = np.zeros_like(tumour)
    detection[26:34, 26:34, 13:17] = True  # a small piece of the lesion, as a residual would give
    spacing = np.array([1.0, 1.0, 2.0])
    assert dice(detection, tumour) < 0.3
    mask, recs = delineate(detection, suv, ooi, spacing, DelineationParams(fraction=0.45))
    assert dice(mask, tumour) > 0.8
    assert recs[0]["peak_suv"] > 6 and recs[0]["background_suv"] < 1.0
    solid, _ = delineate(detection, suv, ooi, spacing, DelineationParams(fraction=0.2, solid_hu=-500.0), ct)
    loose, _ = delineate(detection, suv, ooi, spacing, DelineationParams(fraction=0.2))
    assert dice(solid, tumour) > dice(loose, tumour) and dice(solid, tumour) > 0.95
    kept, none = delineate(detection, suv, ooi, spacing, DelineationParams(method="residual"))
    assert none == [] and np.array_equal(kept, detection)


def test_delineation_fills_a_necrotic_core() -> None:
    suv, _, tumour, ooi = _blurred_sphere(necrotic=True)
    detection = np.zeros_like(tumour)
    detection[:, :, 15] = suv[:, :, 15] >= 2.0
    mask, recs = delineate(detection, suv, ooi, np.array([1.0, 1.0, 2.0]), DelineationParams(fraction=0.6))
    assert suv[30, 30, 15] < recs[0]["level_suv"]  # the core is below the lesion's level ...
    assert mask[30, 30, 15]  # ... and inside the lesion all the same
    assert dice(mask, tumour) > 0.75


def test_contrast_rule_drops_a_faint_spot_and_keeps_the_lesion() -> None:
    suv, _, tumour, ooi = _blurred_sphere()  # peak ~8 over a 0.4 background: contrast ~20
    faint = ndimage.gaussian_filter(np.where(tumour, 1.2, 0.4).astype(np.float32), sigma=(2.5, 2.5, 1.25))
    detection = np.zeros_like(tumour)
    detection[26:34, 26:34, 13:17] = True
    spacing = np.array([1.0, 1.0, 2.0])
    strict = DelineationParams(fraction=0.3, min_contrast=5.0)
    mask, recs = delineate(detection, suv, ooi, spacing, strict)
    assert recs[0]["kept"] and dice(mask, tumour) > 0.8
    gone, recs = delineate(detection, faint, ooi, spacing, strict)  # peak ~1.2 over 0.4: contrast 3 < 5
    assert not recs[0]["kept"] and not gone.any()
    kept, recs = delineate(detection, faint, ooi, spacing, DelineationParams(fraction=0.3))
    assert recs[0]["kept"] and kept.any()


def test_consolidation_drops_small_components() -> None:
    m = np.zeros((20, 20, 20), bool)
    m[2:8, 2:8, 2:8] = True      # 216 voxels of 8 mm^3 = 1.728 ml
    m[15, 15, 15] = True          # 0.008 ml
    out = consolidate(m, np.array([2.0, 2.0, 2.0]), min_ml=0.5)
    assert out[3, 3, 3] and not out[15, 15, 15]
    assert np.array_equal(consolidate(m, np.array([2.0, 2.0, 2.0]), 0.0), m)


def test_lesion_metrics_as_autopet_defines_them() -> None:
    label = np.zeros((30, 30, 30), bool)
    label[2:8, 2:8, 2:8] = True        # 216 voxels: found
    label[20:22, 20:22, 20:22] = True  # 8 voxels: missed
    pred = np.zeros_like(label)
    pred[5:10, 5:10, 5:10] = True      # overlaps the first lesion
    pred[12:14, 25:27, 2:4] = True     # 8 voxels touching nothing
    m = lesion_metrics(pred, label, voxel_ml=0.01, min_ml=1.0)
    assert m["lesions"] == 2 and m["lesions_found"] == 1 and m["sensitivity"] == 0.5
    assert m["lesions_ge_min"] == 1 and m["sensitivity_ge_min"] == 1.0  # 2.16 ml >= 1 ml; 0.08 ml is not
    assert m["fp_components"] == 1 and m["fp_volume_ml"] == pytest.approx(0.08)
    assert m["fn_volume_ml"] == pytest.approx(0.08)
    empty = lesion_metrics(np.zeros_like(label), np.zeros_like(label), 0.01)
    assert empty["fp_components"] == 0 and np.isnan(empty["sensitivity"])
    # 18-connectivity: two voxels touching only at a corner are two lesions
    corner = np.zeros((4, 4, 4), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    assert lesion_metrics(corner, corner, 1.0)["lesions"] == 2


def test_profiles_resolve_card_paper_and_explicit_parts() -> None:
    assert paper({"default_threshold": 0.4}).threshold == 0.4
    assert paper({}, 0.3).source == "paper" and paper({}, 0.3).delineation is None
    card = {"default_threshold": 0.4, "accuracy": {"search": {"candidates": "hotspot", "gate_level": 0.2},
                                                   "delineation": {"fraction": 0.3, "min_ml": 0.5},
                                                   "hotspot": {"k": 1.0}, "threshold": 0.02}}
    acc = from_card(card)
    assert acc.source == "model_card" and acc.search.candidates == "hotspot" and acc.search.gate_level == 0.2
    assert acc.search.radius_px == SearchParams().radius_px  # unspecified fields keep the paper's
    assert acc.delineation is not None and acc.delineation.min_ml == 0.5 and acc.hotspot.k == 1.0
    assert acc.threshold == 0.02
    assert from_card({"default_threshold": 0.4}).source == "paper"
    assert resolve("paper", card).search == SearchParams()
    assert resolve("default", card, search=SearchParams()).source == "explicit"
    with pytest.raises(ValueError, match="profile"):
        resolve("best", card)
    assert SearchParams.from_dict(acc.search.to_dict()) == acc.search


def test_region_gate_joins_the_fragments_of_a_mild_lesion_and_scores_its_peak() -> None:
    """Scope "region": hot fragments joined by residual >= gate_region_level count as one lesion scored
    by its peak residual (kept together); an isolated spike of the same mean is scored alone."""
    from autopaint.segment.guided import HotCandidate, _gate

    k, n = 3, 16
    hot = np.zeros((k, n, n), dtype=bool)
    resid = np.zeros((k, n, n), dtype=np.float32)
    hot[0, 2, 2] = hot[2, 2, 2] = True           # two fragments of one lesion, slices 0 and 2
    resid[:, 2, 2] = 0.15                         # joined through slice 1 by a mild residual
    resid[1, 2, 2] = 0.30                         # the lesion's peak lies between the fragments
    hot[0, 10, 10] = True                         # an isolated spike elsewhere
    resid[0, 10, 10] = 0.15
    flat = lambda r, c: np.array([r * n + c])  # noqa: E731
    cands = [HotCandidate(0, (2, 2), 3.0, flat(2, 2), score=0.15), HotCandidate(2, (2, 2), 3.0, flat(2, 2), score=0.15),
             HotCandidate(0, (10, 10), 3.0, flat(10, 10), score=0.15)]
    params = SearchParams(candidates="hotspot", gate_scope="region", gate_region_level=0.1, gate_level=0.2)
    _gate(cands, hot, params, resid)
    assert [c.lesion_score for c in cands] == pytest.approx([0.30, 0.30, 0.15])
    assert [c.kept for c in cands] == [True, True, False]
    lesion = replace(params, gate_scope="lesion")  # per hot component, best slice score: all gated out
    _gate(cands, hot, lesion, resid)
    assert [c.kept for c in cands] == [False, False, False]
