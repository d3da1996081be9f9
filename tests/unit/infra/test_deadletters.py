"""Dead letters: the body written to a DLQ (its fields, an oversize payload truncated), and
``DeadLetters`` writing them to ``<prefix><name>-dlq`` on the session's moto server.

Each moto test provisions the queues under a prefix of its own, so the session's DLQs stay
untouched and "the right queue" is checked against every other DLQ of that prefix.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
from dmd_tasks.infra.settings import Settings, load_settings
from dmd_tasks.infra.sqs import SQS_BATCH_MAX_ENTRIES, SQS_MAX_MESSAGE_BYTES
from dmd_tasks.infra.topology import DLQ_OWNERS
from dmd_tasks.ops.provision import ensure_queues


@pytest.fixture()
def own_queues(stack) -> Settings:
    """Settings whose queues (and DLQs) exist under a prefix no other test uses."""
    settings = load_settings(queue_name_prefix=f"t{uuid.uuid4().hex[:10]}-")
    ensure_queues(settings)
    return settings


def drain(settings: Settings, url: str, expected: int | None = None) -> list[dict[str, Any]]:
    sqs = aws.client("sqs", settings)
    out: list[dict[str, Any]] = []
    empty = 0
    while empty < 2 and (expected is None or len(out) < expected):
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        empty = empty + 1 if not batch else 0
        out.extend(batch)
    return out


# --- the body ----------------------------------------------------------------------------------------


def test_the_body_carries_reason_payload_correlation_id_source_and_time_of_failure() -> None:
    before = time.time()
    letter = DeadLetter(reason="InvalidRecord: no eventId", payload={"raw": [1, 2]}, correlation_id="c-1", source="x")

    body = json.loads(letter.to_body())

    assert set(body) == {"reason", "payload", "correlation_id", "source", "failed_at"}
    assert body["reason"] == "InvalidRecord: no eventId"
    assert body["payload"] == {"raw": [1, 2]}
    assert (body["correlation_id"], body["source"]) == ("c-1", "x")
    assert before <= body["failed_at"] <= time.time()


def test_values_json_cannot_encode_are_written_as_text_not_lost() -> None:
    moment = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    body = json.loads(DeadLetter("why", {"n": Decimal("1.5"), "at": moment}).to_body())
    assert body["payload"] == {"n": "1.5", "at": str(moment)}
    assert body["correlation_id"] is None and body["source"] is None


def test_an_oversize_payload_is_truncated_keeping_the_reason_under_the_sqs_limit() -> None:
    payload = {"record": "x" * 400_000}
    letter = DeadLetter("InvalidRecord: too big", payload, correlation_id="c-2", source="bridge-demand")

    text = letter.to_body()

    assert len(text.encode()) < SQS_MAX_MESSAGE_BYTES
    body = json.loads(text)
    assert body["reason"] == "InvalidRecord: too big (payload truncated)"
    assert (body["correlation_id"], body["source"]) == ("c-2", "bridge-demand")
    # what is kept is the start of the payload's JSON, as long as it fits
    assert set(body["payload"]) == {"truncated"}
    kept = body["payload"]["truncated"]
    assert kept.startswith('{"record": "xxxx') and len(kept) > SQS_MAX_MESSAGE_BYTES // 4


def test_a_payload_just_under_the_limit_is_kept_whole() -> None:
    payload = "y" * (SQS_MAX_MESSAGE_BYTES - 2048)
    body = json.loads(DeadLetter("fits", payload).to_body())
    assert body["payload"] == payload and body["reason"] == "fits"


def test_an_oversize_payload_of_quotes_and_backslashes_also_stays_under_the_sqs_limit() -> None:
    # e.g. a record whose attribute is JSON text quoted in JSON again
    for payload in ({"body": '"' * 300_000}, {"body": "\\" * 300_000}):
        text = DeadLetter("InvalidRecord: too big", payload).to_body()
        assert len(text.encode()) < SQS_MAX_MESSAGE_BYTES


def test_an_oversize_stream_record_keeps_its_key_fields_and_position() -> None:
    record = {
        "eventID": "e1",
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": {"pk": {"S": "SALE#s1"}, "sk": {"S": "NOTIFICATION#f1"}},
            "SequenceNumber": "900",
            "NewImage": {"note": {"S": '"quoted"' * 60_000}},
        },
    }
    letter = DeadLetter("too big", record, position={"shard": "shardId-1", "sequence": "900"})
    text = letter.to_body()
    assert len(text.encode()) < SQS_MAX_MESSAGE_BYTES
    body = json.loads(text)
    assert body["position"] == {"shard": "shardId-1", "sequence": "900"}
    assert body["payload"]["eventID"] == "e1" and body["payload"]["eventName"] == "MODIFY"
    assert body["payload"]["dynamodb"] == {"Keys": record["dynamodb"]["Keys"], "SequenceNumber": "900"}  # type: ignore[index]
    assert body["payload"]["truncated"].startswith('{"eventID": "e1"')


# --- writing them --------------------------------------------------------------------------------------


def test_send_writes_one_letter_to_the_owners_dlq_with_the_owner_as_source(own_queues: Settings) -> None:
    DeadLetters(own_queues).send(
        "short-url", reason="PermanentError: no url", payload={"task": "t", "args": ["ev1"]}, correlation_id="c-3"
    )

    messages = drain(own_queues, topology.dlq_url(own_queues, "short-url"), expected=1)
    assert len(messages) == 1
    body = json.loads(messages[0]["Body"])
    assert body["reason"] == "PermanentError: no url"
    assert body["payload"] == {"task": "t", "args": ["ev1"]}
    assert (body["correlation_id"], body["source"]) == ("c-3", "short-url")


def test_more_than_ten_letters_all_land_in_the_named_dlq_and_nowhere_else(own_queues: Settings) -> None:
    # Given 23 letters of a bridge (more than one SendMessageBatch holds)
    letters = [
        DeadLetter(reason=f"bad record {i}", payload={"seq": i}, correlation_id=f"c{i}", source="bridge-demand")
        for i in range(23)
    ]
    assert len(letters) > SQS_BATCH_MAX_ENTRIES
    dead = DeadLetters(own_queues)
    assert dead.url("bridge-demand") == topology.dlq_url(own_queues, "bridge-demand")
    assert dead.url("bridge-demand").endswith(f"/{own_queues.queue_name_prefix}bridge-demand-dlq")

    # When they are sent as a batch
    dead.send_batch("bridge-demand", letters)

    # Then each is in <prefix>bridge-demand-dlq once, with its reason, payload, correlation id and source
    bodies = [json.loads(m["Body"]) for m in drain(own_queues, dead.url("bridge-demand"), expected=23)]
    assert sorted((b["payload"]["seq"], b["reason"], b["correlation_id"]) for b in bodies) == [
        (i, f"bad record {i}", f"c{i}") for i in range(23)
    ]
    assert {b["source"] for b in bodies} == {"bridge-demand"}
    # and no other dead-letter queue of this prefix got anything
    for owner in DLQ_OWNERS:
        if owner != "bridge-demand":
            assert drain(own_queues, dead.url(owner)) == [], owner


def test_a_batch_of_nothing_sends_nothing(own_queues: Settings) -> None:
    DeadLetters(own_queues).send_batch("query", [])
    assert drain(own_queues, topology.dlq_url(own_queues, "query")) == []


def test_ten_large_letters_each_within_the_message_limit_are_all_written(own_queues: Settings) -> None:
    letters = [DeadLetter(reason=f"big {i}", payload={"seq": i, "blob": "z" * 120_000}) for i in range(10)]
    assert all(len(letter.to_body().encode()) < SQS_MAX_MESSAGE_BYTES - 1024 for letter in letters)

    DeadLetters(own_queues).send_batch("bridge-sms-status", letters)

    bodies = drain(own_queues, topology.dlq_url(own_queues, "bridge-sms-status"), expected=10)
    assert sorted(json.loads(m["Body"])["payload"]["seq"] for m in bodies) == list(range(10))
