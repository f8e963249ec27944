"""Phantom generation speed per kind (target: one full-size case <= 20 s on 2 cores).

    .venv/bin/python bench/phantom_speed.py [--size full] [--repeats 2] [--out work/phantom_speed.json]

Reports wall time and process CPU time per case (CPU time is the honest number on a shared machine:
wall time grows with other users' load). Writing the NIfTI files is not included.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from autopaint.data.phantom import generate_case


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="full")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    report: dict[str, object] = {"size": args.size, "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}
    for kind in ("thorax", "headneck"):
        walls, cpus, shapes = [], [], []
        for seed in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            case = generate_case(kind, 100 + seed, args.size, healthy=False)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            shapes.append(list(case.ct.shape))
        report[kind] = {"wall_s": [round(v, 2) for v in walls], "cpu_s": [round(v, 2) for v in cpus],
                        "mean_wall_s": round(sum(walls) / len(walls), 2), "mean_cpu_s": round(sum(cpus) / len(cpus), 2),
                        "ct_shapes": shapes}
        print(f"{kind:9s} {args.size}: wall {report[kind]['mean_wall_s']} s, cpu {report[kind]['mean_cpu_s']} s "
              f"per case, CT {shapes}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
