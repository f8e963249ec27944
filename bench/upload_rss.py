"""Peak API memory per upload: one ~210 MB CT, then three at once, to an API in a subprocess.

The API (``create_app``: SQLite, ``memory://`` broker, local storage in a temp folder, reconciler
off) runs under uvicorn in a child process; the parent uploads a synthetic CT (int16 512x512x400,
an uncompressed ``.nii`` of 210 MB, HU-like values) plus a small SUV PET over loopback and reads
the child's ``VmRSS`` (idle) and ``VmHWM`` (peak since start) from ``/proc/<pid>/status``. Each
scenario gets a fresh child, so each peak is clean.

    .venv/bin/python -m bench.upload_rss [--concurrent 1,3] [--old-ingest]

``--old-ingest``: the git HEAD version of ``services.api.ingest.sanitize_and_store`` (the whole
volume read and re-written in memory) and no ingest semaphore, for the before numbers.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (512, 512, 400)


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) // 1024  # MiB
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_inputs(folder: Path) -> tuple[Path, Path]:
    import nibabel as nib

    aff = np.diag([0.8, 0.8, 1.0, 1.0])
    aff[:3, 3] = [-204.8, -204.8, -200.0]
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1500, size=SHAPE, dtype=np.int16)
    ct_path = folder / "ct.nii"
    nib.save(nib.Nifti1Image(ct, aff), str(ct_path))
    del ct
    pet_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    pet_aff[:3, 3] = [-204.8, -204.8, -200.0]
    pet = rng.random((100, 100, 100), dtype=np.float32) * 5.0
    pet_path = folder / "pet.nii.gz"
    nib.save(nib.Nifti1Image(pet, pet_aff), str(pet_path))
    return ct_path, pet_path


def serve(state: Path, port: int, old_ingest: bool) -> None:
    """The child: migrate, mint a key (written to ``state/key``), serve on 127.0.0.1:port."""
    import uvicorn

    from autopaint.db import make_engine, make_session_factory
    from autopaint.db.migrate import upgrade
    from autopaint.settings import Settings
    from services.api.app import create_app
    from services.api.auth import create_api_key

    settings = Settings(state_dir=state, broker_url="memory://", reconcile_s=0,
                        max_concurrent_ingests=10 if old_ingest else 2, _env_file=None)  # type: ignore[call-arg]
    settings.ensure_dirs()
    upgrade(settings.database_url)
    with make_session_factory(make_engine(settings.database_url))() as s:
        (state / "key").write_text(create_api_key(s, "bench")[1])
    if old_ingest:
        import types

        from services.api import routes_jobs

        src = subprocess.run(["git", "show", "HEAD:services/api/ingest.py"], capture_output=True, text=True,
                             check=True).stdout
        mod = types.ModuleType("old_ingest")
        sys.modules["old_ingest"] = mod
        exec(compile(src, "old_ingest.py", "exec"), mod.__dict__)  # noqa: S102 - the repo's own file
        routes_jobs.sanitize_and_store = mod.sanitize_and_store  # type: ignore[attr-defined]
    app = create_app(settings)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _upload(url: str, key: str, ct: Path, pet: Path, out: list[Any]) -> None:
    import httpx

    with open(ct, "rb") as fct, open(pet, "rb") as fpet:
        r = httpx.post(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                       files={"ct": ("ct.nii", fct), "pet": ("pet.nii.gz", fpet)},
                       data={"params": json.dumps({"suv_already": True, "check_units": False})}, timeout=600)
    out.append((r.status_code, r.json().get("code") or r.json().get("state")))


def scenario(n: int, ct: Path, pet: Path, old_ingest: bool) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory(prefix="upload-rss-") as tmp:
        state, port = Path(tmp), _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "bench.upload_rss", "--serve", str(state), str(port),
                                 *(["--old-ingest"] if old_ingest else [])])
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            idle = _status(proc.pid)
            key = (state / "key").read_text()
            answers: list[Any] = []
            t0 = time.monotonic()
            threads = [threading.Thread(target=_upload, args=(url, key, ct, pet, answers)) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            peak = _status(proc.pid)
            return {"concurrent": n, "old_ingest": old_ingest, "idle_rss_mib": idle["VmRSS"],
                    "peak_rss_mib": peak["VmHWM"], "seconds": round(time.monotonic() - t0, 1),
                    "answers": answers}
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", nargs=2, metavar=("STATE", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--concurrent", default="1,3")
    ap.add_argument("--old-ingest", action="store_true")
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.old_ingest)
        return
    with tempfile.TemporaryDirectory(prefix="upload-rss-in-") as tmp:
        ct, pet = write_inputs(Path(tmp))
        print(f"CT upload: {ct.stat().st_size / 1e6:.0f} MB ({SHAPE} int16), PET {pet.stat().st_size / 1e6:.1f} MB",
              flush=True)
        for n in (int(x) for x in args.concurrent.split(",")):
            print(json.dumps(scenario(n, ct, pet, args.old_ingest)), flush=True)


if __name__ == "__main__":
    main()
