"""Dead letters: a failed message or record, with its reason, original payload and correlation id.

Every Celery queue and every bridge has an SQS dead-letter queue (``<prefix><name>-dlq``).
SQS itself moves a message there after ``dlq_max_receive_count`` deliveries (the redrive
policy: a message that keeps killing workers); dmd writes one there, with the reason,
when a task fails for good or a bridge meets a record it cannot route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dmd_tasks import aws
from dmd_tasks.errors import TransientError
from dmd_tasks.settings import Settings

#: SQS's SendMessageBatch limit (entries per call) and message size limit (bytes).
SQS_BATCH_MAX_ENTRIES = 10
SQS_MAX_MESSAGE_BYTES = 262_144


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: Any
    correlation_id: str | None = None
    source: str | None = None

    def to_body(self) -> str:
        body = {"reason": self.reason, "payload": self.payload, "correlation_id": self.correlation_id,
                "source": self.source, "failed_at": time.time()}
        text = json.dumps(body, default=str)
        if len(text.encode()) > SQS_MAX_MESSAGE_BYTES - 1024:
            # Keep the reason and a truncated copy rather than lose the letter.
            body["payload"] = {"truncated": text[: SQS_MAX_MESSAGE_BYTES // 2]}
            body["reason"] = f"{self.reason} (payload truncated)"
            text = json.dumps(body, default=str)
        return text


class DeadLetters:
    """Writes dead letters to ``<prefix><name>-dlq``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sqs = aws.client("sqs", settings)

    def url(self, name: str) -> str:
        return self._settings.queue_url(self._settings.dlq_name(name))

    def send(self, name: str, *, reason: str, payload: Any, correlation_id: str | None = None) -> None:
        self.send_batch(name, [DeadLetter(reason, payload, correlation_id, source=name)])

    def send_batch(self, name: str, letters: Sequence[DeadLetter]) -> None:
        url = self.url(name)
        for start in range(0, len(letters), SQS_BATCH_MAX_ENTRIES):
            chunk = letters[start:start + SQS_BATCH_MAX_ENTRIES]
            entries = [{"Id": str(i), "MessageBody": letter.to_body()} for i, letter in enumerate(chunk)]
            send_batch_all(self._sqs, url, entries)


def send_batch_all(sqs: Any, url: str, entries: list[dict[str, Any]], attempts: int = 5) -> None:
    """SendMessageBatch, re-sending the entries SQS reports as failed; raise if some never go."""
    pending = entries
    delay = 0.05
    for _ in range(attempts):
        response = sqs.send_message_batch(QueueUrl=url, Entries=pending)
        failed_ids = {f["Id"] for f in response.get("Failed", [])}
        if not failed_ids:
            return
        pending = [e for e in pending if e["Id"] in failed_ids]
        time.sleep(delay)
        delay *= 2
    raise TransientError(f"SendMessageBatch: {len(pending)} entries failed after {attempts} attempts")


def receive(settings: Settings, name: str, *, max_messages: int = 10) -> list[dict[str, Any]]:
    """Read up to ``max_messages`` dead letters of ``name`` without consuming them.

    Messages are hidden while the queue is paged through (so each receive returns new
    ones), then made visible again at once.
    """
    sqs = aws.client("sqs", settings)
    url = settings.queue_url(settings.dlq_name(name))
    out: list[dict[str, Any]] = []
    handles: list[str] = []
    try:
        while len(out) < max_messages:
            response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, max_messages - len(out)),
                                           VisibilityTimeout=60, WaitTimeSeconds=0)
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                handles.append(message["ReceiptHandle"])
                try:
                    out.append(json.loads(message["Body"]))
                except ValueError:
                    out.append({"reason": "not a dmd dead letter (moved by the redrive policy)",
                                "raw": message["Body"], "message_id": message["MessageId"]})
    finally:
        for start in range(0, len(handles), SQS_BATCH_MAX_ENTRIES):
            sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(handles[start:start + SQS_BATCH_MAX_ENTRIES])])
    return out
