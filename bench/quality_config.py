"""Budgets of bench/quality.py: what is generated, trained and evaluated at ``small`` and ``paper``.

``small`` is sized for ~30-40 minutes on an otherwise idle 2-core CPU: phantom cohorts at
``size="small"`` (256 x 256 x 40 CT), 128 x 128 model images, the shipped equal-budget PET/CT models
(GconvLap, Gconv, Pconv) for every cohort, time-budgeted trainings of 30-90 s per other model (thorax
CT- and PET-only GconvLap, dAE, VAE), fast mode for every segmentation (autoinpainting with all three
PET/CT networks, GconvLap on CT and PET alone on thorax) and exact mode on the 3 most tumour-laden slices of two thorax test
patients. ``paper`` is meant for a
GPU: larger cohorts, every modality x architecture, longer trainings, exact mode on whole volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARCH_NAMES = {"gconv_lap": "GconvLap", "gconv": "Gconv", "pconv": "Pconv"}
MODALITY_NAMES = {"ct": "CT", "pet": "PET", "petct": "PET/CT"}


@dataclass(frozen=True)
class CohortPlan:
    """One cohort. ``source``: "phantom" (generated) or a folder name under the data dir (real data).

    ``n``/``seed``/``healthy_fraction``/``phantom_size``: phantom cohort drawing (ignored for real data).
    ``split``: (train, val, test) fractions by patient, given to ``data.datasets.build_dataset``.
    ``inpaint_archs``: archs trained on PET/CT for the inpainting table (Tables 1-2).
    ``seg``: modality -> archs segmented with autoinpainting (fast mode).
    ``uad``: train the dAE / VAE baselines (on the PET/CT healthy slices) and segment with them.
    ``max_test_cases``/``max_val_cases``: caps on the patients segmented (None = all of the split).
    """

    name: str
    kind: str  # phantom kind or real cohort name
    preset: str
    source: str = "phantom"
    n: int = 0
    seed: int = 0
    healthy_fraction: float = 0.0
    phantom_size: str = "small"
    split: tuple[float, float, float] = (0.6, 0.15, 0.25)
    inpaint_archs: tuple[str, ...] = ("gconv_lap",)
    seg: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"petct": ("gconv_lap",)})
    uad: bool = True
    max_test_cases: int | None = None
    max_val_cases: int | None = None
    ct_window: tuple[float, float] | None = None  # None: the preset's window
    exact: bool = False  # compare exact vs fast mode on this cohort's test patients


@dataclass(frozen=True)
class Budget:
    """Everything that scales with compute. Seconds are wall-clock training budgets per model."""

    name: str
    size: int
    cohorts: tuple[CohortPlan, ...]
    train_seconds: dict[str, float]  # arch (gconv_lap/gconv/pconv/dae/vae) -> seconds
    epochs: int
    max_inpaint_images: int
    exact_cases: int
    exact_slices: int | None  # None = whole volume
    reuse_shipped: bool = True
    hole_seed: int = 2024
    uad_width: int = 16  # dAE / VAE channels of the first encoder stage (doubled per stage, max 8x)
    calib_slices: int = 400  # healthy validation slices for fast mode's screen-level calibration


SMALL = Budget(
    name="small",
    size=128,
    cohorts=(
        CohortPlan(
            name="thorax", kind="thorax", preset="thorax", n=20, seed=7001, healthy_fraction=0.2,
            split=(0.55, 0.15, 0.3), max_val_cases=2,
            inpaint_archs=("gconv_lap", "gconv", "pconv"),
            seg={"petct": ("gconv_lap", "gconv", "pconv"), "pet": ("gconv_lap",), "ct": ("gconv_lap",)},
            exact=True,
        ),
        CohortPlan(
            name="headneck", kind="headneck", preset="headneck", n=14, seed=7002, healthy_fraction=0.2,
            split=(0.55, 0.15, 0.3), inpaint_archs=("gconv_lap", "gconv", "pconv"),
            seg={"petct": ("gconv_lap", "gconv", "pconv")},
        ),
        CohortPlan(
            name="ibsi-sts", kind="ibsi-sts", preset="custom", ct_window=(-200.0, 200.0), source="ibsi-sts",
            split=(0.7, 0.1, 0.2), inpaint_archs=("gconv_lap", "gconv", "pconv"),
            seg={"petct": ("gconv_lap", "gconv", "pconv")},
        ),
    ),
    # equal seconds per inpainting architecture where a cohort has no shipped equal-budget models (CT-
    # and PET-only models); the PET/CT networks of every cohort are the shipped GconvLap and its
    # Gconv/Pconv siblings, trained with the same recorded configuration (bench/archs.py)
    train_seconds={"gconv_lap": 90.0, "gconv": 90.0, "pconv": 90.0, "dae": 30.0, "vae": 30.0},
    epochs=200,
    max_inpaint_images=48,
    exact_cases=2,
    exact_slices=3,
    uad_width=8,
    calib_slices=24,
)

PAPER = Budget(
    name="paper",
    size=128,
    cohorts=(
        CohortPlan(
            name="thorax", kind="thorax", preset="thorax", n=60, seed=7001, healthy_fraction=0.2,
            split=(0.7, 0.1, 0.2), phantom_size="full", inpaint_archs=("gconv_lap", "gconv", "pconv"),
            seg={m: ("gconv_lap", "gconv", "pconv") for m in ("petct", "pet", "ct")}, exact=True,
        ),
        CohortPlan(
            name="headneck", kind="headneck", preset="headneck", n=60, seed=7002, healthy_fraction=0.2,
            split=(0.7, 0.1, 0.2), phantom_size="full", inpaint_archs=("gconv_lap", "gconv", "pconv"),
            seg={m: ("gconv_lap", "gconv", "pconv") for m in ("petct", "pet", "ct")},
        ),
        CohortPlan(
            name="ibsi-sts", kind="ibsi-sts", preset="custom", ct_window=(-200.0, 200.0), source="ibsi-sts",
            split=(0.6, 0.15, 0.25), inpaint_archs=("gconv_lap", "gconv", "pconv"),
            seg={m: ("gconv_lap", "gconv", "pconv") for m in ("petct", "pet", "ct")},
        ),
    ),
    train_seconds={"gconv_lap": 3600.0, "gconv": 3600.0, "pconv": 3600.0, "dae": 900.0, "vae": 900.0},
    epochs=300,
    max_inpaint_images=2000,
    exact_cases=1000,
    exact_slices=None,
    reuse_shipped=False,
)

# A few minutes end to end: checks that every stage runs (numbers are meaningless).
SMOKE = Budget(
    name="smoke",
    size=128,
    cohorts=(
        CohortPlan(name="thorax", kind="thorax", preset="thorax", n=5, seed=7101, healthy_fraction=0.2,
                   split=(0.4, 0.2, 0.4), inpaint_archs=("gconv_lap", "pconv"),
                   seg={"petct": ("gconv_lap",)}, max_test_cases=2, max_val_cases=1, exact=True),
        CohortPlan(name="ibsi-sts", kind="ibsi-sts", preset="custom", ct_window=(-200.0, 200.0), source="ibsi-sts",
                   split=(0.6, 0.15, 0.25), seg={"petct": ("gconv_lap",)}, max_test_cases=2, max_val_cases=1),
    ),
    train_seconds={"gconv_lap": 10.0, "gconv": 10.0, "pconv": 10.0, "dae": 5.0, "vae": 5.0},
    epochs=2,
    max_inpaint_images=8,
    exact_cases=1,
    exact_slices=1,
    reuse_shipped=False,
    uad_width=8,
    calib_slices=4,
)

BUDGETS = {"small": SMALL, "paper": PAPER, "smoke": SMOKE}
