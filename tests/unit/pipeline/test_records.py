"""Decoding of the records the bridges read: DynamoDB Streams, its Kinesis form, status records (no network)."""

from __future__ import annotations

import json
from datetime import UTC

import pytest

from dmd_tasks.domain.errors import InvalidRecord
from dmd_tasks.pipeline.records import decode_kinesis_change, decode_status_record, jsonable, parse_change, restore
from dmd_tasks.pipeline.routing import route_change
from tests.events import load


def test_parse_stream_record_deserializes_images() -> None:
    change = parse_change(load("ddb_stream_demand_insert.json"))
    assert change.event_name == "INSERT"
    assert change.entity == "DEMAND"
    assert change.new is not None and change.new["eventId"] == "ev1"
    assert change.old is None
    assert change.sequence_number == "111"
    assert change.created_at is not None and change.created_at.tzinfo == UTC
    assert change.correlation_id == "ddb-c4ca4238a0b923820dcc509a6f75849b"


def test_kinesis_wrapped_record_parses_like_the_stream_record() -> None:
    payload = load("kinesis_ddb_demand_insert.json")
    kinesis_record = {"SequenceNumber": "4959", "PartitionKey": "x", "Data": json.dumps(payload).encode()}
    change = decode_kinesis_change(kinesis_record)
    assert change.entity == "DEMAND"
    assert change.new is not None and change.new["eventId"] == "ev2"
    assert change.sequence_number == "4959"
    # milliseconds in the Kinesis form
    assert change.created_at is not None and change.created_at.year == 2025


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda r: r.pop("dynamodb"), "no 'dynamodb'"),
        (lambda r: r.__setitem__("eventName", "UPSERT"), "eventName"),
        (lambda r: r["dynamodb"].pop("NewImage"), "neither NewImage nor OldImage"),
        (lambda r: r["dynamodb"]["NewImage"].__setitem__("eventId", {"Q": "x"}), "not valid DynamoDB JSON"),
    ],
)
def test_malformed_records_raise_invalid_record_with_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    record = load("ddb_stream_demand_insert.json")
    mutate(record)
    with pytest.raises(InvalidRecord, match=reason):
        route_change(parse_change(record))


def test_kinesis_garbage_is_invalid() -> None:
    with pytest.raises(InvalidRecord, match="not JSON"):
        decode_kinesis_change({"SequenceNumber": "1", "Data": b"\xff\x00not json"})
    with pytest.raises(InvalidRecord, match="no Data"):
        decode_kinesis_change({"SequenceNumber": "1"})


def test_status_record_carries_one_validated_provider_event() -> None:
    data = b'{"type": "status", "message_id": "SM1", "status": "delivered", "timestamp": "t"}'
    assert decode_status_record({"SequenceNumber": "1", "Data": data})["message_id"] == "SM1"
    # a Lambda-style record carries the same bytes as base64 text
    assert (
        decode_status_record(
            {"Data": "eyJ0eXBlIjogImluYm91bmQiLCAic2VuZGVyIjogIisxIiwgImJvZHkiOiAiU1RPUCIsICJ0aW1lc3RhbXAiOiAidCJ9"}
        )["type"]
        == "inbound"
    )


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"SequenceNumber": "1", "Data": b"\x00garbage"}, "not JSON"),
        ({"SequenceNumber": "1", "Data": b'{"type": "status"}'}, "invalid status event"),
        ({"SequenceNumber": "1", "Data": b"[1, 2]"}, "not an object"),
        ({"SequenceNumber": "1"}, "no Data"),
        ({"SequenceNumber": "1", "Data": "not base64!"}, "not base64"),
        ("a string", "not an object"),
    ],
)
def test_invalid_status_records_say_why(record: object, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        decode_status_record(record)


def test_jsonable_and_restore_round_trip_bytes() -> None:
    raw = {"Data": b"\x00\x01", "nested": [b"ab", {"k": 1}], "when": None}
    kept = jsonable(raw)
    assert json.loads(json.dumps(kept)) == kept
    assert kept["Data"] == {"base64": "AAE="}
    assert restore(kept) == raw
