"""The Celery application of the worker: ``create_celery_app(settings)``.

Only one task, registered by name (``autopaint.contracts.TASK_RUN_JOB``); its message carries the
job id and nothing else. The task is a thin adapter over :func:`services.worker.runner.execute_job`.

``celery -A services.worker.app worker -Q gpu -c 1`` works too: the module attribute ``app`` is
built on first access (PEP 562) from ``Settings()`` read at that moment, i.e. at process start;
importing this module builds nothing. ``autopaint worker`` is the documented entry point.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from autopaint.contracts import TASK_RUN_JOB
from autopaint.settings import Settings
from services.worker.config import celery_config
from services.worker.context import WorkerContext, worker_id
from services.worker.runner import execute_job

log = logging.getLogger(__name__)


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app bound to ``settings`` (broker, time limits, queues) with the job task."""
    app = Celery("autopaint", set_as_current=False)
    app.conf.update(celery_config(settings))
    ctx = WorkerContext(settings)
    app.autopaint_ctx = ctx  # type: ignore[attr-defined]

    @app.task(name=TASK_RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True,
              max_retries=None)
    def run_job(self: Task, job_id: str) -> str:
        outcome = execute_job(ctx, str(job_id), worker_id())
        if outcome.retry_in_s is not None:
            queue = (self.request.delivery_info or {}).get("routing_key") or settings.queue
            try:
                app.send_task(TASK_RUN_JOB, args=[job_id], queue=queue, countdown=outcome.retry_in_s)
            except Exception as exc:  # broker trouble: hand this message back instead
                log.exception("could not re-publish job %s", job_id)
                raise Reject(str(exc), requeue=True) from exc
            log.info("job %s %s; published again in %.1f s", job_id, outcome.status, outcome.retry_in_s)
        return outcome.status

    return app


_default: dict[str, Celery] = {}


def __getattr__(name: str) -> Any:
    if name == "app":  # for `celery -A services.worker.app`
        if "app" not in _default:
            _default["app"] = create_celery_app(Settings())
        return _default["app"]
    raise AttributeError(name)
