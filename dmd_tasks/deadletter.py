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
        _make_visible(sqs, url, handles)
    return out


def _make_visible(sqs: Any, url: str, receipt_handles: Sequence[str]) -> None:
    """Give received messages back to the queue at once (ChangeMessageVisibilityBatch, 10 a call)."""
    for start in range(0, len(receipt_handles), SQS_BATCH_MAX_ENTRIES):
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(receipt_handles[start:start + SQS_BATCH_MAX_ENTRIES])])


def _restore(value: Any) -> Any:
    """Undo ``bridges.changes.jsonable`` (bytes were kept as {"base64": ...})."""
    if isinstance(value, dict):
        if set(value) == {"base64"} and isinstance(value["base64"], str):
            import base64

            return base64.b64decode(value["base64"])
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def replay(settings: Settings, name: str, *, dry_run: bool, max_messages: int = 100) -> list[str]:
    """Re-drive up to ``max_messages`` dead letters of ``name``; returns one line per letter.

    - a task's dead letter (reason + task + args) is published again to its task;
    - a bridge's dead letter (a raw record) goes through the bridge's parsing and routing
      again: routed records are enqueued, a record that is still invalid stays, with why;
    - a message the redrive policy moved (a raw Celery message) goes back to its queue.

    A replayed letter is deleted from the dead-letter queue only after it was re-sent.
    With ``dry_run`` nothing is sent or deleted.
    """
    from dmd_tasks.celery_app import app
    from dmd_tasks.logs import CORRELATION_HEADER
    from dmd_tasks.publish import BatchPublisher

    sqs = aws.client("sqs", settings)
    url = settings.queue_url(settings.dlq_name(name))
    lines: list[str] = []
    keep: list[str] = []
    app.loader.import_default_modules()
    try:
        while len(lines) < max_messages:
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, max_messages - len(lines)),
                                           VisibilityTimeout=60, WaitTimeSeconds=0).get("Messages", [])
            if not messages:
                break
            for message in messages:
                action, send = _plan_replay(settings, name, message["Body"], app, BatchPublisher(app, settings),
                                            CORRELATION_HEADER)
                if send is None or dry_run:
                    keep.append(message["ReceiptHandle"])
                    lines.append(f"{'would ' if dry_run and send else ''}{action}")
                    continue
                send()
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                lines.append(action)
    finally:
        _make_visible(sqs, url, keep)
    return lines


def _plan_replay(settings: Settings, name: str, body: str, app: Any, publisher: Any, header: str
                 ) -> tuple[str, Any]:
    """(what will happen, a function doing it) for one dead letter; the function is None to keep it."""
    try:
        letter = json.loads(body)
    except ValueError:
        letter = None
    if not isinstance(letter, dict) or "reason" not in letter:
        source = settings.queue_url(settings.queue_name(name))
        sqs = aws.client("sqs", settings)
        return f"redriven message -> back to queue {name}", lambda: sqs.send_message(QueueUrl=source, MessageBody=body)
    payload = letter.get("payload")
    correlation = letter.get("correlation_id")
    if isinstance(payload, dict) and "task" in payload:
        task, args, kwargs = payload["task"], payload.get("args") or [], payload.get("kwargs") or {}
        headers = {header: correlation} if correlation else {}
        return (f"{task}{tuple(args)!r} -> re-published (was: {letter['reason']})",
                lambda: app.send_task(task, args=args, kwargs=kwargs, headers=headers))
    if name in ("bridge-demand", "bridge-sms-status"):
        from bridges.changes import decode_kinesis_change, parse_change, plan_batch
        from bridges.kinesis_sms_status import STATUS_TASK, plan_status_page

        record = _restore(payload)
        if name == "bridge-sms-status":
            calls, letters = plan_status_page([record], settings.status_batch_size)
            routed = {STATUS_TASK: calls}
        else:
            decode = decode_kinesis_change if isinstance(record, dict) and "Data" in record else parse_change
            plan = plan_batch([record], decode)
            routed, letters = plan.calls, plan.dead_letters
        if letters:
            return f"record still invalid, kept: {letters[0].reason}", None
        if not routed:
            return "record needs no task, deleted", lambda: None
        return (f"record -> {', '.join(routed)} (was: {letter['reason']})",
                lambda: [publisher.publish(task, calls) for task, calls in routed.items()])
    return f"unrecognised dead letter, kept: {letter.get('reason')}", None
