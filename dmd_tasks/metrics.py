"""Prometheus metrics of every dmd process, safe with prefork workers.

Every process (bridges, worker children, beat, API) writes its samples to files in
``DMD_METRICS_DIR`` (prometheus_client's multiprocess mode); ``dmd metrics`` serves them
aggregated at ``/metrics``, together with the dead-letter queue depths read from SQS at
scrape time. Names and labels: docs/operations.md.
"""

from __future__ import annotations

import os
from typing import Any

from dmd_tasks.settings import QUEUE_NAMES, get_settings

# prometheus_client picks its storage when it is imported: the directory must be set first.
_DIR = get_settings().metrics_dir.resolve()
_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_DIR))

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

NOTIFICATION_TRANSITIONS = Counter(
    "dmd_notification_transitions_total", "Notification status transitions written (conditional writes that won).",
    ["from_status", "to_status"])
SEND_LATENCY = Histogram(
    "dmd_send_latency_seconds", "Duration of one SMS provider send call, successful or not.",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROVIDER_RESPONSES = Counter(
    "dmd_provider_responses_total", "Answers of external providers by HTTP status (or timeout/connection).",
    ["provider", "code"])
BRIDGE_LAG = Gauge(
    "dmd_bridge_lag_seconds", "Age of the newest stream record a bridge handled.", ["bridge"],
    multiprocess_mode="max")
BRIDGE_RECORDS = Counter(
    "dmd_bridge_records_total", "Stream records handled by a bridge, by outcome.", ["bridge", "outcome"])
CACHE_REQUESTS = Counter(
    "dmd_cache_requests_total", "Cache look-ups by result (hit, miss, stale).", ["cache", "result"])
TASKS = Counter("dmd_tasks_total", "Celery task runs by final state.", ["task", "state"])
AWS_REQUESTS = Counter(
    "dmd_aws_requests_total", "AWS API requests this process made (every attempt), by service and operation.",
    ["service", "operation"])
DYNAMODB_WRITE_ITEMS = Counter(
    "dmd_dynamodb_write_items_total", "Items DynamoDB write requests carried (a BatchWriteItem counts each).",
    ["operation"])
DYNAMODB_READ_UNITS = Counter(
    "dmd_dynamodb_read_units_total", "Estimated read units: one per item read by key, one per 4 KB a query returned.",
    ["operation"])


def process_exited(pid: int) -> None:
    """Forget a dead worker child's live gauges (its counters stay counted)."""
    mark_process_dead(pid, str(_DIR))


class DeadLetterDepth:
    """Collector: messages waiting in each dead-letter queue, read from SQS when scraped."""

    def collect(self) -> Any:
        from dmd_tasks import aws
        from dmd_tasks.provision import BRIDGE_NAMES

        settings = get_settings()
        sqs = aws.client("sqs", settings)
        family = GaugeMetricFamily("dmd_dlq_depth", "Messages in a dead-letter queue.", labels=["queue"])
        for name in (*QUEUE_NAMES, *BRIDGE_NAMES):
            try:
                attributes = sqs.get_queue_attributes(QueueUrl=settings.queue_url(settings.dlq_name(name)),
                                                      AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
            except Exception:  # a missing queue must not break the scrape
                continue
            family.add_metric([name], float(attributes["ApproximateNumberOfMessages"]))
        yield family


def registry() -> CollectorRegistry:
    """Everything every process wrote, plus the dead-letter depths."""
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(_DIR))
    reg.register(DeadLetterDepth())
    return reg


def serve(host: str, port: int) -> None:
    from wsgiref.simple_server import make_server

    from prometheus_client import make_wsgi_app

    server = make_server(host, port, make_wsgi_app(registry()))
    server.serve_forever()
