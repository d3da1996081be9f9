"""``dmd metrics``: every process's Prometheus samples, aggregated, plus what is read when scraped:
the depth of every queue and dead-letter queue (SQS), and the state and cap of each SMS provider's
circuit (Redis, settings). Names and labels: docs/operations.md."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import redis
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from dmd_tasks.infra import aws, metrics, topology
from dmd_tasks.infra.runtime import start_process
from dmd_tasks.infra.settings import Settings
from dmd_tasks.services import Services

log = logging.getLogger(__name__)

#: ``dmd_sms_circuit_state``'s values.
CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}
_VISIBLE, _IN_FLIGHT = "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"


class QueueDepths:
    """Collector: messages in each queue (waiting, and received but not yet deleted) and in each
    dead-letter queue, read from SQS when scraped. A queue that is missing or unreadable is left
    out: it must not break the scrape."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("dmd_queue_depth", "Messages waiting in a queue.", labels=["queue"]),
            GaugeMetricFamily(
                "dmd_queue_in_flight",
                "Messages of a queue received and not yet deleted (being worked on, or held for their ETA).",
                labels=["queue"],
            ),
            GaugeMetricFamily("dmd_dlq_depth", "Messages in a dead-letter queue.", labels=["queue"]),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without asking SQS."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        settings = self._settings
        sqs = aws.client("sqs", settings)
        queues = (*topology.QUEUE_NAMES, *topology.INTAKE_QUEUES)
        dlqs = (*topology.DLQ_OWNERS, *topology.INTAKE_QUEUES)
        # one request per queue, side by side: a scrape takes one round trip, not nineteen
        with ThreadPoolExecutor(max_workers=8) as pool:
            live = pool.map(lambda n: _attributes(sqs, topology.queue_url(settings, n), [_VISIBLE, _IN_FLIGHT]), queues)
            dead_letters = pool.map(lambda n: _attributes(sqs, topology.dlq_url(settings, n), [_VISIBLE]), dlqs)
            depth, in_flight, dead = self._families()
            for name, found in zip(queues, live, strict=True):
                if found is not None:
                    depth.add_metric([name], float(found[_VISIBLE]))
                    in_flight.add_metric([name], float(found[_IN_FLIGHT]))
            for name, found in zip(dlqs, dead_letters, strict=True):
                if found is not None:
                    dead.add_metric([name], float(found[_VISIBLE]))
        yield from (depth, in_flight, dead)


def _attributes(sqs: Any, url: str, names: list[str]) -> dict[str, str] | None:
    try:
        return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"])
    except (ClientError, BotoCoreError):  # a missing queue or an unreachable SQS
        return None


class ProviderCircuits:
    """Collector: each SMS provider's circuit, read from Redis when scraped (the state every send
    worker shares), and its account's cap, as the send workers build them from the settings."""

    def __init__(self, services: Services) -> None:
        self._services = services

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "dmd_sms_circuit_state",
                "A provider account's circuit: 0 closed (sending), 1 half-open (probing), 2 open (paused).",
                labels=["provider"],
            ),
            GaugeMetricFamily(
                "dmd_sms_cap_parts_per_second", "A provider account's cap, SMS parts per second.", labels=["provider"]
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without asking Redis."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state, cap = self._families()
        for route in self._services.sms_router.routes.values():
            account = route.circuit.provider
            cap.add_metric([account], route.cap)
            try:
                now = route.circuit.state()
            except redis.RedisError as exc:  # no state rather than no scrape
                log.warning("circuit of %s unreadable: %s", account, exc)
                continue
            state.add_metric([account], CIRCUIT_STATES[now])
        yield from (state, cap)


class ProcessSamples(MultiProcessCollector):
    """What every process wrote, read after removing the gauges of this host's processes that are
    gone (a killed bridge's leases and lag must not be reported for ever)."""

    def collect(self) -> Iterator[Any]:
        metrics.clear_stale(Path(self._path))
        return super().collect()


def registry(settings: Settings, services: Services | None = None, *, shared: bool = True) -> CollectorRegistry:
    """Everything every process wrote (in ``settings.metrics_dir``), plus, unless ``shared`` is
    False, what the deployment shares: the queue depths and the providers' circuits (through
    ``services``: by default, those of ``settings``). An exporter beside each process (a task on
    ECS) leaves those to the deployment's own exporter: no SQS or Redis request per task's scrape."""
    reg = CollectorRegistry()
    ProcessSamples(reg, path=str(settings.metrics_dir.resolve()))
    if shared:
        reg.register(QueueDepths(settings))
        reg.register(ProviderCircuits(services or Services(settings)))
    return reg


def serve(settings: Settings, *, shared: bool = True) -> None:
    """Serve /metrics on ``metrics_host:metrics_port`` until killed."""
    start_process(settings, "metrics", trace=False)
    app = make_wsgi_app(registry(settings, shared=shared))
    server = make_server(settings.metrics_host, settings.metrics_port, app)
    server.serve_forever()
