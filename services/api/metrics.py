"""Prometheus metrics of the API (one registry per app, so tests can build several apps).

Counters for what the API process itself sees (bytes uploaded, submissions, rejections, jobs the
reconciler re-queued or re-published; in the embedded service, worker restarts) and a
collector that reads the database at scrape time for what workers change: queue depth, jobs by
state, and stage durations (summary over finished jobs' ``timings``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from autopaint.contracts import JobState
from autopaint.db import Job
from autopaint.progress import Stage

log = logging.getLogger(__name__)

STAGE_SAMPLE = 1000  # finished jobs read for the stage-duration summary


class _DbCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session], broker_depth: Callable[[], int | None]) -> None:
        self.sessions = sessions
        self.broker_depth = broker_depth

    def collect(self) -> Iterator[Any]:
        try:
            with self.sessions() as s:
                counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
                timings = s.scalars(
                    select(Job.timings)
                    .where(Job.state == JobState.SUCCEEDED)
                    .order_by(Job.finished_at.desc())
                    .limit(STAGE_SAMPLE)
                ).all()
        except Exception as exc:  # a scrape must not fail because the DB blinked
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            return
        by_state = GaugeMetricFamily("autopaint_jobs", "Jobs by state", labels=["state"])
        for st in JobState:
            by_state.add_metric([st.value], float(counts.get(st, 0)))
        yield by_state
        depth = GaugeMetricFamily("autopaint_queue_depth", "Jobs waiting to run (state queued)")
        depth.add_metric([], float(counts.get(JobState.QUEUED, 0)))
        yield depth
        msgs = self.broker_depth()
        if msgs is not None:
            bd = GaugeMetricFamily("autopaint_broker_queue_messages", "Messages waiting in the broker queue")
            bd.add_metric([], float(msgs))
            yield bd
        summ = SummaryMetricFamily(
            "autopaint_stage_duration_seconds",
            f"Seconds per pipeline stage over the last {STAGE_SAMPLE} succeeded jobs",
            labels=["stage"],
        )
        for stage in Stage:
            vals = [float(t[stage.value]) for t in timings if t and stage.value in t]
            if vals:
                summ.add_metric([stage.value], count_value=len(vals), sum_value=sum(vals))
        yield summ


class ApiMetrics:
    def __init__(self, sessions: sessionmaker[Session], broker_depth: Callable[[], int | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.bytes_uploaded = Counter(
            "autopaint_upload_bytes", "Bytes of accepted uploads", registry=self.registry
        )
        self.jobs_submitted = Counter(
            "autopaint_jobs_submitted", "Jobs accepted (202)", registry=self.registry
        )
        self.rejections = Counter(
            "autopaint_submissions_rejected", "Submissions rejected, by code", ["code"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "autopaint_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.reconciled = Counter(
            "autopaint_jobs_reconciled",
            "Jobs the reconciler acted on: requeued (lease expired), republished (message lost), "
            "failed (attempts used up), cancelled",
            ["action"], registry=self.registry,
        )
        self.registry.register(_DbCollector(sessions, broker_depth))
        self.worker_restarts: Counter | None = None
        self.workers_alive: Gauge | None = None

    def watch_workers(self, alive: Callable[[], int]) -> None:
        """Worker metrics of a process that supervises its own workers (the embedded service):
        ``autopaint_workers_alive`` (read at scrape time) and ``autopaint_worker_restarts_total``."""
        if self.workers_alive is None:
            self.workers_alive = Gauge("autopaint_workers_alive", "Worker processes alive (embedded)",
                                       registry=self.registry)
            self.worker_restarts = Counter("autopaint_worker_restarts",
                                           "Dead worker processes restarted by the supervisor (embedded)",
                                           registry=self.registry)
        self.workers_alive.set_function(lambda: float(alive()))
