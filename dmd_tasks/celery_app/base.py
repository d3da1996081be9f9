"""The base task of every dmd task, and ``task()``, the decorator that registers one.

Defaults set once here: autoretry of TransientError and of a dependency's failure (botocore,
Redis) with exponential backoff and jitter, never PermanentError; countdowns bounded by what
SQS can hold back safely; a task that fails for good becomes a dead letter with its reason.
Options that come from settings (``max_retries`` of some tasks, ``rate_limit``,
``retry_backoff_max``) are task annotations in the Celery configuration, so registering a task reads no setting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from dmd_tasks.celery_app.app import app
from dmd_tasks.domain.errors import PermanentError, TransientError
from dmd_tasks.infra import logs
from dmd_tasks.infra.deadletters import DeadLetters
from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS
from dmd_tasks.infra.settings import UnsafeConfiguration, get_settings
from dmd_tasks.infra.topology import QUEUE_NAMES, TASK_QUEUES

log = logging.getLogger(__name__)

#: What a task retries by itself (with backoff, up to its max_retries): never PermanentError.
RETRIED: tuple[type[BaseException], ...] = (TransientError, SoftTimeLimitExceeded, *DEPENDENCY_ERRORS)


class DmdTask(Task):
    """Base class of every dmd task.

    - Retries (Celery's autoretry) wait at most ``max_countdown_seconds``, honouring an
      upstream ``Retry-After`` up to that bound, so a retried message is always back in
      SQS before the visibility timeout could redeliver the original.
    - A task that fails for good is written to its queue's dead-letter queue with the
      reason, its arguments and the correlation id.
    """

    abstract = True
    typing = True
    #: Whether a task that fails for good becomes a dead letter (beat's ticks: no, the next tick
    #: replaces a failed one, and a dead letter per tick during an outage is noise).
    dead_letters = True

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        limit = get_settings().max_countdown_seconds
        wanted = getattr(exc, "retry_after_seconds", None)
        if wanted is not None and eta is None:
            countdown = max(countdown or 0.0, float(wanted))
        if countdown is not None:
            countdown = min(float(countdown), float(limit))
        return super().retry(
            args=args,
            kwargs=kwargs,
            exc=exc,
            throw=throw,
            eta=eta,
            countdown=countdown,
            max_retries=max_retries,
            **options,
        )

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        check_countdown(options.get("countdown"), options.get("eta"))
        return super().apply_async(
            args=args,
            kwargs=kwargs,
            task_id=task_id,
            producer=producer,
            link=link,
            link_error=link_error,
            shadow=shadow,
            **options,
        )

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not self.dead_letters:
            return
        try:
            self.dead_letter(f"{type(exc).__name__}: {exc}", args, kwargs, task_id=task_id)
        except Exception:  # the dead letter must never hide the original failure
            log.exception("could not write dead letter for task %s", task_id)

    def dead_letter(self, reason: str, args: Any, kwargs: Any, *, task_id: str | None = None) -> None:
        """Write ``args``/``kwargs`` of this task to its queue's dead-letter queue with ``reason``
        (a task that fails for good, or the part of its work that never can succeed)."""
        queue = (self.request.delivery_info or {}).get("routing_key") or TASK_QUEUES.get(self.name, "query")
        DeadLetters(get_settings()).send(
            queue,
            reason=reason,
            payload={
                "task": self.name,
                "task_id": task_id or self.request.id,
                "args": list(args or ()),
                "kwargs": kwargs or {},
                "retries": self.request.retries,
            },
            correlation_id=logs.correlation_id.get(),
        )


def check_countdown(countdown: float | None, eta: datetime | None) -> None:
    """Refuse a countdown/ETA that outlives the SQS visibility timeout (it would run twice)."""
    limit = get_settings().max_countdown_seconds
    if countdown is not None and float(countdown) > limit:
        raise UnsafeConfiguration(f"countdown {countdown}s exceeds the {limit}s any task may wait on SQS")
    if eta is not None:
        delay = (eta - datetime.now(UTC)).total_seconds()
        if delay > limit:
            raise UnsafeConfiguration(f"eta {eta.isoformat()} is {delay:.0f}s away; at most {limit}s is safe on SQS")


def task(name: str, *, queue: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Register a dmd task under its wire ``name`` on the queue ``infra.topology`` gives it.

    Transient errors are retried with exponential backoff and jitter (at most
    ``max_retries`` times, default from the task); permanent errors are not retried. A task
    outside the routing table (a benchmark's, say) names its ``queue`` itself.
    """
    queue = queue or TASK_QUEUES.get(name)
    if queue is None or queue not in QUEUE_NAMES:
        raise ValueError(f"task {name!r}: no queue (pipeline.topology.TASK_QUEUES) or an unknown one ({queue!r})")
    defaults: dict[str, Any] = {
        "name": name,
        "base": DmdTask,
        "bind": True,
        # A dependency down (AWS, Redis) is retried like any transient error: the task has not
        # done its work, and acknowledging it would lose it. So is a run cut by its soft time
        # limit (a dependency hanging): Celery acknowledges a task its hard limit kills.
        "autoretry_for": RETRIED,
        "dont_autoretry_for": (PermanentError,),
        "retry_backoff": True,
        "retry_jitter": True,
    }
    if name not in TASK_QUEUES:
        defaults["queue"] = queue
    defaults.update(options)

    def decorate(fn: Callable[..., Any]) -> Task:
        return app.task(**defaults)(fn)

    return decorate
