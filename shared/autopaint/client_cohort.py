"""Cohort submission for ``autopaint cohort submit DIR --concurrency N`` (client side, httpx).

A cohort folder holds one sub-folder per case with ``ct.nii.gz`` and/or ``pet.nii.gz`` (and
optionally ``label.nii.gz``, ``organ_mask.nii.gz``), as ``autopaint.data.phantom.write_cohort``
writes them; a case's CT or PET may instead be a DICOM series folder ``ct/`` or ``pet/`` (zipped on
the fly by :meth:`autopaint.client.Client.submit`). The same job parameters (the PET units included)
go with every case; a case the server refuses (413/422, e.g. ``pet_units_implausible``) is recorded
as failed with its error code and the others go on. ``run_cohort`` keeps at most ``concurrency`` jobs in flight, shows one progress row
per case (rich), downloads each finished case to ``OUT/<case>/`` and writes ``OUT/summary.csv``.

Resuming: ``OUT/cohort_state.json`` (rewritten atomically after every change) records the server
cohort id and, per case, the job id, its last state and whether its results were downloaded. A
restarted run skips cases already succeeded and downloaded, follows jobs still queued/running
instead of submitting them again, and resubmits failed or cancelled ones. Each submission carries
an idempotency key written to the state file *before* the upload, so a crash between the upload
and the state write cannot create a second job on restart.

Callbacks: with ``callback_url`` the server cohort is created with it and ``expected_jobs`` = the
number of cases, and it is closed (``Client.close_cohort``) once every case was submitted or refused,
so its one ``cohort.completed`` POST comes when the accepted jobs have all finished, never earlier
(a case still to be submitted keeps it open), and even if this process is gone by then.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopaint.client import TERMINAL, ApiError, Client, read_lesions
from autopaint.fsutil import atomic_open, atomic_write_bytes

log = logging.getLogger(__name__)

STATE_FILE = "cohort_state.json"
SUMMARY_FILE = "summary.csv"
ROLE_FILES = {"ct": "ct.nii.gz", "pet": "pet.nii.gz", "organ_mask": "organ_mask.nii.gz",
              "label": "label.nii.gz"}
DICOM_DIRS = {"ct": "ct", "pet": "pet"}
"""Roles a case may give as a DICOM series folder (used when the NIfTI file is absent)."""
SUMMARY_FIELDS = ["case", "job_id", "state", "attempts", "error_code", "lesions", "dice",
                  "threshold", "seconds", "results_dir"]


@dataclass(frozen=True)
class CohortCase:
    name: str
    files: dict[str, Path]  # role -> path


@dataclass(frozen=True)
class CohortSummary:
    succeeded: int
    failed: int
    skipped: int
    csv_path: Path
    rows: list[dict[str, Any]]


def discover_cases(directory: Path) -> list[CohortCase]:
    """Sub-folders of ``directory`` holding a CT or a PET (NIfTI file or DICOM folder), sorted by name."""
    cases = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        files = {role: sub / fname for role, fname in ROLE_FILES.items() if (sub / fname).is_file()}
        for role, dname in DICOM_DIRS.items():
            if role not in files and (sub / dname).is_dir():
                files[role] = sub / dname
        if "ct" in files or "pet" in files:
            cases.append(CohortCase(sub.name, files))
    return cases


class CohortState:
    """The resumable state file (thread-safe; atomic rewrite on every update)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"cohort_id": None, "cases": {}}
        if path.is_file():
            self.data = json.loads(path.read_text())

    def case(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.data["cases"].get(name, {}))

    def update(self, name: str | None = None, **fields: Any) -> None:
        with self._lock:
            target = self.data if name is None else self.data["cases"].setdefault(name, {})
            target.update(fields)
            atomic_write_bytes(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())


def _report_fields(case_dir: Path) -> dict[str, Any]:
    report_path = case_dir / "report.json"
    out: dict[str, Any] = {"lesions": len(read_lesions(case_dir)) if case_dir.is_dir() else None}
    if report_path.is_file():
        rep = json.loads(report_path.read_text())
        out["threshold"] = (rep.get("threshold") or {}).get("value")
        at = ((rep.get("metrics") or {}).get("at_threshold") or {})
        out["dice"] = at.get("dice")
    return out


