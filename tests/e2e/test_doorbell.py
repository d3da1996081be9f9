"""The status bridge's doorbell, with the real bridge process on the local stack: an idle
status stream is read rarely, and a send batch's ring has its receipts read at once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.wake import Doorbell
from dmd_tasks.ops.stack import ProcessGroup
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

#: the bridge's first quiet wait after a poll that read nothing (then 40 s, 80 s, …)
QUIET = 20.0


def receipt() -> bytes:
    event = {"type": "status", "message_id": f"SM{uuid.uuid4().hex}", "status": "delivered"}
    return json.dumps(event | {"timestamp": "2026-12-07T10:00:00Z"}).encode()


def settled(count: Callable[[], int], still: float = 3.0) -> tuple[float, int]:
    """Sample ``count`` until it has not changed for ``still`` seconds: (when it was last seen to
    change, monotonic; its value). A change is seen after it happened, never before."""
    value, changed = count(), time.monotonic()
    deadline = changed + 60
    while time.monotonic() - changed < still:
        assert time.monotonic() < deadline, "the bridge never stopped reading"
        time.sleep(0.2)
        now = count()
        if now != value:
            value, changed = now, time.monotonic()
    return changed, value


def test_an_idle_status_bridge_waits_long_and_reads_at_once_when_rung(settings, stack) -> None:
    kinesis, sqs = aws.client("kinesis", settings), aws.client("sqs", settings)
    url = topology.queue_url(settings, "sms-status")
    sqs.purge_queue(QueueUrl=url)

    def waiting() -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    def put() -> None:
        kinesis.put_record(StreamName=settings.sms_status_stream_name, Data=receipt(), PartitionKey=uuid.uuid4().hex)

    def put_and_see_it_read() -> bool:
        put()
        time.sleep(1.0)
        return waiting() >= 1

    group = ProcessGroup(
        settings.run_dir.resolve() / "logs" / f"e2e-doorbell-{uuid.uuid4().hex[:6]}",
        env={
            "DMD_BRIDGE_IDLE_SLEEP_SECONDS": str(QUIET),
            "DMD_BRIDGE_IDLE_MAX_SLEEP_SECONDS": str(QUIET),
            "DMD_BRIDGE_DOORBELL_MAX_SLEEP_SECONDS": "600",
            "DMD_BRIDGE_BUSY_SLEEP_SECONDS": "0",
            "DMD_BRIDGE_START_POSITION": "LATEST",
        },
    )
    group.start(["bridge-sms-status"])
    try:
        # Given the bridge reading: a first receipt's task is on the queue (time T)
        wait_until(put_and_see_it_read, timeout=60, what="the bridge reading")
        # The poll that read it goes on through the other shards, and the bridge reads again at once
        # while a poll reads something: the count settles (its last change at `seen`) when a poll
        # read nothing, and the bridge's quiet wait began then, QUIET seconds from `seen` at least
        seen, before = settled(waiting)
        # When a second receipt comes with no ring, then it waits QUIET seconds
        put()
        while time.monotonic() < seen + QUIET / 2:
            assert waiting() == before, "read without a ring before the bridge's quiet wait ended"
            time.sleep(0.5)
        # And when a send batch rings the doorbell, it is read at once
        Doorbell(redis.Redis.from_url(settings.redis_url), settings.sms_status_stream_name).ring()
        rung = time.monotonic()
        wait_until(lambda: waiting() > before, timeout=QUIET / 2 - 2, interval=0.1, what="the receipt read when rung")
        assert time.monotonic() - rung < QUIET / 2 - 2
    finally:
        group.stop()
