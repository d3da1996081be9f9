"""The SQS bridge: messages of the intake queues → Celery tasks on SQS.

Others write to the intake queues (``dmd_tasks.infra.topology.INTAKE_QUEUES``):

- ``intake-demand``: the ``demand`` table's changes as EventBridge Pipes puts them on an SQS
  target (one DynamoDB Streams record a message, as JSON): on AWS, a pipe can read the table's
  stream instead of ``bridge-demand``. Routed by the same code as ``bridge-demand``.
- ``intake-sms-events``: SMS provider events: End User Messaging SMS events (its configuration
  set's SNS event destination, a queue subscribed to the topic) and two-way SMS replies, or
  events in the HTTP provider's own form. Batched into ``record_sms_status`` as the status
  bridge does.

A body may be raw JSON or an SNS envelope. Each received batch (up to ten messages) is planned
as a page by the bridges' record handler: a message that cannot be read or routed becomes a
dead letter of ``bridge-sqs`` with the reason, and the others go on. The batch's messages are
deleted only once its tasks are published and its dead letters written; when publishing fails
nothing is deleted, SQS delivers the messages again after the queue's visibility timeout (every
task is idempotent), and the redrive policy moves a message that fails ``dlq_max_receive_count``
times to the queue's own dead-letter queue. Run several processes: SQS shares the messages.

Run:  python -m bridges.sqs
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Container, Sequence
from typing import Any

from bridges.demand import planner
from bridges.handler import Planner, RecordHandler
from dmd_tasks.celery_app import app
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.deadletters import DeadLetters
from dmd_tasks.infra.metrics import BRIDGE_LAG, BRIDGE_SHARD_EVENTS
from dmd_tasks.infra.runtime import start_process
from dmd_tasks.infra.settings import Settings, get_settings
from dmd_tasks.pipeline.records import decode_sqs_change, decode_sqs_status
from dmd_tasks.pipeline.routing import BatchPlan, plan_status_records
from dmd_tasks.services import Services

BRIDGE_NAME = "bridge-sqs"
DEMAND = "intake-demand"
SMS_EVENTS = "intake-sms-events"
#: The most messages one ReceiveMessage returns.
RECEIVE_MAX = 10

log = logging.getLogger(__name__)


def _events_plan(settings: Settings) -> Planner:
    batch_size = settings.status_batch_size

    def plan(records: Sequence[dict[str, Any]], _recent: Container[tuple[str, str]]) -> BatchPlan:
        return plan_status_records(records, batch_size, source=BRIDGE_NAME, decode=decode_sqs_status)

    return plan


def build_handler(settings: Settings, intake: str) -> RecordHandler:
    """The record handler of one intake queue."""
    publisher, letters = BatchPublisher(app, settings), DeadLetters(settings)
    if intake == DEMAND:
        plan = planner(decode_sqs_change, source=BRIDGE_NAME)
        wake = Services(settings).wake.wake
        return RecordHandler(BRIDGE_NAME, plan, publisher, letters, settings.bridge_dedupe_seconds, wake=wake)
    if intake == SMS_EVENTS:
        return RecordHandler(BRIDGE_NAME, _events_plan(settings), publisher, letters)
    raise ValueError(f"unknown intake queue {intake!r}; known: {topology.INTAKE_QUEUES}")


class IntakeReader:
    """Reads one intake queue until ``stop_event`` is set."""

    def __init__(self, settings: Settings, intake: str, stop_event: threading.Event | None = None) -> None:
        self.intake = intake
        self.url = topology.queue_url(settings, intake)
        self.stop_event = stop_event or threading.Event()
        self._settings = settings
        self._sqs = aws.client("sqs", settings)
        self._handler = build_handler(settings, intake)

    def poll_once(self, wait_seconds: int | None = None) -> int:
        """One receive, its page handled and, once handled, deleted; returns the messages received.
        Raises when the page could not be handed on (nothing deleted: SQS delivers it again)."""
        wait = self._settings.intake_wait_seconds if wait_seconds is None else wait_seconds
        response = self._sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=RECEIVE_MAX,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["SentTimestamp"],
        )
        messages = response.get("Messages") or []
        if not messages:
            return 0
        # what a dead letter keeps of a message: its id and body (not its receipt handle)
        page = [{"MessageId": m.get("MessageId"), "Body": m.get("Body")} for m in messages]
        self._handler(page, self.intake)
        self._delete(messages)
        sent = [m.get("Attributes", {}).get("SentTimestamp") for m in messages]
        oldest = min((int(s) for s in sent if isinstance(s, str) and s.isdigit()), default=None)
        if oldest is not None:
            BRIDGE_LAG.labels(BRIDGE_NAME).set(max(0.0, time.time() - oldest / 1000))
        return len(messages)

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        result = self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
        for failed in result.get("Failed") or []:
            # handled all the same: delivered again, it is published again (idempotent tasks)
            BRIDGE_SHARD_EVENTS.labels(BRIDGE_NAME, "delete-failed").inc()
            log.warning("%s: message %s not deleted: %s", self.intake, failed.get("Id"), failed.get("Code"))

    def run(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                self.poll_once()
            except Exception:  # AWS or the broker unreachable, say: the messages wait in the queue
                BRIDGE_SHARD_EVENTS.labels(BRIDGE_NAME, "read-error").inc()
                log.exception("%s: receive or publish failed; again in %.0fs", self.intake, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--intake",
        action="append",
        choices=topology.INTAKE_QUEUES,
        help="an intake queue to read (repeat; default: every one)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    start_process(settings, BRIDGE_NAME)
    stop_event = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the batch in hand", signum)
        stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    readers = [IntakeReader(settings, intake, stop_event) for intake in (args.intake or topology.INTAKE_QUEUES)]
    threads = [threading.Thread(target=r.run, name=f"intake-{r.intake}", daemon=True) for r in readers]
    for thread in threads:
        thread.start()
    log.info("reading %s", ", ".join(r.intake for r in readers))
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=1.0)


if __name__ == "__main__":
    main()