class CaseRunner:
    """Submit (or re-attach to) one case, follow it, download it; updates the state file."""

    def __init__(self, client: Client, state: CohortState, out: Path, params: dict[str, Any],
                 download: bool, on_update: Callable[[str, dict[str, Any]], None],
                 poll_s: float) -> None:
        self.client, self.state, self.out, self.params = client, state, out, params
        self.download, self.on_update, self.poll_s = download, on_update, poll_s
        self._to_place, self._lock = 0, threading.Lock()  # cases still to submit (or be refused)

    def plan(self, todo: list[CohortCase]) -> None:
        """``todo`` will run: count the cases that will be submitted (or followed) on the server."""
        self._to_place = sum(1 for c in todo if self.state.case(c.name).get("state") != "succeeded")

    def _placed(self) -> None:
        """One case submitted or refused; after the last one, close the server cohort (no more jobs)."""
        with self._lock:
            self._to_place -= 1
            last = self._to_place == 0
        if last:
            try:
                self.client.close_cohort(str(self.state.data["cohort_id"]))
            except ApiError as exc:  # an older server without close: its cohort completes without it
                log.warning("could not close cohort: %s", exc)

    def needs_work(self, case: CohortCase) -> bool:
        st = self.state.case(case.name)
        return not (st.get("state") == "succeeded" and (st.get("downloaded") or not self.download))

    def run(self, case: CohortCase) -> dict[str, Any]:
        st = self.state.case(case.name)
        t0 = time.monotonic()
        if st.get("state") == "succeeded" and st.get("job_id"):
            job_id = str(st["job_id"])  # finished, only the download is missing
        else:
            try:
                job_id = self._attach_or_submit(case, st)
            except ApiError as exc:
                if exc.status not in (413, 422):
                    raise
                self._placed()
                return self._refused(case, exc, t0)
            self._placed()
        job = self.client.wait(job_id, on_progress=lambda j: self._progress(case.name, j),
                               poll_s=self.poll_s)
        self.state.update(case.name, state=job["state"], attempts=job["attempts"],
                          error_code=job.get("error_code"))
        row: dict[str, Any] = {"case": case.name, "job_id": job_id, "state": job["state"],
                               "attempts": job["attempts"], "error_code": job.get("error_code") or ""}
        if job["state"] == "succeeded" and self.download:
            case_dir = self.out / case.name
            self.client.download(job_id, case_dir)
            self.state.update(case.name, downloaded=True)
            row.update(_report_fields(case_dir), results_dir=str(case_dir))
        row["seconds"] = round(time.monotonic() - t0, 2)
        return row

    def _attach_or_submit(self, case: CohortCase, st: dict[str, Any]) -> str:
        job_id = st.get("job_id")
        if job_id and st.get("state") not in ("failed", "cancelled"):
            return str(job_id)  # still queued/running on the server (or finished since): follow it
        if st.get("state") == "submitting" and st.get("idempotency_key"):
            key = str(st["idempotency_key"])  # interrupted upload: the server may have the job
        else:
            n = int(st.get("submissions", 0)) + 1
            key = f"cohort-{self.state.data['cohort_id']}-{case.name}-{n}"
            self.state.update(case.name, submissions=n, idempotency_key=key, state="submitting",
                              job_id=None)
        files: dict[str, Any] = dict(case.files)  # role -> path
        job = self.client.submit(**files, params=self.params,
                                 case_name=case.name, cohort_id=self.state.data["cohort_id"],
                                 idempotency_key=key)
        self.state.update(case.name, job_id=job["id"], state=job["state"], downloaded=False)
        self._progress(case.name, job)
        return str(job["id"])

    def _refused(self, case: CohortCase, exc: ApiError, t0: float) -> dict[str, Any]:
        """The server refused the case's inputs: a failed row with the error code (resubmitted on a
        restart, like any failed case)."""
        log.warning("case %s refused: %s", case.name, exc)
        self.state.update(case.name, state="failed", error_code=exc.code, job_id=None)
        self.on_update(case.name, {"state": "failed", "progress": {}, "error_code": exc.code})
        return {"case": case.name, "job_id": None, "state": "failed", "attempts": 0, "error_code": exc.code,
                "seconds": round(time.monotonic() - t0, 2)}

    def _progress(self, name: str, job: dict[str, Any]) -> None:
        if job["state"] not in TERMINAL and job["state"] != self.state.case(name).get("state"):
            self.state.update(name, state=job["state"])
        self.on_update(name, job)


