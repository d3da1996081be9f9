"""The Celery app of dmd and all of its plumbing: base task, ``task()`` decorator, signals.

Run a worker per queue:  ``celery -A dmd_tasks.celery_app worker -Q short-url``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

from celery import Celery, Task, bootsteps, signals

from config import celeryconfig
from dmd_tasks import logs, monitoring
from dmd_tasks.metrics import TASKS, process_exited
from dmd_tasks.errors import PermanentError, TransientError
from dmd_tasks.settings import QUEUE_NAMES, UnsafeConfiguration, get_settings

log = logging.getLogger(__name__)

app = Celery("dmd")
app.conf.update(celeryconfig.build(get_settings()))
# Events and remote control over Redis (Flower, celery inspect); tasks stay on SQS.
monitoring.install(app, url=get_settings().monitor_redis_url or get_settings().redis_url,
                   task_sent_event=get_settings().monitor_task_sent_events)

#: Task name → queue, filled by ``task()``; Celery routes by it (``task_routes``).
TASK_QUEUES: dict[str, str] = {}
app.conf.task_routes = {}


def queue_of(task_name: str) -> str:
    """The queue a task is routed to."""
    return TASK_QUEUES[task_name]

#: Task modules, imported by workers and by anything that sends tasks.
TASK_MODULES = ["dmd_tasks.shorten", "dmd_tasks.generate", "dmd_tasks.schedule", "dmd_tasks.send",
                "dmd_tasks.sms_status", "dmd_tasks.query"]


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

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, throw: bool = True,
              eta: datetime | None = None, countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Any:
        limit = get_settings().max_countdown_seconds
        wanted = getattr(exc, "retry_after_seconds", None)
        if wanted is not None and eta is None:
            countdown = max(countdown or 0.0, float(wanted))
        if countdown is not None:
            countdown = min(float(countdown), float(limit))
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta, countdown=countdown,
                             max_retries=max_retries, **options)

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, producer: Any = None,
                    link: Any = None, link_error: Any = None, shadow: str | None = None, **options: Any) -> Any:
        check_countdown(options.get("countdown"), options.get("eta"))
        return super().apply_async(args=args, kwargs=kwargs, task_id=task_id, producer=producer, link=link,
                                   link_error=link_error, shadow=shadow, **options)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from dmd_tasks.deadletter import DeadLetters

        queue = (self.request.delivery_info or {}).get("routing_key") or TASK_QUEUES.get(self.name, "query")
        try:
            DeadLetters(get_settings()).send(
                queue,
                reason=f"{type(exc).__name__}: {exc}",
                payload={"task": self.name, "task_id": task_id, "args": list(args or ()), "kwargs": kwargs or {},
                         "retries": self.request.retries},
                correlation_id=logs.correlation_id.get(),
            )
        except Exception:  # the dead letter must never hide the original failure
            log.exception("could not write dead letter for task %s", task_id)


def check_countdown(countdown: float | None, eta: datetime | None) -> None:
    """Refuse a countdown/ETA that outlives the SQS visibility timeout (it would run twice)."""
    limit = get_settings().max_countdown_seconds
    if countdown is not None and float(countdown) > limit:
        raise UnsafeConfiguration(f"countdown {countdown}s exceeds the {limit}s any task may wait on SQS")
    if eta is not None:
        delay = (eta - datetime.now(timezone.utc)).total_seconds()
        if delay > limit:
            raise UnsafeConfiguration(f"eta {eta.isoformat()} is {delay:.0f}s away; at most {limit}s is safe on SQS")


def task(*, queue: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Register a dmd task on ``queue`` with the project's retry defaults.

    Transient errors are retried with exponential backoff and jitter (at most
    ``max_retries`` times, default from the task); permanent errors are not retried.
    """
    if queue not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {queue!r}")
    settings = get_settings()
    defaults: dict[str, Any] = {
        "base": DmdTask,
        "bind": True,
        "autoretry_for": (TransientError,),
        "dont_autoretry_for": (PermanentError,),
        "retry_backoff": True,
        "retry_backoff_max": settings.retry_backoff_max_seconds,
        "retry_jitter": True,
    }
    defaults.update(options)

    def decorate(fn: Callable[..., Any]) -> Task:
        registered = app.task(**defaults)(fn)
        TASK_QUEUES[registered.name] = queue
        app.conf.task_routes[registered.name] = {"queue": queue}
        return registered

    return decorate


# --- correlation ids across the chain ------------------------------------------------------------

@signals.before_task_publish.connect
def _stamp_correlation_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and not headers.get(logs.CORRELATION_HEADER):
        headers[logs.CORRELATION_HEADER] = logs.correlation_id.get() or logs.new_correlation_id()


@signals.task_prerun.connect
def _enter_task_context(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    logs.correlation_id.set(getattr(request, logs.CORRELATION_HEADER, None) or task_id)
    logs.task_context.set({"task_name": getattr(task, "name", ""), "task_id": task_id or ""})


@signals.task_postrun.connect
def _leave_task_context(**_: Any) -> None:
    logs.correlation_id.set(None)
    logs.task_context.set(None)


@signals.task_success.connect
def _count_success(sender: Task | None = None, **_: Any) -> None:
    TASKS.labels(getattr(sender, "name", "?"), "success").inc()


@signals.task_failure.connect
def _count_failure(sender: Task | None = None, **_: Any) -> None:
    TASKS.labels(getattr(sender, "name", "?"), "failure").inc()


@signals.task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    TASKS.labels(getattr(sender, "name", "?"), "retry").inc()


@signals.worker_init.connect
@signals.beat_init.connect
def _count_aws_requests(**_: Any) -> None:
    """Count this process's AWS requests (worker children inherit it through the fork)."""
    from dmd_tasks import aws

    aws.count_requests()


@signals.worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    from dmd_tasks import tracing

    tracing.setup(get_settings(), "worker")


@signals.worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    if pid:
        process_exited(pid)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    settings = get_settings()
    logs.configure(settings.log_level, json_lines=settings.log_json, process="worker")


class QueueVisibilityCheck(bootsteps.Step):
    """Worker boot step: refuse to start when a consumed SQS queue would redeliver waiting or running tasks.

    (A boot step and not a ``worker_init`` handler: Celery logs and ignores exceptions
    raised by signal handlers, so a handler could not stop the worker.)
    """

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from dmd_tasks.provision import check_queue_visibility

        queues = list(app.amqp.queues.consume_from or QUEUE_NAMES)
        check_queue_visibility(get_settings(), queues)
        super().__init__(worker, **kwargs)


app.steps["worker"].add(QueueVisibilityCheck)
app.conf.imports = TASK_MODULES
