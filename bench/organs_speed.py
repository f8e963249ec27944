"""Organ-of-interest mask speed and quality on full-size phantoms (target: ``ooi_mask`` <= 4 s for a
512 x 512 x ~100 CT on one core).

    .venv/bin/python bench/organs_speed.py [--seeds 900-911] [--headneck-seeds 900-902] [--repeats 2]
        [--baseline /tmp/organs_before.py] [--out work/organs_speed.json]

The process is pinned to one CPU core. Times are the best of ``--repeats`` runs, as process CPU time
(the honest number on a shared machine) and wall time. Per thorax case it reports the lung-field
volume (ml) and, per tumour (site from the phantom's cases.json entry), the fraction of its label
voxels inside the lung field, for the current ``lung_mask`` and for the reference = the first
version's algorithm (per-slice 25 mm disk closing at full resolution, ``_lung_field(factor=1,
ball=False)``, bit-identical to it), plus the Dice between the two. ``--baseline FILE``: a copy of
an earlier organs.py (``git show REV:shared/autopaint/imaging/organs.py > FILE``), timed on the same
cases and checked against the reference. Phantom generation is not timed.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import cc3d  # noqa: E402
import numpy as np  # noqa: E402

from autopaint.data.phantom import generate_case  # noqa: E402
from autopaint.errors import InvalidInput  # noqa: E402
from autopaint.imaging import organs  # noqa: E402
from autopaint.imaging.volume import Volume  # noqa: E402


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """(result, best CPU s, best wall s)."""
    cpu, wall, res = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        res = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return res, round(min(cpu), 3), round(min(wall), 3)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)), 4)


def _tumours(label: np.ndarray, ct: Volume, info: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """(site, bool mask) per 26-connected label component; site of the nearest cases.json tumour."""
    comps, n = cc3d.connected_components(label > 0, connectivity=26, return_N=True)
    out = []
    for lab in range(1, int(n) + 1):
        one = comps == lab
        c = ct.affine[:3, :3] @ np.argwhere(one).mean(axis=0) + ct.affine[:3, 3]
        near = min(info["tumours"], key=lambda t: float(np.linalg.norm(np.subtract(t["centroid_mm"], c))))
        out.append((str(near["site"]), one))
    return out


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("organs_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def thorax_case(seed: int, repeats: int, base: ModuleType | None) -> dict[str, Any]:
    case = generate_case("thorax", seed, "full")
    ct, label = case.ct, np.asarray(case.label.data)
    new, cpu, wall = _timed(lambda: organs.ooi_mask(ct, "thorax"), repeats)
    ref, ref_cpu, _ = _timed(lambda: organs._lung_field(ct, 25.0, 3.0, 1, ball=False), 1)
    _, body_cpu, _ = _timed(lambda: organs.body_mask(ct), repeats)
    ml = ct.voxel_volume_ml
    row: dict[str, Any] = {
        "seed": seed, "shape": list(ct.shape), "spacing_mm": [round(float(v), 3) for v in ct.spacing],
        "lung_cpu_s": cpu, "lung_wall_s": wall, "body_cpu_s": body_cpu, "reference_cpu_s": ref_cpu,
        "lung_ml": round(float(new.sum() * ml), 1), "reference_ml": round(float(ref.sum() * ml), 1),
        "dice_vs_reference": _dice(new, ref),
        "tumours": [{"site": site, "ml": round(float(one.sum() * ml), 2),
                     "inside": round(float((one & new).sum() / one.sum()), 3),
                     "inside_reference": round(float((one & ref).sum() / one.sum()), 3)}
                    for site, one in _tumours(label, ct, case.info)],
    }
    if base is not None:
        old, base_cpu, base_wall = _timed(lambda: base.ooi_mask(ct, "thorax"), 1)
        row.update(baseline_cpu_s=base_cpu, baseline_wall_s=base_wall,
                   baseline_equals_reference=bool(np.array_equal(old, ref)))
    return row


def headneck_case(seed: int, repeats: int, base: ModuleType | None) -> dict[str, Any]:
    case = generate_case("headneck", seed, "full")
    ct, label = case.ct, np.asarray(case.label.data) > 0
    m, cpu, wall = _timed(lambda: organs.ooi_mask(ct, "headneck"), repeats)
    ks = np.flatnonzero(m.any(axis=(0, 1)))
    row: dict[str, Any] = {
        "seed": seed, "shape": list(ct.shape), "cpu_s": cpu, "wall_s": wall,
        "ml": round(float(m.sum() * ct.voxel_volume_ml), 1), "slices": [int(ks[0]), int(ks[-1])],
        "label_inside": round(float((m & label).sum() / label.sum()), 3) if label.any() else None,
    }
    if base is not None:
        c0 = time.process_time()
        try:
            base.ooi_mask(ct, "headneck")
        except InvalidInput as e:   # the first version's apex search stopped at the sinuses
            row.update(baseline_error=e.code)
        row.update(baseline_cpu_s=round(time.process_time() - c0, 3))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="900-911")
    ap.add_argument("--headneck-seeds", default="900-902")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    base = _load(args.baseline) if args.baseline else None
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "pinned_to_one_core": hasattr(os, "sched_setaffinity"),
                              "load_avg_1min": round(os.getloadavg()[0], 2), "thorax": [], "headneck": []}
    for seed in _seeds(args.seeds):
        r = thorax_case(seed, args.repeats, base)
        report["thorax"].append(r)
        tums = " ".join(f"{t['site'][:9]}:{t['inside_reference']:.3f}->{t['inside']:.3f}" for t in r["tumours"])
        extra = f" | baseline {r['baseline_cpu_s']:.2f} s" if base is not None else ""
        print(f"thorax {seed} {r['shape']}: lung {r['lung_cpu_s']:.2f} s cpu ({r['lung_wall_s']:.2f} wall){extra}; "
              f"{r['reference_ml']:.0f} -> {r['lung_ml']:.0f} ml, dice {r['dice_vs_reference']:.4f}; {tums}", flush=True)
    for seed in _seeds(args.headneck_seeds):
        r = headneck_case(seed, args.repeats, base)
        report["headneck"].append(r)
        extra = (f" | baseline {r['baseline_cpu_s']:.2f} s {r.get('baseline_error', '')}" if base is not None else "")
        print(f"headneck {seed} {r['shape']}: {r['cpu_s']:.2f} s cpu ({r['wall_s']:.2f} wall){extra}; {r['ml']:.0f} ml, "
              f"slices {r['slices']}, label inside {r['label_inside']}", flush=True)
    th = report["thorax"]
    juxta = [t for r in th for t in r["tumours"] if t["site"] != "intraparenchymal"]
    summary: dict[str, Any] = {
        "thorax_cpu_s_max": max(r["lung_cpu_s"] for r in th),
        "thorax_cpu_s_median": statistics.median(r["lung_cpu_s"] for r in th),
        "dice_vs_reference_min": min(r["dice_vs_reference"] for r in th),
        "lung_ml_change_pct_mean": round(statistics.mean(100 * (r["lung_ml"] / r["reference_ml"] - 1) for r in th), 2),
        "juxta_inside_min": min((t["inside"] for t in juxta), default=None),
        "juxta_inside_reference_min": min((t["inside_reference"] for t in juxta), default=None),
        "juxtapleural_below_95pct": sum(t["inside"] < 0.95 for t in juxta if t["site"] == "juxtapleural"),
        "juxtapleural_below_95pct_reference": sum(t["inside_reference"] < 0.95 for t in juxta
                                                  if t["site"] == "juxtapleural"),
        "headneck_cpu_s_max": max((r["cpu_s"] for r in report["headneck"]), default=None),
    }
    if base is not None:
        summary["baseline_thorax_cpu_s_max"] = max(r["baseline_cpu_s"] for r in th)
        summary["baseline_equals_reference_all"] = all(r["baseline_equals_reference"] for r in th)
    report["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
