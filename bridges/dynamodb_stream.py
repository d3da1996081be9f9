"""The demand-stream bridge: the ``demand`` table's changes → Celery tasks on SQS.

Reads the table's DynamoDB Stream (or, with ``DMD_DEMAND_KINESIS_STREAM_NAME`` set, the
same change records from the table's Kinesis streaming destination), routes each change
by entity type and status transition, and enqueues the tasks with SendMessageBatch.
A record that cannot be parsed or routed goes to the ``bridge-demand`` dead-letter
queue with its reason; the rest of its page proceeds.

Run:  python -m bridges.dynamodb_stream
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import TTLCache

from bridges.changes import SEND_TASK, ChangeRecord, decode_kinesis_change, parse_change, plan_batch
from bridges.runner import run_bridge
from bridges.shards import DynamoDBStreamSource, KinesisSource, ShardReader, ShardSource
from dmd_tasks.deadletter import DeadLetters
from dmd_tasks.metrics import BRIDGE_RECORDS
from dmd_tasks.publish import BatchPublisher
from dmd_tasks.settings import Settings

log = logging.getLogger("bridges.dynamodb_stream")

BRIDGE_NAME = "bridge-demand"


class DemandStreamHandler:
    """Handles one page of change records: enqueue the routed tasks, dead-letter the bad records."""

    def __init__(self, publisher: BatchPublisher, dead_letters: DeadLetters,
                 decode: Callable[[Any], ChangeRecord], batch_sizes: dict[str, int],
                 dedupe_seconds: float = 600.0) -> None:
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._decode = decode
        self._batch_sizes = batch_sizes
        # A popular event's demand rows span many pages: enqueue its shortening once, not once
        # a page. (Only a hint: after a restart one more task per event is harmless.)
        self._recent: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=200_000, ttl=dedupe_seconds)

    def __call__(self, records: Sequence[dict[str, Any]], shard_id: str) -> None:
        plan = plan_batch(records, self._decode, batch_sizes=self._batch_sizes, recently_published=self._recent)
        for task_name, calls in plan.calls.items():
            self._publisher.publish(task_name, calls)
        for key in plan.keys:
            self._recent[key] = True
        if plan.dead_letters:
            self._dead_letters.send_batch(BRIDGE_NAME, plan.dead_letters)
            for letter in plan.dead_letters:
                log.warning("shard %s: record dead-lettered: %s", shard_id, letter.reason)
        BRIDGE_RECORDS.labels(BRIDGE_NAME, "enqueued").inc(plan.enqueued)
        BRIDGE_RECORDS.labels(BRIDGE_NAME, "duplicate").inc(plan.duplicates)
        BRIDGE_RECORDS.labels(BRIDGE_NAME, "ignored").inc(plan.ignored)
        BRIDGE_RECORDS.labels(BRIDGE_NAME, "dead-lettered").inc(len(plan.dead_letters))
        log.info("shard %s: %d records -> %d tasks (%d duplicates, %d ignored, %d dead letters)", shard_id,
                 len(records), plan.enqueued, plan.duplicates, plan.ignored, len(plan.dead_letters))


def build_reader(settings: Settings) -> ShardReader:
    from dmd_tasks.celery_app import app

    app.loader.import_default_modules()
    source: ShardSource
    if settings.demand_kinesis_stream_name:
        source = KinesisSource(settings, settings.demand_kinesis_stream_name)
        decode: Callable[[Any], ChangeRecord] = decode_kinesis_change
    else:
        source = DynamoDBStreamSource(settings, settings.table_name)
        decode = parse_change
    handler = DemandStreamHandler(BatchPublisher(app, settings), DeadLetters(settings), decode,
                                  batch_sizes={SEND_TASK: settings.send_batch_size},
                                  dedupe_seconds=settings.bridge_dedupe_seconds)
    return ShardReader.from_settings(settings, BRIDGE_NAME, source, handler)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    run_bridge(BRIDGE_NAME, build_reader)


if __name__ == "__main__":
    main()
