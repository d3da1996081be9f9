"""Decoding of the records the bridges read: DynamoDB Streams, its Kinesis form, status records (no network)."""

from __future__ import annotations

import json
import time
from datetime import UTC
from decimal import Decimal

import pytest

from dmd_tasks.domain.errors import InvalidRecord
from dmd_tasks.infra.topology import RECORD_SMS_STATUS, SHORTEN_EVENT_URL
from dmd_tasks.pipeline.records import (
    ChangeRecord,
    decode_kinesis_change,
    decode_status_record,
    jsonable,
    parse_change,
    restore,
)
from dmd_tasks.pipeline.routing import MAX_STATUS_MESSAGE_JSON_BYTES, plan_changes, plan_status_records, route_change
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
        (lambda r: r["dynamodb"].pop("NewImage"), "only the item's keys \\(stream view type KEYS_ONLY\\)"),
        (
            lambda r: r["dynamodb"].__setitem__("OldImage", r["dynamodb"].pop("NewImage")),
            "without NewImage \\(stream view type must be NEW_AND_OLD_IMAGES\\)",
        ),
        (lambda r: r["dynamodb"]["NewImage"].__setitem__("eventId", {"Q": "x"}), "not valid DynamoDB JSON"),
    ],
)
def test_malformed_records_raise_invalid_record_with_reason(mutate, reason) -> None:
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


# --- every form AWS documents (the samples in tests/events) ---------------------------------------


def kinesis_wrapped(sample: str, sequence: str = "49590338271490256608559692538361571095921575989136588898") -> dict:
    """A Kinesis GetRecords record (as boto3 returns it) whose Data is the DynamoDB change record."""
    return {"SequenceNumber": sequence, "PartitionKey": "pk", "Data": json.dumps(load(sample)).encode()}


@pytest.mark.parametrize(
    "sample",
    ["kinesis_ddb_notification_scheduled_microsecond.json", "kinesis_ddb_notification_scheduled_millisecond.json"],
)
def test_the_kinesis_form_reads_its_creation_time_at_either_precision(sample: str) -> None:
    change = decode_kinesis_change(kinesis_wrapped(sample))
    assert change.created_at is not None
    assert change.created_at.isoformat().startswith("2025-11-25T19:46:40.123")
    assert change.new is not None and change.new["status"] == "scheduled"
    assert route_change(change) is None  # a notification's own change: its stage published the send


def test_a_creation_time_of_any_magnitude_is_read_or_dropped_never_raised() -> None:
    for value, precision in [(1764100000, None), (1764100000123, None), (1764100000123456, None), (10**30, None)]:
        record = load("ddb_stream_demand_insert.json")
        record["dynamodb"]["ApproximateCreationDateTime"] = value
        if precision:
            record["dynamodb"]["ApproximateCreationDateTimePrecision"] = precision
        created = parse_change(record).created_at
        assert created is None if value == 10**30 else created is not None and created.year == 2025


def test_every_attribute_type_is_read_binary_from_its_base64_text() -> None:
    change = parse_change(load("ddb_stream_demand_insert_all_types.json"))
    new = change.new
    assert new is not None
    assert new["avatar"] == b"hello" and new["blobs"] == {b"\x01\x02", b"\x03\x04"}
    assert new["tags"] == {"vip", "presale"} and new["seats"] == {Decimal(2), Decimal(4)}
    assert new["score"] == Decimal("12.5") and new["optedIn"] is True and new["note"] is None
    assert new["history"] == ["a", Decimal(1), b"\x00"] and new["prefs"] == {"lang": "en", "sig": b"\xff"}
    target = route_change(change)
    assert target is not None and target.task == SHORTEN_EVENT_URL and target.item == "ev5"


def test_removes_are_counted_and_ignored_ttl_deletes_apart() -> None:
    plan = plan_changes(
        [load("ddb_stream_ttl_remove.json"), load("ddb_stream_remove.json"), load("ddb_stream_demand_insert.json")],
        parse_change,
    )
    assert (plan.removed, plan.ttl_expired, plan.routed, plan.dead_letters) == (2, 1, 1, [])
    keys_only_remove = load("ddb_stream_remove.json")
    del keys_only_remove["dynamodb"]["OldImage"]  # a REMOVE needs no image, whatever the view type
    assert plan_changes([keys_only_remove], parse_change).removed == 1


def test_a_keys_only_record_is_dead_lettered_with_a_clear_reason() -> None:
    plan = plan_changes([load("ddb_stream_keys_only_modify.json"), load("ddb_stream_demand_insert.json")], parse_change)
    assert plan.routed == 1
    (letter,) = plan.dead_letters
    assert "KEYS_ONLY" in letter.reason and "NEW_AND_OLD_IMAGES" in letter.reason
    assert letter.position == {"sequence": "666"}


