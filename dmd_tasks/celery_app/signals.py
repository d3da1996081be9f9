"""Celery signal handlers of every dmd worker and beat: correlation ids across the chain, task
counters, logs, metrics and tracing set up in each process. Connected when imported (by ``app``)."""

from __future__ import annotations

from typing import Any

from celery import Task, signals
from celery.app import backends
from celery.utils.saferepr import saferepr

from dmd_tasks.infra import aws, logs, metrics, tracing
from dmd_tasks.infra.metrics import TASKS
from dmd_tasks.infra.settings import get_settings
from dmd_tasks.store.campaigns import load_driver

#: Celery's own bound on an arguments repr (``app.amqp.argsrepr_maxsize``).
ARGSREPR_MAX = 1024


@signals.before_task_publish.connect
def _stamp_correlation_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and not headers.get(logs.CORRELATION_HEADER):
        headers[logs.CORRELATION_HEADER] = logs.correlation_id.get() or logs.new_correlation_id()


@signals.before_task_publish.connect
def _mask_arguments(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """What Flower and the workers' events show of a task's arguments (``argsrepr``,
    ``kwargsrepr``) with phone numbers and message bodies masked; the arguments themselves are
    untouched. Connected before the monitoring hook that publishes ``task-sent``."""
    if headers is None or not isinstance(body, tuple | list) or len(body) < 2:
        return
    headers["argsrepr"] = saferepr(logs.masked(body[0]), ARGSREPR_MAX)
    headers["kwargsrepr"] = saferepr(logs.masked(body[1]), ARGSREPR_MAX)


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
def _start_worker_metrics(sender: Any = None, **_: Any) -> None:
    """Samples to the metrics directory and every AWS request counted, the AWS service models
    parsed once, and what a task's first run would import loaded (worker children inherit all of
    it; a child's first send paid ~0.12 s of CPU for the imports, inside the sale)."""
    settings = get_settings()
    metrics.use_directory(settings.metrics_dir.resolve(), "worker")
    aws.count_requests()
    aws.warm(settings)
    load_driver(settings)
    app = getattr(sender, "app", None)
    if app is not None:  # the result backend's module (Celery builds the backend on a child's first task)
        backends.by_url(app.conf.result_backend, app.loader)


@signals.beat_init.connect
def _start_beat_metrics(**_: Any) -> None:
    metrics.use_directory(get_settings().metrics_dir.resolve(), "beat")
    aws.count_requests()


@signals.worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    tracing.setup(get_settings(), "worker")


@signals.worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    if pid:
        metrics.process_exited(pid)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    settings = get_settings()
    logs.configure(settings.log_level, json_lines=settings.log_json, process="worker")
