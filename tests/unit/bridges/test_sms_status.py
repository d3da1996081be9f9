"""The status bridge's wiring: its handler on Kinesis records of provider events (moto), its reader."""

from __future__ import annotations

import base64
import json
from typing import Any

from bridges.sms_status import BRIDGE_NAME, build_handler, build_reader
from bridges.sources import KinesisSource
from dmd_tasks.infra import aws
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import RECORD_SMS_STATUS


def kinesis_record(sequence: str, data: bytes) -> dict[str, Any]:
    return {"SequenceNumber": sequence, "Data": data, "PartitionKey": "p"}


def status(message_id: str, state: str = "delivered") -> dict[str, Any]:
    return {"type": "status", "message_id": message_id, "status": state, "timestamp": "2026-11-25T10:00:00Z"}


STOP = {"type": "inbound", "sender": "+15550001111", "body": "STOP", "timestamp": "2026-11-25T10:00:01Z"}


def test_valid_events_become_batched_status_tasks_and_invalid_records_dead_letters(queues) -> None:
    # Given the bridge packs two events a message
    handler = build_handler(queues.settings.model_copy(update={"status_batch_size": 2}))
    # And a page of three provider events and two records that are not one
    page = [
        kinesis_record("1", json.dumps(status("m1")).encode()),
        kinesis_record("2", b"\xff\xfe not json"),
        kinesis_record("3", json.dumps(status("m2", "undelivered")).encode()),
        kinesis_record("4", json.dumps({"type": "bogus"}).encode()),
        kinesis_record("5", json.dumps(STOP).encode()),
    ]

    # When the status bridge's handler takes it
    handler(page, "shardId-000000000000")

    # Then the events are on the sms-status queue, two a message, in stream order
    tasks = queues.tasks("sms-status")
    assert [t.name for t in tasks] == [RECORD_SMS_STATUS, RECORD_SMS_STATUS]
    assert [t.args for t in tasks] == [[[status("m1"), status("m2", "undelivered")]], [[STOP]]]
    assert [t.headers[CORRELATION_HEADER] for t in tasks] == ["kin-1", "kin-5"]
    # And each invalid record is a dead letter of the bridge, with its reason and its bytes
    letters = {d["correlation_id"]: d for d in queues.dead_letters(BRIDGE_NAME)}
    assert set(letters) == {"kin-2", "kin-4"}
    assert letters["kin-2"]["reason"] == "record is not JSON"
    assert letters["kin-4"]["reason"] == "unknown event type 'bogus'"
    assert base64.b64decode(letters["kin-2"]["payload"]["Data"]["base64"]) == b"\xff\xfe not json"
    assert all(d["source"] == BRIDGE_NAME for d in letters.values())


def test_a_status_event_missing_a_field_is_dead_lettered_with_the_field(queues) -> None:
    incomplete = {k: v for k, v in status("m1").items() if k != "message_id"}

    build_handler(queues.settings)([kinesis_record("9", json.dumps(incomplete).encode())], "shardId-000000000000")

    assert queues.tasks("sms-status") == []
    [letter] = queues.dead_letters(BRIDGE_NAME)
    assert letter["reason"].startswith("invalid status event: ('message_id',)")


def test_the_reader_reads_the_sms_status_stream(settings, stack) -> None:
    reader = build_reader(settings)

    assert reader.name == BRIDGE_NAME
    assert isinstance(reader.source, KinesisSource)
    summary = aws.client("kinesis", settings).describe_stream_summary(StreamName=settings.sms_status_stream_name)
    assert reader.source.stream_id == summary["StreamDescriptionSummary"]["StreamARN"]
