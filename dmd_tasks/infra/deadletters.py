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

#: The largest letter written: SQS's message limit less room for the request around it.
MAX_LETTER_BYTES = SQS_MAX_MESSAGE_BYTES - 1024
#: The fields that identify a stream record, kept when its copy is too large for a letter.
KEY_FIELDS = ("eventID", "eventName", "eventSource", "SequenceNumber", "PartitionKey", "ApproximateArrivalTimestamp")
#: The same inside a DynamoDB change record's ``dynamodb`` object.
DYNAMODB_KEY_FIELDS = ("Keys", "SequenceNumber", "ApproximateCreationDateTime")


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: Any
    correlation_id: str | None = None
    source: str | None = None
    #: where a stream record was read: {"shard": ..., "sequence": ...}
    position: dict[str, Any] | None = None

    def to_body(self) -> str:
        """The letter as SQS message text, at most ``MAX_LETTER_BYTES`` encoded: an oversize payload
        is replaced by its key fields (``KEY_FIELDS``) and the longest prefix of its JSON that still
        fits, escaping included."""
        body: dict[str, Any] = {
            "reason": _clip(self.reason, MAX_REASON_CHARS),
            "payload": self.payload,
            "correlation_id": _clip(self.correlation_id, MAX_FIELD_CHARS),
            "source": _clip(self.source, MAX_FIELD_CHARS),
            "failed_at": time.time(),
        }
        if self.position is not None:
            body["position"] = {str(k)[:64]: _clip(v, MAX_FIELD_CHARS) for k, v in list(self.position.items())[:8]}
        text = _dumps(body)
        if text is not None and len(text.encode()) <= MAX_LETTER_BYTES:
            return text
        # Keep the reason, the record's key fields and a truncated copy rather than lose the letter.
        original = _dumps(self.payload) or repr(self.payload)[:MAX_LETTER_BYTES]
        body["reason"] = f"{body['reason']} (payload truncated)"
        keys = _key_fields(self.payload)
        keep = MAX_LETTER_BYTES // 2
        while True:
            body["payload"] = {**keys, "truncated": original[:keep]}
            text = _dumps(body)
            if text is not None and len(text.encode()) <= MAX_LETTER_BYTES:
                return text
            if keep == 0:
                if not keys:  # the fields are clipped, so this fits: the loop always ends
                    body["payload"] = {"truncated": ""}
                    return json.dumps(body, default=str)
                keys = {}  # even the key fields do not fit: the reason and position must
            keep //= 2  # escaping (quotes, backslashes, non-ASCII) made it longer than it looked


#: A letter's own fields are clipped (a hostile record's id or message must not crowd out the rest).
MAX_REASON_CHARS = 2000
MAX_FIELD_CHARS = 256


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return _clip(str(value), limit)


def _dumps(value: Any) -> str | None:
    try:
        return json.dumps(value, default=str)
    except (RecursionError, ValueError):
        return None


def _key_fields(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        return {}
    keys = {k: payload[k] for k in KEY_FIELDS if k in payload}
    change = payload.get("dynamodb")
    if isinstance(change, dict):
        keys["dynamodb"] = {k: change[k] for k in DYNAMODB_KEY_FIELDS if k in change}
    return keys


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
        """Write every letter: SendMessageBatch calls of at most ten entries and at most
        ``SQS_MAX_MESSAGE_BYTES`` in all (SQS limits the whole request too)."""
        url = self.url(name)
        entries: list[dict[str, Any]] = []
        size = 0
        for letter in letters:
            body = letter.to_body()
            length = len(body.encode())
            if entries and (len(entries) == SQS_BATCH_MAX_ENTRIES or size + length > SQS_MAX_MESSAGE_BYTES):
                send_batch_all(self._sqs, url, entries)
                entries, size = [], 0
            entries.append({"Id": str(len(entries)), "MessageBody": body})
            size += length
        if entries:
            send_batch_all(self._sqs, url, entries)