def test_the_status_sample_decodes_with_its_data_as_base64_text() -> None:
    assert decode_status_record(load("kinesis_sms_status_record.json"))["message_id"] == "SM1"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_a_status_record_nested_thousands_deep_is_dead_lettered_and_the_page_goes_on() -> None:
    good = load("kinesis_sms_status_record.json")
    poison = {"SequenceNumber": "2", "Data": b'{"type": "status", "x": ' + nested(5000) + b"}"}
    plan = plan_status_records([poison, good], batch_size=10)
    assert plan.routed == 1
    (letter,) = plan.dead_letters
    assert "nested too deeply" in letter.reason and letter.position == {"sequence": "2"}
    assert len(letter.to_body()) < 300_000  # and its letter can be written


def test_a_change_record_nested_thousands_deep_is_dead_lettered() -> None:
    deep: dict = {"L": []}
    cursor = deep
    for _ in range(3000):
        inner: dict = {"L": []}
        cursor["L"].append(inner)
        cursor = inner
    record = load("ddb_stream_demand_insert.json")
    record["dynamodb"]["NewImage"]["deep"] = deep
    plan = plan_changes([record, load("ddb_stream_ttl_remove.json")], parse_change)
    (letter,) = plan.dead_letters
    assert "nested too deeply" in letter.reason
    json.loads(letter.to_body())  # the copy stops at a depth: the letter is valid JSON
    assert plan.removed == 1


def test_whatever_a_record_raises_becomes_its_dead_letter_and_the_rest_proceed() -> None:
    def decode(raw: dict) -> ChangeRecord:
        if raw.get("boom"):
            raise ZeroDivisionError("a defect met by one record")
        return parse_change(raw)

    plan = plan_changes([{"boom": True, "eventID": "x1"}, load("ddb_stream_demand_insert.json")], decode)
    assert plan.routed == 1
    (letter,) = plan.dead_letters
    assert letter.reason == "unexpected ZeroDivisionError: a defect met by one record"
    assert letter.correlation_id == "ddb-x1"


def test_large_valid_status_events_are_split_into_messages_sqs_accepts() -> None:
    """A provider event may be up to 16 KB (a long inbound reply): 25 of them in one message would
    exceed SQS's 256 KiB."""
    records = [
        {
            "SequenceNumber": str(n),
            "Data": json.dumps(
                {"type": "inbound", "sender": f"+1212555{n:04d}", "body": "x" * 15_000, "timestamp": "t"}
            ).encode(),
        }
        for n in range(25)
    ]
    plan = plan_status_records(records, batch_size=25)
    calls = plan.calls[RECORD_SMS_STATUS]
    assert len(calls) > 1 and plan.dead_letters == []
    assert [e["sender"] for c in calls for e in c.args[0]] == [f"+1212555{n:04d}" for n in range(25)]
    assert all(len(json.dumps(c.args[0])) <= MAX_STATUS_MESSAGE_JSON_BYTES for c in calls)
    small = plan_status_records([load("kinesis_sms_status_record.json")] * 30, batch_size=25)
    assert [len(c.args[0]) for c in small.calls[RECORD_SMS_STATUS]] == [25, 5]  # small ones: by count


def test_fields_no_provider_event_has_do_not_travel_on() -> None:
    """Extra fields are not the provider's: a nested structure there, which the worker's decoder would
    refuse (losing every event of its message), is dropped at the bridge."""
    head = b'{"type":"status","message_id":"%s","status":"delivered","timestamp":"t",'
    data = head % b"m99" + b'"meta":{"__type__":"nope","__value__":1}}'
    deep = head % b"m98" + b'"x":' + nested(200) + b"}"
    plan = plan_status_records([{"SequenceNumber": "1", "Data": data}, {"SequenceNumber": "2", "Data": deep}], 25)
    (call,) = plan.calls[RECORD_SMS_STATUS]
    assert call.args[0] == [
        {"type": "status", "message_id": "m99", "status": "delivered", "timestamp": "t"},
        {"type": "status", "message_id": "m98", "status": "delivered", "timestamp": "t"},
    ]


def test_hostile_ids_and_precisions_neither_grow_messages_nor_lose_the_change() -> None:
    record = load("ddb_stream_demand_insert.json")
    record["eventID"] = "A" * 200_000
    record["dynamodb"]["ApproximateCreationDateTimePrecision"] = ["MILLISECOND"]
    plan = plan_changes([record], parse_change)
    (call,) = plan.calls[SHORTEN_EVENT_URL]
    assert plan.dead_letters == [] and len(call.headers["dmd_correlation_id"]) < 64


def test_a_letter_of_a_record_with_a_huge_id_and_no_route_is_written_at_once() -> None:
    record = {"eventID": "B" * 300_000, "eventName": "BOGUS", "dynamodb": {"SequenceNumber": "100"}}
    (letter,) = plan_changes([record], parse_change).dead_letters
    started = time.monotonic()
    text = letter.to_body()
    assert time.monotonic() - started < 2 and len(text.encode()) < 262_144
    assert json.loads(text)["position"] == {"sequence": "100"}
