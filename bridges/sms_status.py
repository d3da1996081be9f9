"""The status bridge: the SMS provider's Kinesis stream → ``record_sms_status`` tasks.

Reads every shard of ``DMD_SMS_STATUS_STREAM_NAME`` (parent before child, checkpointed
per shard after each handled page), validates each record, and enqueues the events in
batches of ``status_batch_size`` with SendMessageBatch. The send worker rings the stream's
doorbell after each batch (``dmd_tasks.infra.wake.Doorbell``): an idle stream is read once a
minute a shard, and receipts within half a second of a send. A record that is not a valid
provider event goes to the ``bridge-sms-status`` dead-letter queue with its reason.

Run:  python -m bridges.sms_status
"""

from __future__ import annotations

import argparse
from collections.abc import Container, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridges.handler import RecordHandler
from bridges.reader import ShardReader
from bridges.runner import run_bridge
from bridges.sources import KinesisSource
from dmd_tasks.celery_app import app
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra.deadletters import DeadLetters
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.wake import Doorbell
from dmd_tasks.pipeline.routing import BatchPlan, plan_status_records

BRIDGE_NAME = "bridge-sms-status"


def build_handler(settings: Settings) -> RecordHandler:
    batch_size = settings.status_batch_size

    def plan(records: Sequence[dict[str, Any]], _recent: Container[tuple[str, str]]) -> BatchPlan:
        return plan_status_records(records, batch_size, source=BRIDGE_NAME)

    return RecordHandler(BRIDGE_NAME, plan, BatchPublisher(app, settings), DeadLetters(settings))


def build_reader(settings: Settings) -> ShardReader:
    source = KinesisSource(settings, settings.sms_status_stream_name)
    # the send worker rings after each batch: an idle stream is read rarely, receipts at once
    # (a client that gives up fast: a frozen Redis must not hold up the reading)
    quick = redis.Redis.from_url(
        settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    doorbell = Doorbell(quick, settings.sms_status_stream_name)
    return ShardReader.from_settings(settings, BRIDGE_NAME, source, build_handler(settings), doorbell)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args(argv)
    run_bridge(BRIDGE_NAME, build_reader)


if __name__ == "__main__":
    main()
