"""Celery configuration of the worker, derived from :class:`autopaint.settings.Settings`.

Delivery guarantees (DESIGN.md §5):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after the
  task returns; a worker child killed mid-job (SIGKILL, OOM) makes the parent reject it with
  requeue, so another process runs the job again (the DB lease and attempt counter decide).
- ``worker_prefetch_multiplier = 1`` and concurrency 1 per GPU: a worker never hoards messages.
- soft + hard time limits; the Redis ``visibility_timeout`` must exceed the hard limit, or Redis
  would re-deliver a job that is still running (asserted here, at configuration time).
- The DB lease, not the broker connection, says who runs a job: the lease (``lease_s``, 30 s,
  renewed every ``lease_s / 3``) is far shorter than the visibility timeout, and every countdown a
  worker puts on a message (waiting out a lease, a retry) is at most one lease. Recovery from a dead
  worker or a lost message is the reconciler's (``services.api.reconciler``: about one lease), not
  the visibility timeout's, which is only the broker's last resort (a duplicate it re-delivers
  finds the job finished and is dropped).
- ``worker_lost_wait = 1``: a killed child's message goes back to the queue after 1 s, not 10 s
  (Celery waits that long for a result the child might have sent; results are not used here). The
  next child finds the dead child gone from this host and takes the lease over at once
  (``autopaint.db.leases.expire_gone_leases``): a killed child's job restarts within seconds.
- ``worker_cancel_long_running_tasks_on_connection_loss = False``: a broker outage does not kill
  the running job. It keeps its DB lease (heartbeats go to the database), finishes and stores its
  result; its unacknowledged message, re-delivered later, finds the job finished and is dropped.
  (True would throw the work away and leave the job to the reconciler after a lease.)

Queue routing: the API publishes each job to ``job.queue`` (``Settings.queue``, default ``gpu``).
A worker consumes ``--queues`` when given; otherwise ``gpu`` when CUDA is present and ``cpu``
(``Settings.cpu_queue``) when it is not, so a CPU-only host never takes GPU work by accident. The
embedded ``autopaint serve`` publishes to and consumes the queue that matches the local device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autopaint.settings import Settings


class ConfigError(ValueError):
    """The worker settings break a delivery guarantee."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery ``conf`` for the worker and for any producer sharing its broker."""
    if settings.visibility_timeout_s <= settings.hard_time_limit_s:
        raise ConfigError(
            f"visibility_timeout_s ({settings.visibility_timeout_s}) must exceed hard_time_limit_s "
            f"({settings.hard_time_limit_s}): the broker would re-deliver running jobs"
        )
    if settings.hard_time_limit_s <= settings.soft_time_limit_s:
        raise ConfigError("hard_time_limit_s must exceed soft_time_limit_s")
    if settings.lease_s >= settings.visibility_timeout_s:
        raise ConfigError(f"lease_s ({settings.lease_s}) must be shorter than visibility_timeout_s "
                          f"({settings.visibility_timeout_s})")
    transport: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        transport["visibility_timeout"] = settings.visibility_timeout_s
        if settings.broker_key_prefix:
            transport["global_keyprefix"] = settings.broker_key_prefix
    elif settings.broker_url.startswith("sqla+sqlite"):
        # the kombu sqla transport passes its options to create_engine and has no visibility
        # timeout (a message is deleted when fetched and handed back on reject/requeue); several
        # processes share the SQLite file, so wait for its lock instead of failing at once
        transport["connect_args"] = {"timeout": 30}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,  # the DB lease decides
        # a killed child's message is handed back after this wait for a result it might have sent
        # (10 s by default); results are ignored here (the row is the result), so hand it back now
        "worker_lost_wait": 1.0,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.hard_time_limit_s,
        "task_default_queue": settings.queue,
        "task_create_missing_queues": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def cuda_present(device: str) -> bool:
    """Whether this host should take GPU work, without importing torch.

    ``device`` is ``Settings.device``: ``cpu`` -> False, ``cuda``/``cuda:N`` -> True, ``auto`` ->
    True when the NVIDIA kernel driver is loaded (``/proc/driver/nvidia/version``) and
    ``CUDA_VISIBLE_DEVICES`` does not hide every GPU.
    """
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists()


def worker_queues(settings: Settings, queues: str | None = None) -> list[str]:
    """Queues this worker consumes: explicit ``queues`` (comma separated) or the device default."""
    if queues:
        return [q.strip() for q in queues.split(",") if q.strip()]
    return [settings.queue if cuda_present(settings.device) else settings.cpu_queue]


def settings_env(settings: Settings) -> dict[str, str]:
    """``AUTOPAINT_*`` environment variables that rebuild ``settings`` in a child process
    (``Settings()`` there reads them): used by ``autopaint serve`` and the tests to start workers."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"AUTOPAINT_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
