"""Demand stream → URL shortening, end to end with real parts.

moto server (DynamoDB + Streams, SQS, Kinesis), Redis, the Bitly simulator, and the
Procfile's own ``bridge-demand`` and ``worker-short-url`` processes.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dmd_tasks.celery_app import app
from dmd_tasks.domain.entities import Demand, Event
from dmd_tasks.infra import aws
from dmd_tasks.ops import dlq as deadletter
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.codec import serialize
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.items import item
from dmd_tasks.store.table import DemandTable
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline(settings, stack, sim) -> Iterator[ProcessGroup]:
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "e2e", env={"DMD_BRIDGE_RECORDS_PER_READ": "50"})
    group.start(["bridge-demand", "worker-short-url"])
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture()
def table(settings) -> DemandTable:
    return DemandTable(settings)


def make_events(n: int) -> list[Event]:
    run = uuid.uuid4().hex[:8]
    return [
        Event(id=f"t{run}-{i}", name=f"Event {i}", url=f"https://www.ticketmaster.com/e/{run}/{i}") for i in range(n)
    ]


def demand_rows(events: list[Event], fans: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        item(Demand(eventId=events[n % len(events)].id, fanId=f"fan{offset + n}", phone=f"+1555{n:07d}"))
        for n in range(fans)
    ]


def all_short(table: DemandTable, events: list[Event]) -> dict[str, str] | None:
    found = {e.id: (EventRecords(table).get(e.id) or e).short_url for e in events}
    return found if all(found.values()) else None  # type: ignore[return-value]


def dead_letters_mentioning(settings, marker: str) -> list[dict[str, Any]]:
    letters = deadletter.receive(settings, "bridge-demand", max_messages=200)
    return [d for d in letters if marker in json.dumps(d)]


def test_each_event_gets_exactly_one_short_url_and_one_bitly_call(pipeline, table, sim) -> None:
    # Given six events and demand for them, with many fans per event
    events = make_events(6)
    table.put_items(item(e) for e in events)
    table.put_items(demand_rows(events, 60))

    # When the bridge and the worker have run
    links = wait_until(lambda: all_short(table, events), what="every event shortened")

    # Then each event has its link, and Bitly was called once per event
    for event in events:
        assert links[event.id].startswith("https://bit.ly/")
        assert sim.bitly_calls(event.url) == 1

    # When more demand arrives later for the same events (duplicates across batches)
    table.put_items(demand_rows(events, 30, offset=1000))
    sentinel = make_events(1)
    table.put_items(item(e) for e in sentinel)
    table.put_items(demand_rows(sentinel, 1))
    wait_until(lambda: all_short(table, sentinel), what="the sentinel event shortened")

    # Then nothing is shortened again
    for event in events:
        assert sim.bitly_calls(event.url) == 1
        assert (EventRecords(table).get(event.id) or event).short_url == links[event.id]


def test_malformed_records_are_dead_lettered_while_batch_mates_proceed(pipeline, table, settings, sim) -> None:
    events = make_events(2)
    table.put_items(item(e) for e in events)
    marker = uuid.uuid4().hex[:10]
    # Given one write carrying good demand rows and two items the bridge cannot route
    table.put_items(
        [
            demand_rows(events, 1)[0],
            {"pk": f"X#{marker}", "sk": "X", "entity": "SPACESHIP", "id": marker},
            {"pk": f"EVENT#{marker}", "sk": "DEMAND#f", "entity": "DEMAND", "id": marker, "fanId": "f"},
            demand_rows(events, 2)[1],
        ]
    )
    # Then the good rows are processed
    wait_until(lambda: all_short(table, events), what="batch-mates shortened")
    # And each bad record is in the bridge's dead-letter queue with its reason and payload
    letters = wait_until(
        lambda: (found := dead_letters_mentioning(settings, marker)) and len(found) >= 2 and found,
        what="two dead letters",
    )
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == ["demand item has no valid 'eventId'", "unknown entity type 'SPACESHIP'"]
    assert all(letter["source"] == "bridge-demand" and letter["payload"]["dynamodb"] for letter in letters)


def test_kinesis_wrapped_changes_are_bridged_and_garbage_is_dead_lettered(settings, stack, sim, table) -> None:
    from dmd_tasks.ops.provision import ensure_kinesis_stream

    stream_name = f"dmd-demand-changes-{uuid.uuid4().hex[:6]}"
    ensure_kinesis_stream(settings, stream_name)
    group = ProcessGroup(
        settings.run_dir.resolve() / "logs" / "e2e-kinesis", env={"DMD_DEMAND_KINESIS_STREAM_NAME": stream_name}
    )
    group.start(["bridge-demand", "worker-short-url"])
    try:
        events = make_events(3)
        table.put_items(item(e) for e in events)
        marker = uuid.uuid4().hex
        micro = _kinesis_change(events[2], "fanK3")
        micro["dynamodb"]["ApproximateCreationDateTime"] = int(time.time() * 1_000_000)
        micro["dynamodb"]["ApproximateCreationDateTimePrecision"] = "MICROSECOND"
        keys_only = _kinesis_change(events[0], "fanK9")
        del keys_only["dynamodb"]["NewImage"]
        ttl_remove = {**_kinesis_change(events[0], "fanK8"), "eventName": "REMOVE"}
        ttl_remove["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
        ttl_remove["dynamodb"]["OldImage"] = ttl_remove["dynamodb"].pop("NewImage")
        deep = b'{"eventName": "INSERT", "dynamodb": {"NewImage": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
        records = [
            {"Data": json.dumps(_kinesis_change(events[0], "fanK1")).encode(), "PartitionKey": "a"},
            {"Data": f"garbage {marker}".encode(), "PartitionKey": f"b-{marker}"},
            {"Data": deep, "PartitionKey": f"deep-{marker}"},
            {"Data": json.dumps(keys_only).encode(), "PartitionKey": f"keys-{marker}"},
            {"Data": json.dumps(ttl_remove).encode(), "PartitionKey": f"ttl-{marker}"},
            {"Data": json.dumps(micro).encode(), "PartitionKey": "d"},
            {"Data": json.dumps(_kinesis_change(events[1], "fanK2")).encode(), "PartitionKey": "c"},
        ]
        aws.client("kinesis", settings).put_records(StreamName=stream_name, Records=records)

        # every good record (either precision) is bridged, whatever came between them
        wait_until(lambda: all_short(table, events), what="events from Kinesis-wrapped changes shortened")
        encoded = base64.b64encode(f"garbage {marker}".encode()).decode()
        letters = wait_until(lambda: dead_letters_mentioning(settings, encoded), what="garbage dead-lettered")
        assert letters[0]["reason"] == "Kinesis Data is not JSON"
        # each poison form is dead-lettered with its reason and position; the TTL delete is not a letter
        poison = wait_until(
            lambda: (found := dead_letters_mentioning(settings, marker)) and len(found) >= 3 and found,
            what="every poison record dead-lettered",
        )
        reasons = {letter["payload"]["PartitionKey"].split("-")[0]: letter["reason"] for letter in poison}
        assert set(reasons) == {"b", "deep", "keys"}, reasons
        assert "nested too deeply" in reasons["deep"] and "KEYS_ONLY" in reasons["keys"]
        assert all(letter["position"]["sequence"] and letter["position"]["shard"] for letter in poison)
    finally:
        group.stop()


def _kinesis_change(event: Event, fan: str) -> dict[str, Any]:
    row = item(Demand(eventId=event.id, fanId=fan, phone="+15550001111"))
    return {
        "awsRegion": "us-east-1",
        "eventID": uuid.uuid4().hex,
        "eventName": "INSERT",
        "recordFormat": "application/json",
        "tableName": "dmd-demand",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "ApproximateCreationDateTime": int(time.time() * 1000),
            "Keys": serialize({"pk": row["pk"], "sk": row["sk"]}),
            "NewImage": serialize(row),
            "SizeBytes": 100,
        },
    }


def _checkpoint(settings) -> str | None:
    ddb = aws.client("dynamodb", settings)
    items = ddb.scan(TableName=settings.checkpoint_table_name)["Items"]
    mine = [
        i
        for i in items
        if i["stream"]["S"].startswith("bridge-demand|") and ":table/" + settings.table_name in i["stream"]["S"]
    ]
    return mine[0]["sequence"]["S"] if mine and "sequence" in mine[0] else None


def _last_stream_sequence(settings) -> str:
    ddb = aws.client("dynamodb", settings)
    streams = aws.client("dynamodbstreams", settings)
    arn = ddb.describe_table(TableName=settings.table_name)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    last = None
    while True:
        page = streams.get_records(ShardIterator=iterator, Limit=1000)
        if not page["Records"]:
            return last  # type: ignore[return-value]
        last = page["Records"][-1]["dynamodb"]["SequenceNumber"]
        iterator = page["NextShardIterator"]


def test_bridge_killed_mid_stream_resumes_from_its_checkpoint(pipeline, table, settings, sim) -> None:
    # Given a backlog of changes built up while the bridge was down (it reads 50 a page)
    pipeline.kill("bridge-demand", signal.SIGKILL)
    before = _checkpoint(settings)
    events = make_events(30)
    table.put_items(item(e) for e in events)
    table.put_items(demand_rows(events, 1500))
    last = _last_stream_sequence(settings)
    log_path = pipeline.log_dir / "bridge-demand.log"

    # When the bridge starts, and is killed with SIGKILL as soon as it has checkpointed part of it
    pipeline.start_one("bridge-demand")
    moved = wait_until(lambda: (c := _checkpoint(settings)) != before and c, interval=0.02, what="a checkpoint")
    pipeline.kill("bridge-demand", signal.SIGKILL)
    at_kill = _checkpoint(settings)
    assert at_kill is not None and int(at_kill) >= int(moved)
    assert int(at_kill) < int(last), "the bridge had already read everything; the test needs a longer backlog"

    # And is started again
    offset = log_path.stat().st_size
    pipeline.start_one("bridge-demand")

    # Then, once the killed process's shard lease has expired (it cannot release it), the new
    # process resumes after the checkpoint the killed one had written, and nothing is skipped or
    # shortened twice
    wait_until(
        lambda: "resuming after checkpoint" in log_path.read_text()[offset:],
        timeout=settings.bridge_lease_failover_seconds * 2 + 30,
        what="the restarted bridge to take over the lease",
    )
    wait_until(lambda: all_short(table, events), timeout=120, what="every event shortened after the restart")
    restarted_log = log_path.read_text()[offset:]
    assert f"resuming after checkpoint {at_kill}" in restarted_log
    assert "no checkpoint" not in restarted_log
    for event in events:
        assert sim.bitly_calls(event.url) == 1
    wait_until(lambda: int(_checkpoint(settings) or 0) >= int(last), what="the checkpoint to pass the backlog")


def _short_url_dead_letters(settings, marker: str) -> list[dict[str, Any]]:
    return [d for d in deadletter.receive(settings, "short-url", max_messages=200) if marker in json.dumps(d)]


def test_bitly_failures_are_retried_then_dead_lettered_and_bad_urls_never_leave(pipeline, table, settings, sim) -> None:
    # Given Bitly answering 500 to every call
    sim.configure(bitly={"error_rate": 1.0})
    try:
        doomed = make_events(1)
        bad = [
            Event(id=f"bad{uuid.uuid4().hex[:8]}", url="javascript:alert(1)"),
            Event(id=f"bad{uuid.uuid4().hex[:8]}", url="https://evil.example.net/x"),
        ]
        table.put_items(item(e) for e in doomed + bad)
        table.put_items(demand_rows(doomed + bad, 3))

        # Then the event is tried 1 + shorten_max_retries times, then dead-lettered with the reason
        letter = wait_until(
            lambda: _short_url_dead_letters(settings, doomed[0].id), timeout=90, what="the doomed event's dead letter"
        )[0]
        assert re.fullmatch(r"TransientError: bitly shorten: upstream error 50[03]", letter["reason"])
        assert letter["payload"]["args"] == [doomed[0].id]
        assert letter["payload"]["retries"] == settings.shorten_max_retries
        assert letter["correlation_id"].startswith("ddb-")
        assert sim.stats()["bitly"].get("responses_500", 0) + sim.stats()["bitly"].get("responses_503", 0) >= 3

        # And URLs that are not http(s) on an allowed host are dead-lettered without any call
        for event in bad:
            found = wait_until(lambda e=event: _short_url_dead_letters(settings, e.id), what="bad URL dead letter")  # type: ignore[misc]
            assert found[0]["reason"].startswith("DisallowedUrl")
            assert sim.bitly_calls(event.url) == 0
    finally:
        sim.configure(bitly={"error_rate": 0.0})

    # When an operator looks first (dry run), nothing is sent and the letters stay
    from dmd_tasks.ops.dlq import replay

    planned = replay(settings, app, "short-url", dry_run=True)
    assert any(doomed[0].id in line and line.startswith("would ") for line in planned)
    assert _short_url_dead_letters(settings, doomed[0].id)
    # And then re-drives the queue once Bitly is back: the doomed event gets its link, and its letter is gone
    replay(settings, app, "short-url", dry_run=False)
    wait_until(lambda: all_short(table, doomed), what="the replayed event shortened")
    assert not _short_url_dead_letters(settings, doomed[0].id)


def test_transient_bitly_failures_recover_with_retries(pipeline, table, sim) -> None:
    # Given Bitly rate-limiting hard (one call a second, 429 with Retry-After above it)
    sim.configure(bitly={"rate_limit_per_second": 1})
    try:
        events = make_events(3)
        table.put_items(item(e) for e in events)
        table.put_items(demand_rows(events, 3))
        # Then every event is shortened in the end, each with one successful call
        wait_until(lambda: all_short(table, events), timeout=90, what="events shortened despite 429s")
        for event in events:
            assert sim.bitly_calls(event.url) == 1
    finally:
        sim.configure(bitly={"rate_limit_per_second": 0})


def test_replaying_the_bridge_dead_letters_keeps_what_is_still_invalid(pipeline, settings) -> None:
    from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
    from dmd_tasks.ops.dlq import replay

    marker = uuid.uuid4().hex
    # a record that is still invalid, dead-lettered by the bridge
    DeadLetters(settings).send_batch(
        "bridge-demand",
        [
            DeadLetter(
                reason="unknown entity type 'X'",
                source="bridge-demand",
                correlation_id=f"ddb-{marker}",
                payload={
                    "eventID": marker,
                    "eventName": "INSERT",
                    "dynamodb": {"NewImage": {"entity": {"S": "X"}}, "SequenceNumber": "1"},
                },
            )
        ],
    )
    lines = replay(settings, app, "bridge-demand", dry_run=False, max_messages=200)
    assert any("still invalid, kept: unknown entity type 'X'" in line for line in lines)
    assert dead_letters_mentioning(settings, marker)
