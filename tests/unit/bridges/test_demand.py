"""The demand bridge's wiring: its planner, its handler (publishing and dead-lettering on moto), its reader.

Queues are the test's own (``queues`` fixture); the records are DynamoDB Streams records as boto3
returns them, or the same records wrapped in Kinesis records (the table's Kinesis destination).
"""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from bridges.demand import BRIDGE_NAME, build_handler, build_reader, planner
from bridges.sources import DynamoDBStreamSource, KinesisSource
from dmd_tasks.domain.entities import Demand
from dmd_tasks.infra import aws
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import SHORTEN_EVENT_URL
from dmd_tasks.ops.provision import ensure_kinesis_stream
from dmd_tasks.pipeline.records import decode_kinesis_change, parse_change
from dmd_tasks.store.codec import serialize
from dmd_tasks.store.items import item

_sequence = itertools.count(5000)


def record(name: str, new: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    ddb: dict[str, Any] = {
        "SequenceNumber": str(next(_sequence)),
        "ApproximateCreationDateTime": datetime.now(UTC),
        "NewImage": serialize(new),
    }
    if old is not None:
        ddb["OldImage"] = serialize(old)
    return {"eventID": uuid.uuid4().hex, "eventName": name, "dynamodb": ddb}


def demand_insert(event_id: str, fan_id: str) -> dict[str, Any]:
    return record("INSERT", item(Demand(eventId=event_id, fanId=fan_id, phone="+15550001111")))


def scheduled(nid: str) -> dict[str, Any]:
    base = {"entity": "NOTIFICATION", "id": nid, "attempts": 0}
    return record("MODIFY", {**base, "status": "scheduled"}, {**base, "status": "pending"})


def test_a_page_becomes_shorten_tasks_and_one_dead_letter_and_leaves_notifications_alone(queues) -> None:
    handler = build_handler(queues.settings, parse_change)
    sale = f"s{uuid.uuid4().hex[:8]}"
    # Given a page with demand for two events (three fans for one), six notifications moved to
    # scheduled, and a demand row without an event id
    bad = record("INSERT", {"pk": "EVENT#x", "sk": "DEMAND#f", "entity": "DEMAND", "fanId": "f"})
    page = [
        demand_insert("ev1", "fan1"),
        demand_insert("ev1", "fan2"),
        *[scheduled(f"{sale}:f{i}") for i in range(6)],
        bad,
        demand_insert("ev2", "fan1"),
        demand_insert("ev1", "fan3"),
    ]

    # When the demand bridge's handler takes it
    handler(page, "shard-1")

    # Then each event is shortened once, with its first record's correlation id
    shorten = queues.tasks("short-url")
    assert sorted((t.name, t.args[0]) for t in shorten) == [(SHORTEN_EVENT_URL, "ev1"), (SHORTEN_EVENT_URL, "ev2")]
    assert {t.args[0]: t.headers[CORRELATION_HEADER] for t in shorten}["ev1"] == f"ddb-{page[0]['eventID']}"
    # And no send: a notification moved to scheduled had its send task published by the stage that
    # moved it (dmd_tasks.pipeline.chain); routing its echo too would send it twice
    assert queues.tasks("send") == []
    # And the bad record is the one dead letter of the bridge, with its reason
    letters = queues.dead_letters(BRIDGE_NAME)
    assert [(d["reason"], d["source"], d["payload"]["eventID"]) for d in letters] == [
        ("demand item has no valid 'eventId'", "bridge-demand", bad["eventID"])
    ]


def test_an_event_shortened_on_an_earlier_page_is_not_shortened_again(queues) -> None:
    handler = build_handler(queues.settings, parse_change)

    handler([demand_insert("ev1", "fan1")], "shard-1")
    handler([demand_insert("ev1", "fan2"), demand_insert("ev2", "fan2")], "shard-1")

    assert sorted(t.args[0] for t in queues.tasks("short-url")) == ["ev1", "ev2"]


def kinesis_wrapped(change: dict[str, Any], sequence: str) -> dict[str, Any]:
    """The record as the table's Kinesis streaming destination carries it (Data: the change as JSON)."""
    change = {**change, "dynamodb": {**change["dynamodb"], "ApproximateCreationDateTime": 1764100000123}}
    change["dynamodb"].pop("SequenceNumber")
    return {"SequenceNumber": sequence, "Data": json.dumps(change).encode(), "PartitionKey": "p"}


def test_with_the_kinesis_decoder_wrapped_changes_are_routed_and_garbage_dead_lettered(queues) -> None:
    handler = build_handler(queues.settings, decode_kinesis_change)
    garbage = {"SequenceNumber": "77", "Data": b"not json", "PartitionKey": "p"}

    handler([kinesis_wrapped(demand_insert("ev9", "fan1"), "76"), garbage], "shard-1")

    assert [t.args for t in queues.tasks("short-url")] == [["ev9"]]
    letters = queues.dead_letters(BRIDGE_NAME)
    assert [d["reason"] for d in letters] == ["Kinesis Data is not JSON"]
    assert letters[0]["payload"]["Data"] == {"base64": "bm90IGpzb24="}
    assert letters[0]["correlation_id"] == "kin-77"


def test_the_planner_counts_routes_published_on_earlier_pages_as_duplicates() -> None:
    plan = planner(parse_change)

    result = plan([demand_insert("ev1", "fan1"), demand_insert("ev2", "fan1")], {(SHORTEN_EVENT_URL, "ev1")})

    assert [c.args for c in result.calls[SHORTEN_EVENT_URL]] == [("ev2",)]
    assert result.duplicates == 1 and result.routed == 1


def test_the_reader_reads_the_tables_stream_by_default(settings, stack) -> None:
    reader = build_reader(settings)

    assert reader.name == BRIDGE_NAME
    assert isinstance(reader.source, DynamoDBStreamSource)
    table = aws.client("dynamodb", settings).describe_table(TableName=settings.table_name)["Table"]
    assert reader.source.stream_id == table["LatestStreamArn"]


def test_the_reader_reads_the_kinesis_stream_when_one_is_configured(settings, stack) -> None:
    name = f"test-demand-{uuid.uuid4().hex[:8]}"
    arn = ensure_kinesis_stream(settings, name)["arn"]
    try:
        reader = build_reader(settings.model_copy(update={"demand_kinesis_stream_name": name}))

        assert isinstance(reader.source, KinesisSource)
        assert reader.source.stream_id == arn
    finally:
        aws.client("kinesis", settings).delete_stream(StreamName=name)
