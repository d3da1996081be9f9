"""``dmd dlq list|replay``: read dead letters, and re-drive them.

- a task's dead letter (reason + task + args) is published again to its task;
- a bridge's dead letter (a raw record) goes through the same decoding and routing as the
  bridge (``dmd_tasks.pipeline``): routed records are enqueued, a record that is still
  invalid stays, with why;
- a message the redrive policy moved (a raw Celery message) goes back to its queue.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery

from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.logs import CORRELATION_HEADER, masked
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.sqs import make_visible
from dmd_tasks.pipeline.records import (
    decode_kinesis_change,
    decode_sqs_change,
    decode_sqs_status,
    parse_change,
    restore,
)
from dmd_tasks.pipeline.routing import BatchPlan, plan_changes, plan_status_records

#: What re-driving one letter does; None keeps the letter where it is.
Action = Callable[[], object] | None


def _hidden_messages(sqs: Any, url: str, max_messages: int) -> Iterator[dict[str, Any]]:
    """Up to ``max_messages`` messages of the queue, each hidden for a minute once received (so
    each receive returns new ones); the caller gives back or deletes them."""
    received = 0
    while received < max_messages:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=min(10, max_messages - received), VisibilityTimeout=60, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return
        received += len(messages)
        yield from messages


def receive(settings: Settings, name: str, *, max_messages: int = 10) -> list[dict[str, Any]]:
    """Read up to ``max_messages`` dead letters of ``name`` without consuming them (each is made
    visible again at once)."""
    sqs = aws.client("sqs", settings)
    url = topology.dlq_url(settings, name)
    out: list[dict[str, Any]] = []
    handles: list[str] = []
    try:
        for message in _hidden_messages(sqs, url, max_messages):
            handles.append(message["ReceiptHandle"])
            try:
                out.append(json.loads(message["Body"]))
            except ValueError:
                out.append(
                    {
                        "reason": "not a dmd dead letter (moved by the redrive policy)",
                        "raw": message["Body"],
                        "message_id": message["MessageId"],
                        **_task_of(message["Body"]),
                    }
                )
    finally:
        make_visible(sqs, url, handles)
    return out


def _task_of(body: str) -> dict[str, Any]:
    """The task a message moved by the redrive policy carries (Celery's envelope, as kombu's SQS
    transport writes it: base64 JSON with a base64 body), or nothing when it is not one."""
    try:
        envelope = json.loads(base64.b64decode(body, validate=True))
        task = envelope["headers"]["task"]
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    except (ValueError, TypeError, KeyError, binascii.Error):
        return {}
    return {"task": task, "args": args, "kwargs": kwargs}


def shown(letter: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as ``dmd dlq list`` prints it: phone numbers and message bodies masked, and
    the raw copy of a redriven task left out (its arguments are shown decoded, masked)."""
    return masked({k: v for k, v in letter.items() if not (k == "raw" and "task" in letter)})


def replay(settings: Settings, app: Celery, name: str, *, dry_run: bool, max_messages: int = 100) -> list[str]:
    """Re-drive up to ``max_messages`` dead letters of ``name``; returns one line per letter.

    A replayed letter is deleted from the dead-letter queue only after it was re-sent.
    With ``dry_run`` nothing is sent or deleted.
    """
    sqs = aws.client("sqs", settings)
    url = topology.dlq_url(settings, name)
    publisher = BatchPublisher(app, settings)
    lines: list[str] = []
    keep: list[str] = []
    try:
        for message in _hidden_messages(sqs, url, max_messages):
            what, action = plan_replay(settings, name, message["Body"], app, publisher)
            if action is None or dry_run:
                keep.append(message["ReceiptHandle"])
                lines.append(f"{'would ' if dry_run and action else ''}{what}")
                continue
            action()
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            lines.append(what)
    finally:
        make_visible(sqs, url, keep)
    return lines


def plan_replay(settings: Settings, name: str, body: str, app: Celery, publisher: BatchPublisher) -> tuple[str, Action]:
    """(what will happen, a function doing it) for one dead letter; the function is None to keep it."""
    try:
        letter = json.loads(body)
    except ValueError:
        letter = None
    if not isinstance(letter, dict) or "reason" not in letter:
        sqs = aws.client("sqs", settings)
        source = topology.queue_url(settings, name)
        return f"redriven message -> back to queue {name}", lambda: sqs.send_message(QueueUrl=source, MessageBody=body)
    payload = letter.get("payload")
    if isinstance(payload, dict) and "task" in payload:
        task, args, kwargs = payload["task"], payload.get("args") or [], payload.get("kwargs") or {}
        correlation = letter.get("correlation_id")
        headers = {CORRELATION_HEADER: correlation} if correlation else {}
        return (
            f"{task}{tuple(masked(args))!r} -> re-published (was: {letter['reason']})",
            lambda: app.send_task(task, args=args, kwargs=kwargs, headers=headers),
        )
    if name in topology.BRIDGE_NAMES:
        plan = _plan_bridge_record(settings, name, restore(payload), letter.get("position"))
        if plan.dead_letters:
            return f"record still invalid, kept: {plan.dead_letters[0].reason}", None
        if not plan.calls:
            return "record needs no task, deleted", lambda: None
        return (
            f"record -> {', '.join(plan.calls)} (was: {letter['reason']})",
            lambda: [publisher.publish(task, calls) for task, calls in plan.calls.items()],
        )
    return f"unrecognised dead letter, kept: {letter.get('reason')}", None


def _plan_bridge_record(settings: Settings, name: str, record: Any, position: Any = None) -> BatchPlan:
    """What the bridge ``name`` would make of ``record`` now (``position``: where it was read)."""
    if name == "bridge-sms-status":
        return plan_status_records([record], settings.status_batch_size)
    if name == "bridge-sqs":  # an intake queue's message: its queue says what it carries
        intake = position.get("shard") if isinstance(position, dict) else None
        if intake == "intake-sms-events":
            return plan_status_records([record], settings.status_batch_size, source=name, decode=decode_sqs_status)
        return plan_changes([record], decode_sqs_change, source=name)
    decode = decode_kinesis_change if isinstance(record, dict) and "Data" in record else parse_change
    return plan_changes([record], decode, source=name)
