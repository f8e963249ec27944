"""``/v1/cohorts``: group jobs, follow per-case progress, download aggregated CSVs; a cohort's
``callback_url`` gets one ``cohort.completed`` (``autopaint.db.callbacks.complete_cohort``)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from autopaint.contracts import JobState
from autopaint.db import Artifact, Cohort, Job
from autopaint.db import callbacks as outbox
from autopaint.storage import Storage
from services.api.deps import Ctx, DbSession, Owner
from services.api.errors import ApiError
from services.api.routes_callbacks import vet_callback_url
from services.api.schemas import CohortCase, CohortIn, CohortOut, ErrorOut
from services.api.views import callback_out

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/cohorts", tags=["cohorts"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut}, 404: {"model": ErrorOut, "description": "no such cohort (or another key's)"}
}


def _owned(session: DbSession, owner: str, cohort_id: str) -> Cohort:
    cohort = session.get(Cohort, cohort_id)
    if cohort is None or cohort.owner_key_id != owner:
        raise ApiError(404, "not_found", "no such cohort")
    return cohort


def _jobs(session: DbSession, cohort_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.cohort_id == cohort_id).order_by(Job.created_at, Job.id)))


def _out(session: DbSession, cohort: Cohort) -> CohortOut:
    jobs = _jobs(session, cohort.id)
    counts = Counter(j.state for j in jobs)
    finished = sum(counts[s] for s in JobState if s.terminal)
    cases = [
        CohortCase(job_id=j.id, case_name=j.case_name, state=j.state, stage=j.stage,
                   fraction=1.0 if j.state == JobState.SUCCEEDED
                   else (j.progress_done / j.progress_total if j.progress_total else None),
                   error_code=j.error_code)
        for j in jobs
    ]
    return CohortOut(id=cohort.id, name=cohort.name, created_at=cohort.created_at, counts={s.value: n for s, n in counts.items()},
                     progress=finished / len(jobs) if jobs else 0.0, cases=cases,
                     lesions_csv_url=f"/v1/cohorts/{cohort.id}/lesions.csv",
                     metrics_csv_url=f"/v1/cohorts/{cohort.id}/metrics.csv",
                     callback_url=cohort.callback_url, expected_jobs=cohort.expected_jobs,
                     callbacks=[callback_out(c) for c in outbox.deliveries(session, cohort_id=cohort.id)
                                .get(cohort.id, [])] if cohort.callback_url else [])


@router.post("", status_code=201, response_model=CohortOut, summary="Create a cohort",
             description="With a callback_url, one cohort.completed callback is POSTed (exactly once) when every "
             "job of the cohort has finished — and the cohort holds expected_jobs jobs, when given.",
             responses={**ERRORS, 422: {"model": ErrorOut, "description": "invalid body, or the callback URL is "
                                        "refused (callback_url_not_allowed)"}})
def create_cohort(body: CohortIn, session: DbSession, owner: Owner, ctx: Ctx) -> CohortOut:
    url = vet_callback_url(ctx.settings, owner, body.callback_url)
    cohort = Cohort(owner_key_id=owner, name=body.name, callback_url=url, expected_jobs=body.expected_jobs)
    session.add(cohort)
    session.commit()
    return _out(session, cohort)


@router.post("/{cohort_id}/close", response_model=CohortOut, summary="No more jobs are coming",
             description="Sets expected_jobs to the number of jobs the cohort holds now: it is complete (one "
             "cohort.completed callback) once they have all finished — at once, when they already have. For "
             "clients that add jobs over time (autopaint cohort submit closes its cohort after the last submit).",
             responses=ERRORS)
def close_cohort(cohort_id: str, session: DbSession, owner: Owner) -> CohortOut:
    cohort = _owned(session, owner, cohort_id)
    cohort.expected_jobs = len(_jobs(session, cohort_id)) or None
    session.flush()
    outbox.complete_cohort(session, cohort_id)
    session.commit()
    return _out(session, cohort)


@router.get("/{cohort_id}", response_model=CohortOut, summary="Per-case states and progress", responses=ERRORS)
def get_cohort(cohort_id: str, session: DbSession, owner: Owner) -> CohortOut:
    return _out(session, _owned(session, owner, cohort_id))


def _artifact_text(session: DbSession, storage: Storage, job_id: str, name: str) -> str | None:
    art = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).first()
    if art is None or not storage.exists(art.storage_key):
        return None
    return b"".join(storage.iter_chunks(art.storage_key)).decode("utf-8")


def _csv_response(rows: list[dict[str, Any]], fields: list[str], filename: str) -> StreamingResponse:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)

    def body() -> Iterator[bytes]:
        yield buf.getvalue().encode("utf-8")

    return StreamingResponse(body(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{cohort_id}/lesions.csv", summary="Every lesion of every finished case (CSV)",
            responses={**ERRORS, 200: {"content": {"text/csv": {}}}})
def cohort_lesions(cohort_id: str, session: DbSession, owner: Owner, ctx: Ctx) -> StreamingResponse:
    _owned(session, owner, cohort_id)
    rows: list[dict[str, Any]] = []
    fields: list[str] = ["job_id", "case_name"]
    for job in _jobs(session, cohort_id):
        if job.state != JobState.SUCCEEDED:
            continue
        text = _artifact_text(session, ctx.storage, job.id, "lesions.csv")
        if not text:
            continue
        reader = csv.DictReader(io.StringIO(text))
        fields += [f for f in reader.fieldnames or [] if f not in fields]
        rows += [{"job_id": job.id, "case_name": job.case_name or "", **r} for r in reader]
    return _csv_response(rows, fields, f"cohort-{cohort_id}-lesions.csv")


def _scalars(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    """Flatten nested dicts of numbers/strings into ``a.b.c`` columns (lists are skipped)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _scalars(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, int | float | str | bool) or obj is None:
        out[prefix] = obj


@router.get("/{cohort_id}/metrics.csv", summary="One row per case: state, lesion count and report metrics",
            responses={**ERRORS, 200: {"content": {"text/csv": {}}}})
def cohort_metrics(cohort_id: str, session: DbSession, owner: Owner, ctx: Ctx) -> StreamingResponse:
    _owned(session, owner, cohort_id)
    rows: list[dict[str, Any]] = []
    fields = ["job_id", "case_name", "state", "error_code", "n_lesions", "total_volume_ml"]
    for job in _jobs(session, cohort_id):
        row: dict[str, Any] = {"job_id": job.id, "case_name": job.case_name or "", "state": job.state,
                               "error_code": job.error_code or ""}
        if job.state == JobState.SUCCEEDED:
            text = _artifact_text(session, ctx.storage, job.id, "lesions.csv")
            if text is not None:
                les = list(csv.DictReader(io.StringIO(text)))
                row["n_lesions"] = len(les)
                row["total_volume_ml"] = sum(float(r.get("volume_ml") or 0) for r in les)
            report = _artifact_text(session, ctx.storage, job.id, "report.json")
            if report:
                flat: dict[str, Any] = {}
                try:
                    _scalars("", json.loads(report).get("metrics", {}), flat)
                except (ValueError, AttributeError):
                    flat = {}
                row.update(flat)
                fields += [k for k in flat if k not in fields]
        rows.append(row)
    return _csv_response(rows, fields, f"cohort-{cohort_id}-metrics.csv")
