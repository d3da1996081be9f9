"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.contrib.testing.worker import start_worker

from dmd_tasks.celery_app import app
from dmd_tasks.infra.settings import get_settings
from dmd_tasks.store.codec import serialize


def unique_phones(n: int) -> list[str]:
    """``n`` numbers no other sale of the session uses: a random area code and exchange. The
    simulator counts SMS per number across every sale, and an opt-out (a STOP reply) outlives
    its sale: a later sale drawing the same numbers would find its fans opted out."""
    rnd = uuid.uuid4().int
    prefix = f"{rnd % 700 + 200}{rnd // 700 % 1000:03d}"
    if n > 10_000:
        raise ValueError(f"{n} numbers do not fit one exchange")
    return [f"+1{prefix}{i:04d}" for i in range(n)]


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")


class TaskRuns:
    """Counts the runs of one task a Celery worker has finished (succeeded, failed or retried) since
    this object was made, from the worker's log: how a test waits for ticks instead of sleeping."""

    def __init__(self, log: Path, task: str) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        self.finished = re.compile(rf"Task {re.escape(task)}\[[0-9a-f-]+\] (succeeded|failed|retry)")

    def since(self) -> int:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return len(self.finished.findall(f.read().decode(errors="replace")))


@contextmanager
def worker_on(queue: str, **options: Any) -> Iterator[Any]:
    """A Celery worker of the project's app consuming ``queue`` in a thread of this process.

    A worker that stops may leave its last SQS long poll open: moto answers it with the next
    message sent to the queue, which nobody then reads and which stays hidden for the visibility
    timeout. Waiting the poll out keeps this worker from taking a later test's message.
    """
    try:
        with start_worker(
            app, pool="solo", concurrency=1, perform_ping_check=False, queues=[queue], loglevel="WARNING", **options
        ) as worker:
            yield worker
    finally:
        time.sleep(get_settings().sqs_wait_time_seconds + 1)


def pipes_change(row: dict[str, Any]) -> dict[str, Any]:
    """An item's INSERT as EventBridge Pipes sends it to an SQS target: the DynamoDB Streams
    record's JSON form (times in epoch seconds, images in DynamoDB JSON)."""
    image = serialize(row)
    return {
        "eventID": uuid.uuid4().hex,
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": int(time.time()),
            "Keys": {"pk": image["pk"], "sk": image["sk"]},
            "NewImage": image,
            "SequenceNumber": str(uuid.uuid4().int % 10**20),
            "SizeBytes": len(json.dumps(image)),
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/dmd-demand/stream/2026-12-01T00:00:00.000",
    }


#: What settings for real AWS need besides the shipped profile's placeholders (Settings.placeholders).
PRODUCTION = {
    "aws_account_id": "111122223333",
    "redis_url": "rediss://:s3cret@redis.internal:6379/0",
    "mongo_url": "mongodb://campaigns.internal:27017",
    "accounts_base_url": "https://accounts.ticketmaster.com",
    "sms_base_url": "https://sms.provider.net",
}


def eum_account(settings: Any, identity: str, configuration_set: str) -> dict[str, str]:
    """An End User Messaging account on the simulator, set up as ``dmd provision`` sets it up (the
    configuration set, its SNS event destination, the topic's subscription by the intake queue);
    returns the environment that points processes at it (as their second provider, the caller
    may change ``DMD_SMS_PROVIDER`` into ``DMD_SMS_FAILOVER_PROVIDER``)."""
    from dmd_tasks.ops.provision import ensure_eum_configuration_set, ensure_sms_events_topic

    endpoint = f"http://{settings.simulator_host}:{settings.simulator_port}"
    eum = settings.model_copy(
        update={
            "sms_provider": "eum",
            "eum_origination_identity": identity,
            "eum_configuration_set": configuration_set,
            "eum_endpoint_url": endpoint,
        }
    )
    ensure_eum_configuration_set(eum, ensure_sms_events_topic(eum)["topic_arn"])
    return {
        "DMD_SMS_PROVIDER": "eum",
        "DMD_EUM_ORIGINATION_IDENTITY": identity,
        "DMD_EUM_CONFIGURATION_SET": configuration_set,
        "DMD_EUM_ENDPOINT_URL": endpoint,
    }


def clear_circuits() -> None:
    """Close every provider circuit of this session (``dmd_tasks.infra.circuit``): a circuit is
    shared through Redis and stays tripped for a while, so a test that makes a provider fail
    would otherwise leave it open, or about to be, for the next test of the session."""
    import redis

    client = redis.Redis.from_url(get_settings().redis_url)
    keys = list(client.scan_iter("dmd:circuit:*"))
    if keys:
        client.delete(*keys)


def fresh_stack(settings: Any) -> None:
    """The session's stack as new: moto emptied and provisioned again, the session's Redis database
    flushed. A pipeline started after it sees no sale, queue message, lease or circuit an earlier
    test left (a due sale without a campaign, a sale kept waiting for quiet hours), so what it
    does and how fast is its test's own."""
    import redis
    import requests

    from dmd_tasks.ops.provision import provision

    requests.post(f"{settings.aws_endpoint_url}/moto-api/reset", timeout=30).raise_for_status()
    provision(settings)
    redis.Redis.from_url(settings.redis_url).flushdb()


def in_memory_spans() -> Any:
    """An in-memory exporter on this process's tracer provider: the SDK provider a test installed
    before (a process takes one provider only: OpenTelemetry refuses a second), or a new one. So a
    tracing test records its spans whichever tracing test ran first in the process."""
    import pytest
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not isinstance(provider, TracerProvider):
        pytest.skip(f"another test installed a tracer provider no exporter can be added to: {provider!r}")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
