"""The status bridge: the SMS provider's Kinesis stream → ``record_sms_status`` tasks.

Reads every shard of ``DMD_SMS_STATUS_STREAM_NAME`` (parent before child, checkpointed
per shard after each handled page), validates each record, and enqueues the events in
batches of ``status_batch_size`` with SendMessageBatch. A record that is not a valid
provider event goes to the ``bridge-sms-status`` dead-letter queue with its reason.

Run:  python -m bridges.kinesis_sms_status
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

from bridges.changes import jsonable, record_correlation_id
from bridges.runner import run_bridge
from bridges.shards import KinesisSource, ShardReader
from dmd_tasks import logs
from dmd_tasks.deadletter import DeadLetter, DeadLetters
from dmd_tasks.metrics import BRIDGE_RECORDS
from dmd_tasks.publish import BatchPublisher, TaskCall
from dmd_tasks.settings import Settings

log = logging.getLogger("bridges.kinesis_sms_status")

BRIDGE_NAME = "bridge-sms-status"
STATUS_TASK = "dmd_tasks.sms_status.record_sms_status"
#: A provider event is a few hundred bytes; anything this large is not one.
MAX_EVENT_BYTES = 16_384


def plan_status_page(records: Sequence[dict[str, Any]], batch_size: int) -> tuple[list[TaskCall], list[DeadLetter]]:
    """Valid provider events in batches, and a dead letter per invalid record (pure)."""
    from dmd_tasks.sms_status import parse_event

    events: list[tuple[dict[str, Any], str]] = []
    letters: list[DeadLetter] = []
    for record in records:
        try:
            data = record["Data"]
            if len(data) > MAX_EVENT_BYTES:
                raise ValueError(f"record is {len(data)} bytes; provider events are at most {MAX_EVENT_BYTES}")
            raw = json.loads(data)
            parse_event(raw)
        except (KeyError, TypeError, UnicodeDecodeError, ValueError) as exc:
            reason = "record is not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc) or repr(exc)
            letters.append(DeadLetter(reason=reason, payload=jsonable(record), source=BRIDGE_NAME,
                                      correlation_id=record_correlation_id(record)))
            continue
        events.append((raw, f"kin-{record.get('SequenceNumber', '')}"))
    calls = [TaskCall(args=([e for e, _ in events[i:i + batch_size]],),
                      headers={logs.CORRELATION_HEADER: events[i][1]})
             for i in range(0, len(events), batch_size)]
    return calls, letters


class StatusStreamHandler:
    def __init__(self, publisher: BatchPublisher, dead_letters: DeadLetters, batch_size: int) -> None:
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._batch_size = batch_size

    def __call__(self, records: Sequence[dict[str, Any]], shard_id: str) -> None:
        calls, letters = plan_status_page(records, self._batch_size)
        if calls:
            self._publisher.publish(STATUS_TASK, calls)
        if letters:
            self._dead_letters.send_batch(BRIDGE_NAME, letters)
        BRIDGE_RECORDS.labels(BRIDGE_NAME, "enqueued").inc(sum(len(c.args[0]) for c in calls))
        BRIDGE_RECORDS.labels(BRIDGE_NAME, "dead-lettered").inc(len(letters))
        log.info("shard %s: %d records -> %d tasks, %d dead letters", shard_id, len(records), len(calls),
                 len(letters))


def build_reader(settings: Settings) -> ShardReader:
    from dmd_tasks.celery_app import app

    app.loader.import_default_modules()
    handler = StatusStreamHandler(BatchPublisher(app, settings), DeadLetters(settings), settings.status_batch_size)
    return ShardReader.from_settings(settings, BRIDGE_NAME, KinesisSource(settings, settings.sms_status_stream_name),
                                     handler)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    run_bridge(BRIDGE_NAME, build_reader)


if __name__ == "__main__":
    main()
