"""CPU inference throughput of a shipped model: memory format x batch size x threads, side by side.

Why the Inpainter runs channels_last with chunks of 16 images on CPU: this prints images/s of the
same forward pass (eval mode, holes of one slice-sized batch) for each combination, in one run.

    .venv/bin/python bench/cpu_inference.py [--model thorax-petct-gconvlap-128] [--images 128]

Writes bench/results/cpu_inference.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autopaint.model.inpainter import Inpainter

RESULTS = Path(__file__).resolve().parent / "results"


def images_per_s(inp: Inpainter, x: np.ndarray, m: np.ndarray, repeats: int) -> float:
    inp.inpaint(x[: inp.max_batch], m[: inp.max_batch])  # warm-up (oneDNN primitive cache)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        inp.inpaint(x, m)
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="thorax-petct-gconvlap-128")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_inference.md")
    args = ap.parse_args()
    inp = Inpainter.load(args.model, device="cpu")
    rng = np.random.default_rng(0)
    n, c = inp.size, inp.in_channels
    x = rng.random((args.images, c, n, n), dtype=np.float32)
    m = np.ones((args.images, 1, n, n), np.float32)
    m[:, :, n // 3 : n // 2, n // 3 : n // 2] = 0.0
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        for fmt_name, fmt in (("contiguous (NCHW)", torch.contiguous_format), ("channels_last (NHWC)", torch.channels_last)):
            inp.net.to(memory_format=fmt)  # type: ignore[call-overload]
            inp._fmt = fmt
            for batch in (8, 16, 32, 64):
                inp.max_batch = batch
                rows.append((threads, fmt_name, batch, images_per_s(inp, x, m, args.repeats)))
                print(rows[-1], flush=True)
    base = {(t, b): v for t, f, b, v in rows if f.startswith("contiguous")}
    lines = [f"# CPU inference throughput ({inp.card.get('name')}, {n}x{n}, {c} channels)", "",
             f"Command: `python {' '.join(sys.argv)}`  ",
             f"torch {torch.__version__}, {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.2f}. "
             "Best of the repeats; eval mode; one square hole per image.", "",
             "| threads | memory format | images per forward | images/s | vs NCHW same batch |", "|---|---|---|---|---|"]
    for t, f, b, v in rows:
        lines.append(f"| {t} | {f} | {b} | {v:.1f} | {v / base[(t, b)]:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
