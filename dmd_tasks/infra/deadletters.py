"""Dead letters: a failed message or record, with its reason, original payload and correlation id.

Every Celery queue and every bridge has an SQS dead-letter queue (``<prefix><name>-dlq``).
SQS itself moves a message there after ``dlq_max_receive_count`` deliveries (the redrive
policy: a message that keeps killing workers); dmd writes one there, with the reason,
when a task fails for good or a bridge meets a record it cannot route. Reading and
replaying them is the operator's: ``dmd_tasks.ops.dlq``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.sqs import SQS_BATCH_MAX_ENTRIES, SQS_MAX_MESSAGE_BYTES, send_batch_all


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: Any
    correlation_id: str | None = None
    source: str | None = None

    def to_body(self) -> str:
        body = {
            "reason": self.reason,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "source": self.source,
            "failed_at": time.time(),
        }
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
        return topology.dlq_url(self._settings, name)

    def send(self, name: str, *, reason: str, payload: Any, correlation_id: str | None = None) -> None:
        self.send_batch(name, [DeadLetter(reason, payload, correlation_id, source=name)])

    def send_batch(self, name: str, letters: Sequence[DeadLetter]) -> None:
        url = self.url(name)
        for start in range(0, len(letters), SQS_BATCH_MAX_ENTRIES):
            chunk = letters[start : start + SQS_BATCH_MAX_ENTRIES]
            entries = [{"Id": str(i), "MessageBody": letter.to_body()} for i, letter in enumerate(chunk)]
            send_batch_all(self._sqs, url, entries)
