"""Publishing jobs: a Celery app built from settings, used as a producer only (``send_task`` by
name; the API never imports the worker's code or torch)."""

from __future__ import annotations

import logging
from typing import Protocol

from celery import Celery

from autopaint.contracts import TASK_RUN_JOB
from autopaint.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    pass


class Publisher(Protocol):
    def publish(self, job_id: str, queue: str) -> None:
        """Send ``TASK_RUN_JOB(job_id)`` to ``queue``; raise ``BrokerUnavailable`` on failure."""
        ...

    def ping(self) -> bool: ...

    def queue_length(self, queue: str) -> int | None: ...


def producer_app(settings: Settings) -> Celery:
    transport: dict[str, object] = {}  # sqla+sqlite: options go to create_engine (no visibility_timeout)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        transport["visibility_timeout"] = settings.visibility_timeout_s
        if settings.broker_key_prefix:
            transport["global_keyprefix"] = settings.broker_key_prefix
        transport["socket_connect_timeout"] = settings.publish_timeout_s
        transport["socket_timeout"] = settings.publish_timeout_s
    app = Celery("autopaint-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_timeout=settings.publish_timeout_s,
        broker_connection_retry_on_startup=False,
        task_serializer="json",
        accept_content=["json"],
        task_create_missing_queues=True,
        task_ignore_result=True,
    )
    return app


class CeleryPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = producer_app(settings)

    def publish(self, job_id: str, queue: str) -> None:
        try:
            self.app.send_task(
                TASK_RUN_JOB,
                args=[job_id],
                queue=queue,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.5},
            )
        except Exception as exc:  # kombu raises OperationalError, redis ConnectionError, ...
            log.warning("publishing job %s failed: %s", job_id, type(exc).__name__)
            raise BrokerUnavailable(str(exc)) from exc

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.settings.publish_timeout_s)
            return True
        except Exception as exc:
            log.warning("broker ping failed: %s", type(exc).__name__)
            return False

    def queue_length(self, queue: str) -> int | None:
        """Messages waiting in ``queue`` (None when the broker cannot say)."""
        try:
            with self.app.connection_for_write() as conn, conn.channel() as channel:
                # kombu's virtual transports (redis, sqlalchemy, memory) expose ``_size``; a
                # passive queue_declare fails on Redis until a consumer has bound the queue.
                size = getattr(channel, "_size", None)
                if size is not None:
                    return int(size(queue))
                _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
                return int(count)
        except Exception as exc:
            log.debug("queue length unavailable: %s", type(exc).__name__)
            return None
