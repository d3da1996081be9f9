"""Record parsing, routing and de-duplication of the demand-stream bridge (no network)."""

from __future__ import annotations

import copy
import json
from datetime import timezone
from pathlib import Path

import pytest

from bridges.changes import SHORTEN_TASK, decode_kinesis_change, parse_change, plan_batch, route
from dmd_tasks.errors import InvalidRecord
from dmd_tasks.logs import CORRELATION_HEADER

EVENTS = Path(__file__).resolve().parent.parent / "events"


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def demand_insert(event_id: str, fan_id: str, seq: int) -> dict:
    record = copy.deepcopy(load("ddb_stream_demand_insert.json"))
    record["eventID"] = f"e{seq}"
    record["dynamodb"]["SequenceNumber"] = str(seq)
    image = record["dynamodb"]["NewImage"]
    image["eventId"] = {"S": event_id}
    image["fanId"] = {"S": fan_id}
    return record


def test_parse_stream_record_deserializes_images() -> None:
    change = parse_change(load("ddb_stream_demand_insert.json"))
    assert change.event_name == "INSERT"
    assert change.entity == "DEMAND"
    assert change.new is not None and change.new["eventId"] == "ev1"
    assert change.old is None
    assert change.sequence_number == "111"
    assert change.created_at is not None and change.created_at.tzinfo == timezone.utc
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


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.pop("dynamodb"), "no 'dynamodb'"),
    (lambda r: r.__setitem__("eventName", "UPSERT"), "eventName"),
    (lambda r: r["dynamodb"].pop("NewImage"), "neither NewImage nor OldImage"),
    (lambda r: r["dynamodb"]["NewImage"].__setitem__("eventId", {"Q": "x"}), "not valid DynamoDB JSON"),
])
def test_malformed_records_raise_invalid_record_with_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    record = load("ddb_stream_demand_insert.json")
    mutate(record)
    with pytest.raises(InvalidRecord, match=reason):
        route(parse_change(record))


def test_kinesis_garbage_is_invalid() -> None:
    with pytest.raises(InvalidRecord, match="not JSON"):
        decode_kinesis_change({"SequenceNumber": "1", "Data": b"\xff\x00not json"})
    with pytest.raises(InvalidRecord, match="no Data"):
        decode_kinesis_change({"SequenceNumber": "1"})


def test_demand_insert_routes_to_shorten_with_correlation_header() -> None:
    target = route(parse_change(load("ddb_stream_demand_insert.json")))
    assert target is not None
    assert target.task == SHORTEN_TASK
    assert target.key == "ev1"
    assert target.item == "ev1"
    assert target.correlation_id == "ddb-c4ca4238a0b923820dcc509a6f75849b"
    call = plan_batch([load("ddb_stream_demand_insert.json")], parse_change).calls[SHORTEN_TASK][0]
    assert call.args == ("ev1",)
    assert call.headers[CORRELATION_HEADER] == "ddb-c4ca4238a0b923820dcc509a6f75849b"


def test_unknown_entity_is_invalid_and_known_entities_without_route_are_ignored() -> None:
    record = load("ddb_stream_demand_insert.json")
    record["dynamodb"]["NewImage"]["entity"] = {"S": "SPACESHIP"}
    with pytest.raises(InvalidRecord, match="unknown entity type 'SPACESHIP'"):
        route(parse_change(record))
    modify = load("ddb_stream_demand_insert.json")
    modify["eventName"] = "MODIFY"
    modify["dynamodb"]["OldImage"] = modify["dynamodb"]["NewImage"]
    assert route(parse_change(modify)) is None


def test_demand_without_valid_event_id_is_invalid() -> None:
    record = load("ddb_stream_demand_insert.json")
    record["dynamodb"]["NewImage"]["eventId"] = {"S": "../../etc"}
    with pytest.raises(InvalidRecord, match="eventId"):
        route(parse_change(record))


def test_plan_batch_dedupes_by_event_and_dead_letters_bad_records_keeping_the_rest() -> None:
    bad = load("ddb_stream_demand_insert.json")
    bad["dynamodb"]["NewImage"]["entity"] = {"S": "SPACESHIP"}
    records = [
        demand_insert("evA", "f1", 1),
        demand_insert("evA", "f2", 2),
        bad,
        "not even a dict",
        demand_insert("evB", "f3", 3),
        demand_insert("evA", "f4", 4),
    ]
    plan = plan_batch(records, parse_change)
    calls = plan.calls[SHORTEN_TASK]
    assert [c.args for c in calls] == [("evA",), ("evB",)]
    assert plan.duplicates == 2
    assert len(plan.dead_letters) == 2
    reasons = [d.reason for d in plan.dead_letters]
    assert "unknown entity type 'SPACESHIP'" in reasons[0]
    assert "not an object" in reasons[1]
    assert plan.dead_letters[1].payload == "not even a dict"
    # the dead letter keeps the original record
    assert plan.dead_letters[0].payload["dynamodb"]["NewImage"]["entity"] == {"S": "SPACESHIP"}


def test_dead_letter_body_survives_bytes_payloads() -> None:
    plan = plan_batch([{"SequenceNumber": "9", "Data": b"\x00\x01"}], decode_kinesis_change)
    body = json.loads(plan.dead_letters[0].to_body())
    assert body["payload"]["Data"] == {"base64": "AAE="}
    assert body["reason"] == "Kinesis Data is not JSON"


def test_routes_published_from_earlier_pages_count_as_duplicates() -> None:
    first = plan_batch([demand_insert("evA", "f1", 1)], parse_change)
    assert first.keys == [(SHORTEN_TASK, "evA")]
    later = plan_batch([demand_insert("evA", "f2", 2), demand_insert("evB", "f3", 3)], parse_change,
                       recently_published=set(first.keys))
    assert [c.args for c in later.calls[SHORTEN_TASK]] == [("evB",)]
    assert later.duplicates == 1
