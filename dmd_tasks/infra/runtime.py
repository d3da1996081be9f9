"""What every dmd process does when it starts: logs, metrics, AWS request counting, tracing."""

from __future__ import annotations

from dmd_tasks.infra import aws, logs, metrics, tracing
from dmd_tasks.infra.settings import Settings


def start_process(settings: Settings, name: str, *, trace: bool = True) -> None:
    """Set this process up as ``name``: JSON logs, its metrics directory, counted AWS requests
    and (with ``trace``) OpenTelemetry. Celery processes do the same through signals
    (``dmd_tasks.celery_app.signals``)."""
    logs.configure(settings.log_level, json_lines=settings.log_json, process=name)
    metrics.use_directory(settings.metrics_dir.resolve(), name)
    aws.count_requests()
    if trace:
        tracing.setup(settings, name)
