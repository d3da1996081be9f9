"""SQS helpers: batch sends that re-send what SQS reports as failed, and giving messages back at once.

Against the session's moto server, each test on a queue of its own; a small fake stands in
for SQS only where moto cannot be made to fail an entry once and then accept it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra import aws
from dmd_tasks.infra import sqs as sqs_module
from dmd_tasks.infra.sqs import SQS_BATCH_MAX_ENTRIES, make_visible, send_batch_all


@pytest.fixture()
def sqs(settings, stack) -> Any:
    return aws.client("sqs", settings)


@pytest.fixture()
def queue_url(sqs: Any) -> Iterator[str]:
    url = sqs.create_queue(QueueName=f"test-sqs-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "60"})[
        "QueueUrl"
    ]
    yield url
    sqs.delete_queue(QueueUrl=url)


def receive_all(sqs: Any, url: str, expected: int | None = None) -> list[dict[str, Any]]:
    """Every message visible now (SQS returns at most ten a call, and sometimes fewer)."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 2 and (expected is None or len(messages) < expected):
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        empty = empty + 1 if not batch else 0
        messages.extend(batch)
    return messages


class FlakySQS:
    """A stand-in for an SQS client whose SendMessageBatch reports some entries as failed."""

    def __init__(self, fail_ids: set[str], times: int) -> None:
        self.fail_ids = fail_ids
        self.times = times
        self.calls: list[list[dict[str, Any]]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append([dict(e) for e in Entries])
        failing = self.fail_ids if len(self.calls) <= self.times else set()
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in failing],
            "Failed": [
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in Entries if e["Id"] in failing
            ],
        }


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(sqs_module.time, "sleep", recorded.append)
    return recorded


def test_send_batch_all_sends_every_entry(sqs: Any, queue_url: str) -> None:
    entries = [{"Id": str(i), "MessageBody": f"body-{i}"} for i in range(SQS_BATCH_MAX_ENTRIES)]

    send_batch_all(sqs, queue_url, entries)

    bodies = sorted(m["Body"] for m in receive_all(sqs, queue_url, expected=len(entries)))
    assert bodies == sorted(e["MessageBody"] for e in entries)


def test_entries_sqs_reports_as_failed_are_sent_again_and_only_those(sleeps: list[float]) -> None:
    # Given an SQS that fails entries 3 and 7 of the first call
    fake = FlakySQS(fail_ids={"3", "7"}, times=1)
    entries = [{"Id": str(i), "MessageBody": f"body-{i}", "DelaySeconds": i} for i in range(10)]

    # When the batch is sent
    send_batch_all(fake, "https://sqs.example/1/q", entries)

    # Then the second call carries exactly the failed entries, unchanged
    assert len(fake.calls) == 2
    assert fake.calls[0] == entries
    assert fake.calls[1] == [entries[3], entries[7]]
    assert len(sleeps) == 1


def test_entries_that_never_go_raise_a_transient_error_after_the_attempts_with_growing_pauses(
    sleeps: list[float],
) -> None:
    fake = FlakySQS(fail_ids={"2"}, times=100)
    entries = [{"Id": str(i), "MessageBody": "x"} for i in range(4)]

    with pytest.raises(TransientError, match="1 entries failed after 3 attempts"):
        send_batch_all(fake, "https://sqs.example/1/q", entries, attempts=3)

    assert len(fake.calls) == 3
    assert [[e["Id"] for e in call] for call in fake.calls[1:]] == [["2"], ["2"]]
    assert sleeps == sorted(sleeps) and sleeps[0] < sleeps[-1]


def test_an_entry_moto_refuses_for_good_raises_while_the_others_land(
    sqs: Any, queue_url: str, sleeps: list[float]
) -> None:
    # Given a batch where one entry asks for a delay SQS does not allow (over 900 s)
    entries = [{"Id": "ok1", "MessageBody": "a"}, {"Id": "bad", "MessageBody": "b", "DelaySeconds": 901}]
    entries.append({"Id": "ok2", "MessageBody": "c"})

    # When it is sent, Then the refused entry is reported after the attempts
    with pytest.raises(TransientError, match="1 entries failed"):
        send_batch_all(sqs, queue_url, entries, attempts=2)  # type: ignore[arg-type]
    # and the good entries were delivered once each
    assert sorted(m["Body"] for m in receive_all(sqs, queue_url, expected=2)) == ["a", "c"]


def test_make_visible_gives_more_than_ten_received_messages_back_at_once(sqs: Any, queue_url: str) -> None:
    # Given 23 messages received (and so hidden for the queue's 60 s visibility timeout)
    for start in range(0, 23, 10):
        send_batch_all(
            sqs, queue_url, [{"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, min(start + 10, 23))]
        )
    received = receive_all(sqs, queue_url, expected=23)
    assert len(received) == 23
    assert receive_all(sqs, queue_url) == []

    # When they are made visible again
    make_visible(sqs, queue_url, [m["ReceiptHandle"] for m in received])

    # Then every one of them can be received right away
    again = receive_all(sqs, queue_url, expected=23)
    assert sorted(m["Body"] for m in again) == sorted(f"m{i}" for i in range(23))


def test_make_visible_of_nothing_calls_nothing() -> None:
    fake = FlakySQS(fail_ids=set(), times=0)
    make_visible(fake, "https://sqs.example/1/q", [])
    assert fake.calls == []
