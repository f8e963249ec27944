"""Service throughput on the embedded service (SQLite + kombu sqla broker + local storage).

1. uploads: ``--uploads`` sequential ``POST /v1/jobs`` of a small thorax phantom (CT + PET NIfTI,
   header-first validation, sanitising and sha256 included), no worker running: MB/s.
2. status polling: ``--pollers`` threads on loopback, each doing ``--polls`` ``GET /v1/jobs/{id}``
   (a bounded loop, not a timed one): latency p50/p95/max and requests/s.
3. jobs/hour for the demo preset (fast mode, CPU) with 1 and with 2 worker processes: ``--jobs``
   jobs submitted at once, wall time from the first submit to the last success. Each worker gets
   ``OMP_NUM_THREADS = cores // workers`` so two workers do not oversubscribe the cores.
   Uses the shipped default model when it exists, else a randomly initialised network of the
   ``demo`` preset (the same FLOPs per image; the masks are then meaningless, the timing is not).

    .venv/bin/python bench/service_throughput.py [--uploads 10] [--pollers 20] [--polls 50] [--jobs 3]

Writes bench/results/service_throughput.md and .json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from autopaint.client import Client
from autopaint.model_cards import DEFAULT_MODEL
from autopaint.settings import Settings
from services.embedded import EmbeddedService, ensure_api_key, prepare

RESULTS = Path(__file__).resolve().parent / "results"
SUV: dict[str, Any] = {"suv_already": True}  # the phantom PET is SUV (a NIfTI PET must say so)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(tmp: Path) -> tuple[Path, str, str]:
    """(models dir, model name, description): the shipped model, else a random demo-preset one."""
    from autopaint.paths import models_dir

    if (models_dir() / DEFAULT_MODEL / "model.pt").is_file():
        return models_dir(), DEFAULT_MODEL, f"{DEFAULT_MODEL} (shipped)"
    import torch

    from autopaint.imaging.preprocess import params_for
    from autopaint.model.checkpoint import save_checkpoint, write_card
    from autopaint.model.networks import build_network, preset_config

    torch.manual_seed(0)
    cfg = preset_config("demo", "gconv_lap", 2)
    name = "random-demo-petct"
    folder = tmp / "models" / name
    folder.mkdir(parents=True)
    save_checkpoint(folder / "model.pt", cfg, build_network(cfg).state_dict(),
                    params_for("thorax", "petct", cfg.size).to_dict(), {"modality": "petct"})
    write_card(folder, {"name": name, "modality": "petct", "arch": cfg.arch, "size": cfg.size})
    return tmp / "models", name, "random-init demo preset (untrained; same FLOPs as the demo model)"


def _service(tmp: Path, tag: str, workers: int, mdir: Path, model: str) -> tuple[EmbeddedService, str]:
    state = tmp / tag
    settings = Settings(state_dir=state, queue=f"bench-{tag}", device="cpu", models_dir=mdir,
                        default_model=model, max_upload_bytes=256 * 1024**2,
                        _env_file=None)  # type: ignore[call-arg]
    prepare(settings)
    key = ensure_api_key(settings, name="bench")
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    svc = EmbeddedService(settings, port=_free_port(), workers=workers, log_dir=state / "logs",
                          worker_env={"AUTOPAINT_MODELS_DIR": str(mdir), "OMP_NUM_THREADS": threads})
    return svc, key


def bench_uploads_and_polls(tmp: Path, case: Path, n_uploads: int, pollers: int, polls: int,
                            mdir: Path, model: str) -> dict[str, Any]:
    svc, key = _service(tmp, "api", 0, mdir, model)
    size = sum((case / f).stat().st_size for f in ("ct.nii.gz", "pet.nii.gz"))
    with svc.running(), Client(svc.url, key) as client:
        client.wait_ready()
        client.submit(ct=case / "ct.nii.gz", pet=case / "pet.nii.gz", params=SUV)  # warm-up
        t0 = time.perf_counter()
        ids = [client.submit(ct=case / "ct.nii.gz", pet=case / "pet.nii.gz", params=SUV)["id"] for _ in range(n_uploads)]
        up_s = time.perf_counter() - t0
        lat: list[float] = []
        lock = threading.Lock()

        def poll(i: int) -> None:
            with Client(svc.url, key) as c:
                mine = []
                for k in range(polls):
                    t = time.perf_counter()
                    c.job(ids[(i + k) % len(ids)])
                    mine.append(time.perf_counter() - t)
            with lock:
                lat.extend(mine)

        threads = [threading.Thread(target=poll, args=(i,)) for i in range(pollers)]
        t1 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        poll_s = time.perf_counter() - t1
    q = statistics.quantiles(lat, n=100)
    return {"upload_bytes_per_job": size, "uploads": n_uploads, "upload_seconds": round(up_s, 3),
            "upload_mb_s": round(size * n_uploads / up_s / 1e6, 2),
            "upload_s_per_job": round(up_s / n_uploads, 3),
            "pollers": pollers, "polls_each": polls, "poll_requests": len(lat),
            "poll_p50_ms": round(q[49] * 1000, 1), "poll_p95_ms": round(q[94] * 1000, 1),
            "poll_max_ms": round(max(lat) * 1000, 1), "poll_req_s": round(len(lat) / poll_s, 1)}


def bench_jobs(tmp: Path, case: Path, workers: int, n_jobs: int, mdir: Path, model: str) -> dict[str, Any]:
    svc, key = _service(tmp, f"w{workers}", workers, mdir, model)
    with svc.running(), Client(svc.url, key) as client:
        client.wait_ready()
        t0 = time.perf_counter()
        ids = [client.submit(ct=case / "ct.nii.gz", pet=case / "pet.nii.gz",
                             params={"preset": "thorax", "mode": "fast", **SUV})["id"] for _ in range(n_jobs)]
        jobs = [client.wait(i, poll_s=0.5) for i in ids]
        wall = time.perf_counter() - t0
    bad = [j for j in jobs if j["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"jobs failed: {[(j['error_code'], j['error_message']) for j in bad]}")
    per_job = [(_ts(j["finished_at"]) - _ts(j["started_at"])) for j in jobs]
    return {"workers": workers, "jobs": n_jobs, "wall_s": round(wall, 1),
            "jobs_per_hour": round(n_jobs / wall * 3600, 1),
            "run_s_mean": round(statistics.mean(per_job), 1),
            "timings_first_job": jobs[0].get("timings")}


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=10)
    ap.add_argument("--pollers", type=int, default=20)
    ap.add_argument("--polls", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--skip-jobs", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from autopaint.data.phantom import write_cohort

    with tempfile.TemporaryDirectory(prefix="autopaint-bench-") as d:
        tmp = Path(d)
        write_cohort("thorax", 1, 0, tmp / "case", "small", 0.0)
        case = next(p for p in (tmp / "case").iterdir() if p.is_dir())
        mdir, model, model_desc = _model(tmp)
        res: dict[str, Any] = {"cpu_count": os.cpu_count(), "model": model_desc,
                               "case": "thorax phantom, size small (CT 256x256x40, PET 128x128x39)"}
        res["api"] = bench_uploads_and_polls(tmp, case, args.uploads, args.pollers, args.polls, mdir, model)
        print(json.dumps(res["api"], indent=1))
        if not args.skip_jobs:
            res["jobs"] = [bench_jobs(tmp, case, w, args.jobs, mdir, model) for w in (1, 2)]
            print(json.dumps(res["jobs"], indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "service_throughput.json").write_text(json.dumps(res, indent=1))
    a = res["api"]
    lines = ["# Service throughput (embedded: SQLite + sqla broker + local storage, loopback)", "",
             f"Machine: {res['cpu_count']} CPU cores, no GPU. Case: {res['case']}. Model: {res['model']}.", "",
             "| measure | value |", "|---|---|",
             f"| upload (CT+PET {a['upload_bytes_per_job'] / 1e6:.2f} MB, validated + stored) | "
             f"{a['upload_mb_s']} MB/s ({a['upload_s_per_job']} s per job, {a['uploads']} uploads) |",
             f"| status poll p50 / p95 / max, {a['pollers']} concurrent pollers x {a['polls_each']} | "
             f"{a['poll_p50_ms']} / {a['poll_p95_ms']} / {a['poll_max_ms']} ms ({a['poll_req_s']} req/s) |"]
    for j in res.get("jobs", []):
        lines.append(f"| jobs/hour, demo preset, fast mode, {j['workers']} CPU worker(s) | "
                     f"{j['jobs_per_hour']} ({j['jobs']} jobs in {j['wall_s']} s; {j['run_s_mean']} s per job run) |")
    (RESULTS / "service_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
