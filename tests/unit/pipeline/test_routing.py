"""The routing table: which change wakes which task, de-duplicated, batched, delayed for retries (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dmd_tasks.domain.errors import InvalidRecord
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.sqs import SQS_MAX_MESSAGE_BYTES
from dmd_tasks.infra.topology import (
    QUEUE_NAMES,
    RECORD_SMS_STATUS,
    SEND_NOTIFICATIONS,
    SHORTEN_EVENT_URL,
    TASK_MODULES,
    TASK_QUEUES,
    queue_of,
)
from dmd_tasks.pipeline.records import ChangeRecord, decode_kinesis_change, parse_change
from dmd_tasks.pipeline.routing import plan_changes, plan_status_records, route_change
from tests.events import demand_insert, load


def change(seq: int, new: dict[str, Any] | None, old: dict[str, Any] | None, name: str = "MODIFY") -> ChangeRecord:
    return ChangeRecord(event_id=f"e{seq}", event_name=name, sequence_number=str(seq), new=new, old=old)


def notification(fan: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"entity": "NOTIFICATION", "id": f"sale1:{fan}", "status": status, "attempts": 0, **extra}


@pytest.mark.parametrize(
    ("new", "old"),
    [
        (notification("f1", "scheduled"), notification("f1", "pending")),
        (notification("f1", "scheduled", attempts=1, notBefore=1030), notification("f1", "sending")),
        (notification("f1", "sending"), notification("f1", "scheduled")),
        (notification("f1", "pending"), None),
        ({"entity": "NOTIFICATION", "id": "no-colon", "status": "scheduled"}, notification("f1", "pending")),
    ],
)
def test_a_notifications_own_changes_are_not_routed_by_the_bridge(
    new: dict[str, Any], old: dict[str, Any] | None
) -> None:
    # the stage that moves a notification into scheduled publishes its send task itself (chain.py):
    # routing the echo too would send it twice; an invalid id is the reconciler's to fail
    record = change(1, new, old, "MODIFY" if old else "INSERT")
    assert route_change(record) is None
    plan = plan_changes([record], lambda c: c)
    assert plan.calls == {} and plan.dead_letters == [] and plan.ignored == 1


def test_demand_insert_routes_to_shorten_with_correlation_header() -> None:
    target = route_change(parse_change(load("ddb_stream_demand_insert.json")))
    assert target is not None
    assert target.task == SHORTEN_EVENT_URL
    assert target.key == "ev1"
    assert target.item == "ev1"
    assert target.correlation_id == "ddb-c4ca4238a0b923820dcc509a6f75849b"
    call = plan_changes([load("ddb_stream_demand_insert.json")], parse_change).calls[SHORTEN_EVENT_URL][0]
    assert call.args == ("ev1",)
    assert call.headers[CORRELATION_HEADER] == "ddb-c4ca4238a0b923820dcc509a6f75849b"


def test_unknown_entity_is_invalid_and_known_entities_without_route_are_ignored() -> None:
    record = load("ddb_stream_demand_insert.json")
    record["dynamodb"]["NewImage"]["entity"] = {"S": "SPACESHIP"}
    with pytest.raises(InvalidRecord, match="unknown entity type 'SPACESHIP'"):
        route_change(parse_change(record))
    modify = load("ddb_stream_demand_insert.json")
    modify["eventName"] = "MODIFY"
    modify["dynamodb"]["OldImage"] = modify["dynamodb"]["NewImage"]
    assert route_change(parse_change(modify)) is None


def test_demand_without_valid_event_id_is_invalid() -> None:
    record = load("ddb_stream_demand_insert.json")
    record["dynamodb"]["NewImage"]["eventId"] = {"S": "../../etc"}
    with pytest.raises(InvalidRecord, match="eventId"):
        route_change(parse_change(record))


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
    plan = plan_changes(records, parse_change)
    calls = plan.calls[SHORTEN_EVENT_URL]
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
    plan = plan_changes([{"SequenceNumber": "9", "Data": b"\x00\x01"}], decode_kinesis_change)
    body = json.loads(plan.dead_letters[0].to_body())
    assert body["payload"]["Data"] == {"base64": "AAE="}
    assert body["reason"] == "Kinesis Data is not JSON"


def test_routes_published_from_earlier_pages_count_as_duplicates() -> None:
    first = plan_changes([demand_insert("evA", "f1", 1)], parse_change)
    assert first.keys == [(SHORTEN_EVENT_URL, "evA")]
    later = plan_changes(
        [demand_insert("evA", "f2", 2), demand_insert("evB", "f3", 3)], parse_change, recently_published=set(first.keys)
    )
    assert [c.args for c in later.calls[SHORTEN_EVENT_URL]] == [("evB",)]
    assert later.duplicates == 1


def test_every_task_has_a_queue_with_a_worker_and_a_module() -> None:
    assert set(TASK_QUEUES.values()) <= set(QUEUE_NAMES)
    assert queue_of(SEND_NOTIFICATIONS) == "send"
    assert all(m.startswith("dmd_tasks.") for m in TASK_MODULES)


def test_status_page_batches_valid_events_and_dead_letters_the_rest() -> None:
    good = b'{"type": "status", "message_id": "SM1", "status": "delivered", "timestamp": "t"}'
    records = [{"SequenceNumber": str(i), "Data": good} for i in range(30)]
    records.insert(5, {"SequenceNumber": "x", "Data": b"\x00garbage"})
    records.insert(9, {"SequenceNumber": "y", "Data": b'{"type": "status"}'})
    plan = plan_status_records(records, batch_size=25)
    calls = plan.calls[RECORD_SMS_STATUS]
    assert [len(c.args[0]) for c in calls] == [25, 5]
    assert plan.routed == 30
    assert calls[0].headers[CORRELATION_HEADER] == "kin-0"
    assert next(letter.reason for letter in plan.dead_letters) == "record is not JSON"
    assert "invalid status event" in plan.dead_letters[1].reason
    assert plan.dead_letters[0].correlation_id == "kin-x"


def test_oversize_status_records_are_dead_lettered_and_the_letter_fits_in_sqs() -> None:
    huge = {"SequenceNumber": "1", "Data": b'{"type": "status", "pad": "' + b"x" * 600_000 + b'"}'}
    plan = plan_status_records([huge], batch_size=25)
    assert plan.calls == {}
    assert plan.dead_letters[0].reason.startswith("record is 600")
    body = plan.dead_letters[0].to_body()
    assert len(body.encode()) < SQS_MAX_MESSAGE_BYTES
    assert "(payload truncated)" in body


@pytest.mark.parametrize(
    "keys",
    [
        {"pk": "SALE#s1", "sk": "RUN"},
        {"pk": "PHONE#s1#+15551230000", "sk": "PHONE"},
        {"pk": "OPTOUT#+15551230000", "sk": "OPTOUT"},
        {"pk": "SALE#s1", "sk": "NOTIFICATION#f1"},
    ],
)
def test_the_pipelines_own_items_without_an_entity_are_known_by_their_key_and_ignored(keys: dict[str, str]) -> None:
    # an update that creates an item (or a keys-only image) carries no 'entity': routed by key, not dead-lettered
    assert route_change(change(1, dict(keys), None, "INSERT")) is None
    plan = plan_changes([change(2, dict(keys), None, "INSERT")], decode=lambda c: c)
    assert plan.dead_letters == [] and plan.ignored == 1


@pytest.mark.parametrize(
    "keys",
    [
        {"pk": "EVENT#e1", "sk": "DEMAND#f1"},
        {"pk": "EVENT#e1", "sk": "EVENT"},
        {"pk": "SALE#s1", "sk": "SALE"},
        {"pk": "SALE#s1", "sk": "SOMETHING"},
        {"pk": "X#1", "sk": "RUN"},
    ],
)
def test_a_product_item_without_an_entity_is_still_a_dead_letter(keys: dict[str, str]) -> None:
    with pytest.raises(InvalidRecord, match="no 'entity'"):
        route_change(change(1, dict(keys), None, "INSERT"))
