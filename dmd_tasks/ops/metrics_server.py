"""``dmd metrics``: every process's Prometheus samples, aggregated, plus the dead-letter queue
depths read from SQS when scraped (names and labels: docs/operations.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from dmd_tasks.infra import aws, metrics, topology
from dmd_tasks.infra.runtime import start_process
from dmd_tasks.infra.settings import Settings


class DeadLetterDepth:
    """Collector: messages waiting in each dead-letter queue, read from SQS when scraped."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sqs = aws.client("sqs", self._settings)
        family = GaugeMetricFamily("dmd_dlq_depth", "Messages in a dead-letter queue.", labels=["queue"])
        for name in topology.DLQ_OWNERS:
            try:
                attributes = sqs.get_queue_attributes(
                    QueueUrl=topology.dlq_url(self._settings, name), AttributeNames=["ApproximateNumberOfMessages"]
                )["Attributes"]
            except (ClientError, BotoCoreError):  # a missing queue or an unreachable SQS must not break the scrape
                continue
            family.add_metric([name], float(attributes["ApproximateNumberOfMessages"]))
        yield family


class ProcessSamples(MultiProcessCollector):
    """What every process wrote, read after removing the gauges of this host's processes that are
    gone (a killed bridge's leases and lag must not be reported for ever)."""

    def collect(self) -> Iterator[Any]:
        metrics.clear_stale(Path(self._path))
        return super().collect()


def registry(settings: Settings, *, dlq_depth: bool = True) -> CollectorRegistry:
    """Everything every process wrote (in ``settings.metrics_dir``), plus the dead-letter depths
    unless ``dlq_depth`` is False (an exporter beside each process, on ECS: one exporter of the
    deployment reads them, not one per task)."""
    reg = CollectorRegistry()
    ProcessSamples(reg, path=str(settings.metrics_dir.resolve()))
    if dlq_depth:
        reg.register(DeadLetterDepth(settings))
    return reg


def serve(settings: Settings, *, dlq_depth: bool = True) -> None:
    """Serve /metrics on ``metrics_host:metrics_port`` until killed."""
    start_process(settings, "metrics", trace=False)
    app = make_wsgi_app(registry(settings, dlq_depth=dlq_depth))
    server = make_server(settings.metrics_host, settings.metrics_port, app)
    server.serve_forever()
