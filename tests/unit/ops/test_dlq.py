"""``dmd dlq list|replay``: reading dead letters without consuming them, and re-driving each kind.

Dead-letter queues and the queues replay publishes to through settings are the test's own
(``queues`` fixture). A task letter is re-published by the Celery app
(``dmd_tasks.celery_app.app``), whose queues are the session's: the test takes its own message
from there by a marker.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from dmd_tasks.celery_app import app
from dmd_tasks.domain.entities import Demand
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import GENERATE_NOTIFICATIONS, RECORD_SMS_STATUS, SEND_NOTIFICATIONS, SHORTEN_EVENT_URL
from dmd_tasks.ops.dlq import receive, replay, shown
from dmd_tasks.pipeline.records import jsonable
from dmd_tasks.store.codec import serialize
from dmd_tasks.store.items import item

_sequence = itertools.count(7000)


# --- what the dead-letter queues hold ------------------------------------------------------------


def put_letters(settings, owner: str, *letters: DeadLetter) -> None:
    DeadLetters(settings).send_batch(owner, list(letters))


def put_raw(settings, owner: str, body: str) -> None:
    aws.client("sqs", settings).send_message(QueueUrl=topology.dlq_url(settings, owner), MessageBody=body)


def task_letter(
    task: str, args: list[Any], reason: str = "TransientError: upstream error 503", queue: str = "short-url"
) -> DeadLetter:
    """What a task that failed for good writes (``dmd_tasks.celery_app.base``)."""
    return DeadLetter(
        reason=reason,
        payload={"task": task, "task_id": str(uuid.uuid4()), "args": args, "kwargs": {}, "retries": 2},
        correlation_id=f"ddb-{uuid.uuid4().hex}",
        source=queue,
    )


def change(name: str, new: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """A DynamoDB Streams record as boto3 returns it."""
    ddb: dict[str, Any] = {
        "SequenceNumber": str(next(_sequence)),
        "ApproximateCreationDateTime": datetime.now(UTC),
        "NewImage": serialize(new),
    }
    if old is not None:
        ddb["OldImage"] = serialize(old)
    return {"eventID": uuid.uuid4().hex, "eventName": name, "dynamodb": ddb}


def notification_moved(nid: str, old_status: str, new_status: str) -> dict[str, Any]:
    base = {"entity": "NOTIFICATION", "id": nid, "attempts": 0}
    return change("MODIFY", {**base, "status": new_status}, {**base, "status": old_status})


def bridge_letter(owner: str, record: dict[str, Any], reason: str) -> DeadLetter:
    """What a bridge writes for a record it could not route: the record in JSON form, with the reason."""
    return DeadLetter(reason=reason, payload=jsonable(record), source=owner)


def status_event(message_id: str) -> dict[str, Any]:
    return {"type": "status", "message_id": message_id, "status": "delivered", "timestamp": "2026-11-25T10:00:00Z"}


def session_queue(settings, queue: str) -> str:
    """The Celery app's queue (the session's settings name it)."""
    return topology.queue_url(settings, queue)


# --- receive ------------------------------------------------------------------------------------


def test_receive_lists_dead_letters_without_consuming_them(queues) -> None:
    settings = queues.settings
    # Given two dead letters and one message moved there by the redrive policy (not JSON)
    first = task_letter(SEND_NOTIFICATIONS, [["s1:f1"]], reason="ProviderRejected: invalid number", queue="send")
    second = task_letter(SEND_NOTIFICATIONS, [["s1:f2"]], reason="retries exhausted", queue="send")
    put_letters(settings, "send", first, second)
    put_raw(settings, "send", "eyJub3QiOiAiYSBsZXR0ZXIifQ==")

    # When they are listed, twice
    listed = receive(settings, "send")
    again = receive(settings, "send")

    # Then each comes as written, the raw message with why it is not a letter
    assert sorted(entry["reason"] for entry in listed) == [
        "ProviderRejected: invalid number",
        "not a dmd dead letter (moved by the redrive policy)",
        "retries exhausted",
    ]
    letter = next(entry for entry in listed if entry["reason"] == "retries exhausted")
    assert letter["payload"] == second.payload and letter["correlation_id"] == second.correlation_id
    assert letter["source"] == "send" and isinstance(letter["failed_at"], float)
    raw = next(entry for entry in listed if "raw" in entry)
    assert raw["raw"] == "eyJub3QiOiAiYSBsZXR0ZXIifQ==" and raw["message_id"]
    # And listing consumed nothing: the second listing is the same, and all three are still queued
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, listed))
    assert len(queues.drain(topology.dlq_url(settings, "send"))) == 3


def test_receive_returns_at_most_max_messages(queues) -> None:
    letters = [task_letter(GENERATE_NOTIFICATIONS, [f"sale{i}"], queue="generate") for i in range(12)]
    put_letters(queues.settings, "generate", *letters)

    assert len(receive(queues.settings, "generate", max_messages=11)) == 11
    assert len(receive(queues.settings, "generate", max_messages=3)) == 3
    assert len(receive(queues.settings, "generate", max_messages=50)) == 12


# --- replay -------------------------------------------------------------------------------------


def test_a_dry_run_sends_and_deletes_nothing(queues, settings) -> None:
    mine = queues.settings
    marker = f"ev{uuid.uuid4().hex[:10]}"
    put_letters(mine, "short-url", task_letter(SHORTEN_EVENT_URL, [marker], reason="TransientError: boom"))
    put_raw(mine, "short-url", "a-redriven-celery-message")

    lines = replay(mine, app, "short-url", dry_run=True)

    # Then it says what it would do
    assert sorted(lines) == [
        f"would {SHORTEN_EVENT_URL}('{marker}',) -> re-published (was: TransientError: boom)",
        "would redriven message -> back to queue short-url",
    ]
    # And nothing was sent: neither by the app nor back to the source queue
    assert queues.take_tasks(session_queue(settings, "short-url"), marker) == []
    assert queues.drain(topology.queue_url(mine, "short-url")) == []
    # And both letters are still there
    assert len(queues.drain(topology.dlq_url(mine, "short-url"))) == 2


def test_a_task_dead_letter_is_republished_to_its_tasks_queue_and_deleted(queues, settings) -> None:
    mine = queues.settings
    marker = f"ev{uuid.uuid4().hex[:10]}"
    letter = task_letter(SHORTEN_EVENT_URL, [marker], reason="TransientError: bitly shorten: upstream error 503")
    put_letters(mine, "short-url", letter)

    lines = replay(mine, app, "short-url", dry_run=False)

    assert lines == [
        f"{SHORTEN_EVENT_URL}('{marker}',) -> re-published (was: TransientError: bitly shorten: upstream error 503)"
    ]
    # Then the task is on its queue again, with the letter's correlation id
    [task] = queues.take_tasks(session_queue(settings, "short-url"), marker)
    assert (task.name, task.args, task.kwargs) == (SHORTEN_EVENT_URL, [marker], {})
    assert task.headers[CORRELATION_HEADER] == letter.correlation_id
    # And the letter is gone
    assert queues.dead_letters("short-url") == []


def test_a_notifications_change_dead_lettered_by_an_older_bridge_needs_no_task_now(queues) -> None:
    mine = queues.settings
    sale = f"s{uuid.uuid4().hex[:8]}"
    # Given the bridge's dead letters: a notification moved to scheduled (a bridge of an older
    # version routed those; dead-lettered when SQS was down, say) and an invalid record
    valid = notification_moved(f"{sale}:f1", "pending", "scheduled")
    invalid = change("INSERT", {"pk": "X#1", "sk": "X", "entity": "SPACESHIP"})
    put_letters(
        mine,
        "bridge-demand",
        bridge_letter("bridge-demand", valid, "SendMessageBatch failed"),
        bridge_letter("bridge-demand", invalid, "unknown entity type 'SPACESHIP'"),
    )

    lines = replay(mine, app, "bridge-demand", dry_run=False)

    # Then the notification's letter is done with (its stage publishes its send, and a scheduled
    # notification without one is the reconciler's), and nothing is sent twice
    assert sorted(lines) == [
        "record needs no task, deleted",
        "record still invalid, kept: unknown entity type 'SPACESHIP'",
    ]
    assert queues.tasks("send") == []
    # And only the invalid record stays, with its reason
    assert [(d["reason"], d["payload"]["eventID"]) for d in receive(mine, "bridge-demand")] == [
        ("unknown entity type 'SPACESHIP'", invalid["eventID"])
    ]


def test_a_kinesis_wrapped_demand_record_is_decoded_as_such_and_rerouted(queues) -> None:
    mine = queues.settings
    event_id = f"ev{uuid.uuid4().hex[:10]}"
    demand = change("INSERT", item(Demand(eventId=event_id, fanId="fan1", phone="+15550001111")))
    demand["dynamodb"]["ApproximateCreationDateTime"] = 1764100000123
    wrapped = {"SequenceNumber": "42", "Data": json.dumps(demand).encode(), "PartitionKey": "p"}
    put_letters(mine, "bridge-demand", bridge_letter("bridge-demand", wrapped, "SendMessageBatch failed"))

    lines = replay(mine, app, "bridge-demand", dry_run=False)

    assert lines == [f"record -> {SHORTEN_EVENT_URL} (was: SendMessageBatch failed)"]
    assert [(t.name, t.args) for t in queues.tasks("short-url")] == [(SHORTEN_EVENT_URL, [event_id])]
    assert queues.dead_letters("bridge-demand") == []


def test_a_record_that_needs_no_task_any_more_is_deleted(queues) -> None:
    mine = queues.settings
    sending = notification_moved("s1:f1", "scheduled", "sending")
    put_letters(mine, "bridge-demand", bridge_letter("bridge-demand", sending, "SendMessageBatch failed"))

    assert replay(mine, app, "bridge-demand", dry_run=False) == ["record needs no task, deleted"]
    assert queues.tasks("send") == []
    assert queues.dead_letters("bridge-demand") == []


def test_a_redriven_message_goes_back_to_its_queue(queues) -> None:
    mine = queues.settings
    # Given a message SQS moved after too many receives (kombu's base64 body, not a dmd letter)
    body = base64.b64encode(json.dumps({"body": "e30=", "headers": {"task": "x"}}).encode()).decode()
    put_raw(mine, "generate", body)

    lines = replay(mine, app, "generate", dry_run=False)

    assert lines == ["redriven message -> back to queue generate"]
    assert queues.drain(topology.queue_url(mine, "generate")) == [body]
    assert queues.dead_letters("generate") == []


def test_a_status_record_is_rerouted_to_the_sms_status_queue_and_an_invalid_one_kept(queues) -> None:
    mine = queues.settings
    valid = {"SequenceNumber": "101", "Data": json.dumps(status_event("m1")).encode(), "PartitionKey": "p"}
    invalid = {"SequenceNumber": "102", "Data": b"garbage", "PartitionKey": "p"}
    letters = [
        bridge_letter("bridge-sms-status", valid, "SendMessageBatch failed"),
        bridge_letter("bridge-sms-status", invalid, "record is not JSON"),
    ]
    # the bridge keeps a record's bytes as {"base64": ...}
    assert letters[0].payload["Data"] == {"base64": base64.b64encode(valid["Data"]).decode()}  # type: ignore[arg-type]
    put_letters(mine, "bridge-sms-status", *letters)

    lines = replay(mine, app, "bridge-sms-status", dry_run=False)

    assert sorted(lines) == [
        f"record -> {RECORD_SMS_STATUS} (was: SendMessageBatch failed)",
        "record still invalid, kept: record is not JSON",
    ]
    assert [(t.name, t.args) for t in queues.tasks("sms-status")] == [(RECORD_SMS_STATUS, [[status_event("m1")]])]
    assert [d["reason"] for d in queues.dead_letters("bridge-sms-status")] == ["record is not JSON"]


def test_an_intake_message_is_replayed_by_what_its_queue_carries(queues) -> None:
    # Given the SQS bridge's letters: a provider event from the events queue, a demand change from
    # the demand queue (EventBridge Pipes' form), each at the place it was read
    mine = queues.settings
    event = {"MessageId": "q-1", "Body": json.dumps(status_event("m7"))}
    demand = change("INSERT", item(Demand(eventId="ev-sqs", fanId="f1", phone="+15550001111")))
    demand["dynamodb"]["ApproximateCreationDateTime"] = 1764928800
    pipes = {"MessageId": "q-2", "Body": json.dumps({**demand, "eventSource": "aws:dynamodb"})}
    put_letters(
        mine,
        "bridge-sqs",
        DeadLetter(
            reason="SendMessageBatch failed",
            payload=event,
            source="bridge-sqs",
            position={"shard": "intake-sms-events"},
        ),
        DeadLetter(
            reason="SendMessageBatch failed", payload=pipes, source="bridge-sqs", position={"shard": "intake-demand"}
        ),
    )

    lines = replay(mine, app, "bridge-sqs", dry_run=False)

    assert sorted(lines) == sorted(
        [
            f"record -> {RECORD_SMS_STATUS} (was: SendMessageBatch failed)",
            f"record -> {SHORTEN_EVENT_URL} (was: SendMessageBatch failed)",
        ]
    )
    assert [(t.name, t.args) for t in queues.tasks("sms-status")] == [(RECORD_SMS_STATUS, [[status_event("m7")]])]
    assert [(t.name, t.args) for t in queues.tasks("short-url")] == [(SHORTEN_EVENT_URL, ["ev-sqs"])]
    assert queues.dead_letters("bridge-sqs") == []


def test_an_unrecognised_dead_letter_is_kept(queues) -> None:
    mine = queues.settings
    put_letters(mine, "send", DeadLetter(reason="written by hand", payload={"what": "no task"}))

    assert replay(mine, app, "send", dry_run=False) == ["unrecognised dead letter, kept: written by hand"]
    assert [d["reason"] for d in queues.dead_letters("send")] == ["written by hand"]


def test_replay_stops_at_max_messages_and_leaves_the_rest(queues, settings) -> None:
    mine = queues.settings
    marker = f"ev{uuid.uuid4().hex[:10]}"
    put_letters(mine, "short-url", *[task_letter(SHORTEN_EVENT_URL, [f"{marker}-{i}"]) for i in range(3)])

    lines = replay(mine, app, "short-url", dry_run=False, max_messages=2)

    assert len(lines) == 2
    assert len(queues.take_tasks(session_queue(settings, "short-url"), marker)) == 2
    assert len(queues.dead_letters("short-url")) == 1


def test_a_listed_dead_letter_shows_no_phone_number_or_message_body(queues) -> None:
    settings = queues.settings
    stop = {"type": "inbound", "sender": "+14155550123", "body": "STOP", "timestamp": "t"}
    # a letter dmd wrote, and a task message the redrive policy moved (kombu's envelope)
    put_letters(settings, "sms-status", task_letter("dmd_tasks.sms_status.record_sms_status", [[stop]], queue="x"))
    task_body = base64.b64encode(json.dumps([[[stop]], {}, {}]).encode()).decode()
    envelope = {"body": task_body, "headers": {"task": "dmd_tasks.sms_status.record_sms_status"}}
    put_raw(settings, "sms-status", base64.b64encode(json.dumps(envelope).encode()).decode())

    listed = [shown(letter) for letter in receive(settings, "sms-status")]

    text = json.dumps(listed)
    assert "4155550123" not in text and "STOP" not in text
    redriven = next(entry for entry in listed if "message_id" in entry)
    assert redriven["task"] == "dmd_tasks.sms_status.record_sms_status" and "raw" not in redriven
    assert redriven["args"] == [[{**stop, "sender": "+1********23", "body": "[4 characters]"}]]
