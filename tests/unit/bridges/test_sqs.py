"""The SQS bridge on moto: intake queues of the test's own, read by ``IntakeReader.poll_once``.

Messages are what the AWS services put on those queues: a DynamoDB Streams record as EventBridge
Pipes sends it to an SQS target, an End User Messaging SMS event in an SNS envelope (a queue
subscribed to the configuration set's topic without raw delivery), a two-way SMS reply.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridges.sqs import BRIDGE_NAME, DEMAND, SMS_EVENTS, IntakeReader
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.domain.entities import Demand
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import RECORD_SMS_STATUS, SHORTEN_EVENT_URL
from dmd_tasks.ops.provision import ensure_intake_queues
from dmd_tasks.store.items import item
from tests.helpers import pipes_change


@pytest.fixture()
def intake(queues) -> Iterator[Any]:
    created = ensure_intake_queues(queues.settings)
    yield queues
    sqs = aws.client("sqs", queues.settings)
    for entry in created.values():
        for url in entry.values():
            sqs.delete_queue(QueueUrl=url)


def pipes_record(event_id: str, fan_id: str) -> dict[str, Any]:
    return pipes_change(item(Demand(eventId=event_id, fanId=fan_id, phone="+15550001111")))


def sns_envelope(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:dmd-sms-events",
        "Message": json.dumps(message),
        "Timestamp": "2026-12-05T10:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }


def eum_event(message_id: str, kind: str = "TEXT_DELIVERED", notification: str = "sale1:fan1") -> dict[str, Any]:
    return {
        "eventType": kind,
        "eventVersion": "1.0",
        "eventTimestamp": 1764928800000,
        "isFinal": True,
        "originationPhoneNumber": "+12065550152",
        "destinationPhoneNumber": "+14255550156",
        "messageId": message_id,
        "messageType": "TRANSACTIONAL",
        "messageStatus": "DELIVERED",
        "context": {"notificationId": notification},
        "totalMessageParts": 1,
    }


def put(settings: Any, intake: str, *bodies: Any) -> None:
    sqs = aws.client("sqs", settings)
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body)
        sqs.send_message(QueueUrl=topology.queue_url(settings, intake), MessageBody=text)


def left_on(settings: Any, intake: str) -> int:
    attributes = aws.client("sqs", settings).get_queue_attributes(
        QueueUrl=topology.queue_url(settings, intake),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_demand_changes_from_pipes_are_routed_like_the_streams_and_a_bad_one_is_dead_lettered(intake) -> None:
    settings = intake.settings
    first, second = pipes_record("ev1", "fan1"), pipes_record("ev2", "fan1")
    put(settings, DEMAND, first, "not json at all", second)

    handled = IntakeReader(settings, DEMAND).poll_once(wait_seconds=1)

    assert handled == 3
    shorten = intake.tasks("short-url")
    assert sorted(t.args[0] for t in shorten) == ["ev1", "ev2"]
    assert {t.name for t in shorten} == {SHORTEN_EVENT_URL}
    # the same correlation id as the same change read from the stream (ddb-<eventID>)
    assert {t.headers[CORRELATION_HEADER] for t in shorten} == {f"ddb-{first['eventID']}", f"ddb-{second['eventID']}"}
    letters = intake.dead_letters(BRIDGE_NAME)
    assert [d["reason"] for d in letters] == ["message body is not JSON"]
    assert letters[0]["payload"]["Body"] == "not json at all" and letters[0]["correlation_id"].startswith("sqs-")
    assert left_on(settings, DEMAND) == 0  # every message deleted: published or dead-lettered


def test_a_record_of_another_source_is_refused_with_the_reason(intake) -> None:
    other = {**pipes_record("ev1", "fan1"), "eventSource": "aws:kinesis"}
    put(intake.settings, DEMAND, other)
    IntakeReader(intake.settings, DEMAND).poll_once(wait_seconds=1)
    assert [d["reason"] for d in intake.dead_letters(BRIDGE_NAME)] == ["eventSource 'aws:kinesis' is not aws:dynamodb"]
    assert intake.tasks("short-url") == []


def test_provider_events_through_sns_and_raw_become_status_tasks(intake) -> None:
    settings = intake.settings.model_copy(update={"status_batch_size": 10})
    reply = {"originationNumber": "+14255550182", "destinationNumber": "+12125550101", "messageBody": "STOP"}
    own = {"type": "status", "message_id": "SM1", "status": "undelivered", "timestamp": "2026-12-05T10:00:00Z"}
    put(
        settings,
        SMS_EVENTS,
        sns_envelope(eum_event("m-1")),
        sns_envelope(reply),
        own,
        sns_envelope({"eventType": "TEXT_SOMETHING_NEW", "messageId": "m-2", "eventTimestamp": 1}),
        sns_envelope({**eum_event("m-3"), "messageBody": "x" * 20_000}),
    )

    assert IntakeReader(settings, SMS_EVENTS).poll_once(wait_seconds=1) == 5

    tasks = intake.tasks("sms-status")
    assert [t.name for t in tasks] == [RECORD_SMS_STATUS]
    events = tasks[0].args[0]
    assert {"type": "status", "message_id": "m-1", "status": "delivered", "reference": "sale1:fan1"}.items() <= events[
        0
    ].items()
    assert events[1] == {
        "type": "inbound",
        "sender": "+14255550182",
        "body": "STOP",
        "timestamp": "2026-12-05T10:00:00.000Z",
    }
    assert events[2] == own
    reasons = sorted(d["reason"] for d in intake.dead_letters(BRIDGE_NAME))
    assert len(reasons) == 2
    assert re.fullmatch(r"event is 2\d{4} bytes as JSON; provider events are at most 16384", reasons[0])
    assert reasons[1] == "unknown End User Messaging event type 'TEXT_SOMETHING_NEW'"
    assert left_on(settings, SMS_EVENTS) == 0


def test_when_publishing_fails_nothing_is_deleted_and_sqs_delivers_the_batch_again(
    intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = intake.settings.model_copy(update={"intake_visibility_timeout_seconds": 5})
    ensure_intake_queues(settings)  # the shorter visibility timeout
    put(settings, DEMAND, pipes_record("ev9", "fan1"))
    reader = IntakeReader(settings, DEMAND)

    def broker_down(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("broker unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(BatchPublisher, "publish", broker_down)
        with pytest.raises(ConnectionError):
            reader.poll_once(wait_seconds=1)
    assert intake.tasks("short-url") == []
    assert left_on(settings, DEMAND) == 1  # still there, invisible for now

    # once visible again, the next receive hands it on
    deadline = time.monotonic() + 30
    handled = 0
    while not handled and time.monotonic() < deadline:
        handled = reader.poll_once(wait_seconds=1)
    assert handled == 1
    assert [t.args[0] for t in intake.tasks("short-url")] == ["ev9"]
    assert left_on(settings, DEMAND) == 0


def test_intake_queues_have_a_redrive_policy_to_their_own_dead_letter_queue(intake) -> None:
    settings = intake.settings
    sqs = aws.client("sqs", settings)
    for name in topology.INTAKE_QUEUES:
        attributes = sqs.get_queue_attributes(QueueUrl=topology.queue_url(settings, name), AttributeNames=["All"])
        policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
        assert policy["deadLetterTargetArn"].endswith(f":{topology.dlq_name(settings, name)}")
        assert int(policy["maxReceiveCount"]) == settings.dlq_max_receive_count
