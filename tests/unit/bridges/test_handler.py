"""RecordHandler: plan a page, publish its tasks, dead-letter what cannot be routed, count outcomes.

Real BatchPublisher and DeadLetters on moto, with queues of the test's own (``queues`` fixture);
the plan is the pipeline's own (``plan_changes`` over DynamoDB stream records).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Container, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY

from bridges.handler import RecordHandler
from dmd_tasks.celery_app import app
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.domain.entities import Demand
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.deadletters import DeadLetters
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import SHORTEN_EVENT_URL, TaskCall
from dmd_tasks.ops.provision import ensure_queues
from dmd_tasks.pipeline.records import parse_change
from dmd_tasks.pipeline.routing import BatchPlan, plan_changes, plan_status_records
from dmd_tasks.store.codec import serialize
from dmd_tasks.store.items import item
from tests.events import load

BRIDGE = "bridge-demand"
_sequence = itertools.count(1000)


def record(name: str, new: dict[str, Any] | None, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """A DynamoDB Streams record as boto3 returns it."""
    ddb: dict[str, Any] = {"SequenceNumber": str(next(_sequence)), "ApproximateCreationDateTime": datetime.now(UTC)}
    if new is not None:
        ddb["NewImage"] = serialize(new)
    if old is not None:
        ddb["OldImage"] = serialize(old)
    return {"eventID": uuid.uuid4().hex, "eventName": name, "dynamodb": ddb}


def demand_insert(event_id: str, fan_id: str = "fan1") -> dict[str, Any]:
    return record("INSERT", item(Demand(eventId=event_id, fanId=fan_id, phone="+15550001111")))


def notification_moved(nid: str, old_status: str, new_status: str) -> dict[str, Any]:
    base = {"entity": "NOTIFICATION", "id": nid, "attempts": 0}
    return record("MODIFY", {**base, "status": new_status}, {**base, "status": old_status})


def spaceship() -> dict[str, Any]:
    return record("INSERT", {"pk": "X#1", "sk": "X", "entity": "SPACESHIP"})


def plan_page():
    def plan(records: Sequence[dict[str, Any]], recent: Container[tuple[str, str]]) -> BatchPlan:
        return plan_changes(records, parse_change, recently_published=recent)

    return plan


def handler_for(settings, dedupe_seconds: float = 0.0) -> RecordHandler:
    return RecordHandler(
        BRIDGE,
        plan_page(),
        BatchPublisher(app, settings),
        DeadLetters(settings),
        dedupe_seconds=dedupe_seconds,
    )


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("dmd_bridge_records_total", {"bridge": BRIDGE, "outcome": outcome}) or 0.0


OUTCOMES = ("enqueued", "duplicate", "ignored", "dead-lettered")


def test_the_plans_calls_are_published_to_each_tasks_queue(queues) -> None:
    # Given a page with demand for two events and two notifications moved to scheduled
    sale = f"s{uuid.uuid4().hex[:8]}"
    page = [
        demand_insert("ev1"),
        demand_insert("ev2"),
        notification_moved(f"{sale}:f1", "pending", "scheduled"),
        notification_moved(f"{sale}:f2", "pending", "scheduled"),
    ]

    # When the handler takes it
    handler_for(queues.settings)(page, "shard-1")

    # Then one shortening per event is on the short-url queue, with the record's correlation id
    shorten = queues.tasks("short-url")
    assert sorted((t.name, t.args[0]) for t in shorten) == [(SHORTEN_EVENT_URL, "ev1"), (SHORTEN_EVENT_URL, "ev2")]
    assert {t.headers[CORRELATION_HEADER] for t in shorten} == {
        f"ddb-{page[0]['eventID']}",
        f"ddb-{page[1]['eventID']}",
    }
    # And the notifications' own changes sent nothing: their stage published their sends itself
    assert queues.tasks("send") == []
    # And nothing was dead-lettered
    assert queues.dead_letters(BRIDGE) == []


def test_bad_records_go_to_the_bridges_dead_letter_queue_with_their_reason(queues) -> None:
    bad = spaceship()
    no_event = record("INSERT", {"pk": "EVENT#x", "sk": "DEMAND#f", "entity": "DEMAND", "fanId": "f"})

    handler_for(queues.settings)([bad, demand_insert("ev1"), no_event], "shard-1")

    # Then the two bad records are in <prefix>bridge-demand-dlq, each with its reason and the record itself
    sqs = aws.client("sqs", queues.settings)
    url = sqs.get_queue_url(QueueName=f"{queues.settings.queue_name_prefix}bridge-demand-dlq")["QueueUrl"]
    letters = [json.loads(body) for body in queues.drain(url)]
    by_reason = {letter["reason"]: letter for letter in letters}
    assert set(by_reason) == {"unknown entity type 'SPACESHIP'", "demand item has no valid 'eventId'"}
    spaceship_letter = by_reason["unknown entity type 'SPACESHIP'"]
    assert spaceship_letter["source"] == BRIDGE
    assert spaceship_letter["correlation_id"] == f"ddb-{bad['eventID']}"
    assert spaceship_letter["payload"]["eventID"] == bad["eventID"]
    assert spaceship_letter["payload"]["dynamodb"]["NewImage"]["entity"] == {"S": "SPACESHIP"}
    # And the good record of the page was published all the same
    assert [t.args for t in queues.tasks("short-url")] == [["ev1"]]


def test_outcomes_are_counted_per_record_not_per_message(queues) -> None:
    before = {o: counted(o) for o in OUTCOMES}
    # Given twelve delivery statuses (three messages of five) and one record that is not JSON
    good = [
        {"SequenceNumber": str(n), "Data": json.dumps(status_event(f"SM{uuid.uuid4().hex}")).encode()}
        for n in range(12)
    ]
    page = [*good, {"SequenceNumber": "bad", "Data": b"\x00garbage"}]

    handler = RecordHandler(
        BRIDGE,
        lambda records, _recent: plan_status_records(records, batch_size=5),
        BatchPublisher(app, queues.settings),
        DeadLetters(queues.settings),
    )
    handler(page, "shard-1")

    assert [len(t.args[0]) for t in queues.tasks("sms-status")] == [5, 5, 2]
    assert {o: counted(o) - before[o] for o in OUTCOMES} == {
        "enqueued": 12,
        "duplicate": 0,
        "ignored": 0,
        "dead-lettered": 1,
    }


def status_event(message_id: str) -> dict[str, Any]:
    return {"type": "status", "message_id": message_id, "status": "delivered", "timestamp": "2026-11-25T00:00:00Z"}


def test_published_routes_are_remembered_for_dedupe_seconds_then_forgotten(queues) -> None:
    handler = handler_for(queues.settings, dedupe_seconds=2.0)
    duplicates = counted("duplicate")

    # Given demand for an event already shortened on an earlier page
    handler([demand_insert("ev1", "fan1")], "shard-1")
    handler([demand_insert("ev1", "fan2")], "shard-1")

    # Then the event is shortened once, the second route counted as a duplicate
    assert [t.args for t in queues.tasks("short-url")] == [["ev1"]]
    assert counted("duplicate") - duplicates == 1

    # When the memory has expired, the same route is published again
    time.sleep(2.2)
    handler([demand_insert("ev1", "fan3")], "shard-1")
    assert [t.args for t in queues.tasks("short-url")] == [["ev1"]]


def test_without_dedupe_seconds_every_page_publishes_its_routes(queues) -> None:
    handler = handler_for(queues.settings, dedupe_seconds=0.0)

    handler([demand_insert("ev1", "fan1")], "shard-1")
    handler([demand_insert("ev1", "fan2")], "shard-1")

    assert [t.args for t in queues.tasks("short-url")] == [["ev1"], ["ev1"]]


def test_a_page_that_cannot_be_published_is_handed_back_whole_and_succeeds_when_read_again(queues) -> None:
    settings = queues.settings
    handler = handler_for(settings, dedupe_seconds=600.0)
    before = {o: counted(o) for o in OUTCOMES}
    page = [demand_insert("ev1"), spaceship()]
    # Given the short-url queue is gone
    aws.client("sqs", settings).delete_queue(QueueUrl=topology.queue_url(settings, "short-url"))

    # When the handler takes the page, it raises (the reader keeps its checkpoint and reads the page again)
    with pytest.raises(ClientError):
        handler(page, "shard-1")

    # And nothing of the page was dead-lettered, counted or remembered
    assert queues.dead_letters(BRIDGE) == []
    assert {o: counted(o) for o in OUTCOMES} == before

    # When the queue is back and the page is read again, all of it goes through
    ensure_queues(settings)
    handler(page, "shard-1")
    assert [t.args for t in queues.tasks("short-url")] == [["ev1"]]
    assert [letter["reason"] for letter in queues.dead_letters(BRIDGE)] == ["unknown entity type 'SPACESHIP'"]
    assert counted("enqueued") - before["enqueued"] == 1


def test_a_letter_carries_its_stream_position_shard_and_sequence(queues) -> None:
    bad = spaceship()
    handler_for(queues.settings)([bad], "shardId-000000000007")
    sqs = aws.client("sqs", queues.settings)
    url = sqs.get_queue_url(QueueName=f"{queues.settings.queue_name_prefix}bridge-demand-dlq")["QueueUrl"]
    (letter,) = [json.loads(body) for body in queues.drain(url)]
    assert letter["position"] == {"shard": "shardId-000000000007", "sequence": bad["dynamodb"]["SequenceNumber"]}


def test_a_page_whose_planning_raises_is_planned_record_by_record_and_only_the_culprit_is_dead_lettered(
    queues,
) -> None:
    """A defect in planning (not a record's fault as the planner saw it) must not stop the stream."""
    culprit = demand_insert("ev-culprit")

    def planner(records: Sequence[dict[str, Any]], recent: Container[tuple[str, str]]) -> BatchPlan:
        if any(r is culprit for r in records):
            raise MemoryError("planning blew up")
        return plan_page()(records, recent)

    handler = RecordHandler(BRIDGE, planner, BatchPublisher(app, queues.settings), DeadLetters(queues.settings))
    handler([demand_insert("ev1"), culprit, demand_insert("ev2")], "shard-1")

    assert sorted(t.args[0] for t in queues.tasks("short-url")) == ["ev1", "ev2"]
    sqs = aws.client("sqs", queues.settings)
    url = sqs.get_queue_url(QueueName=f"{queues.settings.queue_name_prefix}bridge-demand-dlq")["QueueUrl"]
    (letter,) = [json.loads(body) for body in queues.drain(url)]
    assert letter["reason"] == "unexpected MemoryError: planning blew up"
    assert letter["payload"]["eventID"] == culprit["eventID"]


def test_removes_and_ttl_deletes_are_counted_apart(queues) -> None:
    before = {o: counted(o) for o in ("removed", "ttl-expired")}
    handler_for(queues.settings)([load("ddb_stream_ttl_remove.json"), load("ddb_stream_remove.json")], "shard-1")
    assert counted("removed") - before["removed"] == 1
    assert counted("ttl-expired") - before["ttl-expired"] == 1


def test_a_task_message_sqs_would_refuse_is_dead_lettered_and_the_rest_of_the_page_published(queues) -> None:
    def planner(records: Sequence[dict[str, Any]], recent: Container[tuple[str, str]]) -> BatchPlan:
        plan = plan_page()(records, recent)
        plan.calls[SHORTEN_EVENT_URL].append(TaskCall(args=("x" * 300_000,)))  # far over 256 KiB
        return plan

    handler = RecordHandler(BRIDGE, planner, BatchPublisher(app, queues.settings), DeadLetters(queues.settings))
    handler([demand_insert("ev1")], "shard-1")

    assert [t.args for t in queues.tasks("short-url")] == [["ev1"]]
    sqs = aws.client("sqs", queues.settings)
    url = sqs.get_queue_url(QueueName=f"{queues.settings.queue_name_prefix}bridge-demand-dlq")["QueueUrl"]
    (letter,) = [json.loads(body) for body in queues.drain(url)]
    assert "SQS takes 262144" in letter["reason"] and letter["payload"]["truncated"]


def test_a_page_with_a_sale_written_as_waiting_wakes_beats_claim(queues) -> None:
    woken: list[str] = []
    handler = RecordHandler(
        BRIDGE, plan_page(), BatchPublisher(app, queues.settings), DeadLetters(queues.settings), wake=woken.append
    )
    sale = {"pk": "SALE#w1", "sk": "SALE", "entity": "SALE", "id": "w1", "eventId": "ev1", "status": "waiting"}
    handler([demand_insert("ev1"), notification_moved("w1:f1", "pending", "scheduled")], "shard-1")
    assert woken == []  # no sale in the page
    handler([record("MODIFY", {**sale, "status": "generating"}, sale)], "shard-1")
    assert woken == []  # the pipeline's own claim of the sale
    handler([record("INSERT", sale), record("MODIFY", sale, {**sale, "status": "generated"})], "shard-1")
    assert woken == ["sale written"]  # once a page
