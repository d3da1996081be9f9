"""The demand-stream bridge: the ``demand`` table's changes → Celery tasks on SQS.

Reads the table's DynamoDB Stream (or, with ``DMD_DEMAND_KINESIS_STREAM_NAME`` set, the
same change records from the table's Kinesis streaming destination), routes each change
by entity type (``dmd_tasks.pipeline.routing``: a fan's demand row wakes the shortener; a
notification's own changes are not routed, their stage publishes the next task), and enqueues
the tasks with SendMessageBatch. A record that cannot be parsed or routed goes to the
``bridge-demand`` dead-letter queue with its reason; the rest of its page proceeds.

Run:  python -m bridges.demand
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Container, Sequence
from typing import Any

from bridges.handler import RecordHandler
from bridges.reader import ShardReader
from bridges.runner import run_bridge
from bridges.sources import DynamoDBStreamSource, KinesisSource, ShardSource
from dmd_tasks.celery_app import app
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra.deadletters import DeadLetters
from dmd_tasks.infra.settings import Settings
from dmd_tasks.pipeline.records import ChangeRecord, decode_kinesis_change, parse_change
from dmd_tasks.pipeline.routing import BatchPlan, plan_changes
from dmd_tasks.services import Services

BRIDGE_NAME = "bridge-demand"


def planner(
    decode: Callable[[Any], ChangeRecord], source: str = BRIDGE_NAME
) -> Callable[[Sequence[dict[str, Any]], Container[tuple[str, str]]], BatchPlan]:
    """How this bridge plans a page of change records (``source``: the bridge named in dead
    letters; ``bridge-sqs`` plans its demand changes so too)."""

    def plan(records: Sequence[dict[str, Any]], recent: Container[tuple[str, str]]) -> BatchPlan:
        return plan_changes(records, decode, source=source, recently_published=recent)

    return plan


def build_handler(settings: Settings, decode: Callable[[Any], ChangeRecord]) -> RecordHandler:
    return RecordHandler(
        BRIDGE_NAME,
        planner(decode),
        BatchPublisher(app, settings),
        DeadLetters(settings),
        dedupe_seconds=settings.bridge_dedupe_seconds,
        wake=Services(settings).wake.wake,
    )


def build_reader(settings: Settings) -> ShardReader:
    source: ShardSource
    if settings.demand_kinesis_stream_name:
        source = KinesisSource(settings, settings.demand_kinesis_stream_name)
        decode: Callable[[Any], ChangeRecord] = decode_kinesis_change
    else:
        source = DynamoDBStreamSource(settings, settings.table_name)
        decode = parse_change
    return ShardReader.from_settings(settings, BRIDGE_NAME, source, build_handler(settings, decode))


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args(argv)
    run_bridge(BRIDGE_NAME, build_reader)


if __name__ == "__main__":
    main()