def _row_from_state(name: str, st: dict[str, Any], out: Path) -> dict[str, Any]:
    row = {"case": name, "job_id": st.get("job_id"), "state": st.get("state"),
           "attempts": st.get("attempts"), "error_code": st.get("error_code") or "", "seconds": 0.0}
    case_dir = out / name
    if case_dir.is_dir():
        row.update(_report_fields(case_dir), results_dir=str(case_dir))
    return row


@contextlib.contextmanager
def _rich_rows(names: list[str], enabled: bool) -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """A rich progress display with one row per case; yields ``update(name, job)``."""
    if not enabled:
        yield lambda name, job: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn()) as bar:
        rows = {n: bar.add_task(n, total=1.0, status="waiting") for n in names}

        def update(name: str, job: dict[str, Any]) -> None:
            prog = job.get("progress") or {}
            frac = 1.0 if job["state"] == "succeeded" else float(prog.get("fraction") or 0.0)
            status = job["state"]
            if job["state"] == "running":
                status = f"{prog.get('stage')} {prog.get('done')}/{prog.get('total')} {prog.get('unit')}"
            elif job["state"] == "queued" and job.get("queue_position"):
                status = f"queued #{job['queue_position']}"
            bar.update(rows[name], completed=frac, status=status)

        yield update


def run_cohort(client: Client, directory: Path, out: Path, concurrency: int = 4,
               params: dict[str, Any] | None = None, download: bool = True,
               show_progress: bool = False, poll_s: float = 1.0,
               on_update: Callable[[str, dict[str, Any]], None] | None = None,
               callback_url: str | None = None) -> CohortSummary:
    """Submit every case of ``directory``, at most ``concurrency`` in flight; resumable (see the
    module docstring). ``on_update(case, job)`` is called after every status poll. ``callback_url``:
    the cohort's ``cohort.completed`` callback (a new cohort only; see the module docstring)."""
    cases = discover_cases(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = CohortState(out / STATE_FILE)
    if not state.data.get("cohort_id"):
        cohort = client.create_cohort(directory.name[:200] or "cohort", callback_url=callback_url,
                                      expected_jobs=len(cases) if callback_url and cases else None)
        state.update(cohort_id=cohort["id"])
    with _rich_rows([c.name for c in cases], show_progress) as show:

        def update(name: str, job: dict[str, Any]) -> None:
            show(name, job)
            if on_update is not None:
                on_update(name, job)

        runner = CaseRunner(client, state, out, params or {}, download, update, poll_s)
        todo = [c for c in cases if runner.needs_work(c)]
        runner.plan(todo)
        skipped = [c for c in cases if c not in todo]
        for c in skipped:
            show(c.name, {"state": "succeeded", "progress": {}})
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            done_rows = {r["case"]: r for r in pool.map(runner.run, todo)}
    rows = [done_rows.get(c.name) or _row_from_state(c.name, state.case(c.name), out) for c in cases]
    csv_path = out / SUMMARY_FILE
    with atomic_open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    ok = sum(1 for r in rows if r["state"] == "succeeded")
    return CohortSummary(succeeded=ok - len(skipped), failed=len(rows) - ok, skipped=len(skipped),
                         csv_path=csv_path, rows=rows)


@contextlib.contextmanager
def rich_job_progress() -> Iterator[Callable[[dict[str, Any]], None]]:
    """A rich progress bar for one job; yields the ``on_progress(job)`` callback of ``wait``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("queued", total=1.0, status="")

        def update(job: dict[str, Any]) -> None:
            prog = job.get("progress") or {}
            frac = 1.0 if job["state"] == "succeeded" else float(prog.get("fraction") or 0.0)
            desc = prog.get("stage") if job["state"] == "running" else job["state"]
            status = f"{prog.get('done')}/{prog.get('total')} {prog.get('unit')}"
            if prog.get("circles_total"):
                status += f"  circles {prog.get('circles_done')}/{prog.get('circles_total')}"
            if job.get("eta_s"):
                status += f"  ETA {job['eta_s']:.0f} s"
            bar.update(task, completed=frac, description=str(desc), status=status)

        yield update
