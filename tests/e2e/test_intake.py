"""Intake queue → tasks, end to end: the Procfile's own ``bridge-sqs`` and ``worker-short-url``
processes, moto's SQS and DynamoDB, the Bitly simulator.

A demand row's change arrives as EventBridge Pipes puts it on an SQS target; the event it asks
for is shortened once, however often the change arrives; an unreadable message is dead-lettered
with its reason and deleted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from dmd_tasks.domain.entities import Demand, Event
from dmd_tasks.infra import aws, topology
from dmd_tasks.ops import dlq as deadletter
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.items import item
from dmd_tasks.store.table import DemandTable
from tests.helpers import pipes_change, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline(settings, stack, sim) -> Iterator[ProcessGroup]:
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "e2e-intake")
    group.start(["bridge-sqs", "worker-short-url"])
    try:
        yield group
    finally:
        group.stop()


def test_demand_from_pipes_is_shortened_once_and_an_unreadable_message_is_dead_lettered(
    pipeline, settings, sim
) -> None:
    run = uuid.uuid4().hex[:8]
    event = Event(id=f"pipes-{run}", name="Pipes", url=f"https://www.ticketmaster.com/e/{run}")
    table = DemandTable(settings)
    table.put_items([item(event)])
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, "intake-demand")
    rows = [item(Demand(eventId=event.id, fanId=f"fan{n}", phone=f"+1555{n:07d}")) for n in range(5)]

    # When five fans' demand arrives through the intake queue, one change twice, and a message
    # that is not a record
    for row in rows:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(pipes_change(row)))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(pipes_change(rows[0])))
    sqs.send_message(QueueUrl=url, MessageBody=f"garbage {run}")

    # Then the event is shortened, with one call to Bitly
    short = wait_until(lambda: (EventRecords(table).get(event.id) or event).short_url, what="the event shortened")
    assert short
    assert sim.bitly_calls(event.url) == 1
    # And the unreadable message is a dead letter of bridge-sqs, with its reason
    letters = wait_until(
        lambda: [d for d in deadletter.receive(settings, "bridge-sqs", max_messages=100) if run in json.dumps(d)],
        what="the dead letter",
    )
    assert [d["reason"] for d in letters] == ["message body is not JSON"]
    # And nothing is left on the intake queue: every message was handled and deleted
    wait_until(
        lambda: all(
            v == "0"
            for v in sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"].values()
        ),
        what="the intake queue empty",
    )
    assert not pipeline.dead()
