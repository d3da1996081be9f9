"""Batched publishing of Celery tasks to SQS: ten task messages per SendMessageBatch call.

Celery publishes one message per ``apply_async`` (one SendMessage each). A bridge turns
up to 1,000 stream records at a time into tasks, so it builds the same Celery protocol-2
messages that ``apply_async`` would (same headers, same signals, so correlation ids and
tracing context are stamped as usual) and sends them in batches of ten.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, signals
from kombu import serialization
from kombu.asynchronous.aws.sqs.message import AsyncMessage
from kombu.exceptions import EncodeError
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract

from dmd_tasks.celery_app.monitoring import task_sent_batch
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.sqs import SQS_BATCH_MAX_ENTRIES, SQS_MAX_MESSAGE_BYTES, send_batch_all
from dmd_tasks.infra.topology import TaskCall, queue_of


class BatchPublisher:
    """Enqueues many calls of one task with SendMessageBatch."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._sqs = aws.client("sqs", settings)
        # The task modules are registered in this process too: Celery's OpenTelemetry
        # instrumentation ends a publish span only for a task it finds by name; for an unknown
        # one it leaves the span open and its context attached, one more per message published.
        app.loader.import_default_modules()

    def publish(
        self,
        task_name: str,
        calls: Iterable[TaskCall],
        queue: str | None = None,
        on_refused: Callable[[TaskCall, str], None] | None = None,
    ) -> int:
        """Enqueue every call on the task's queue (``queue`` for a task outside the routing table);
        returns how many were sent. Raises TransientError if SQS refuses some.

        A call that cannot become a message SQS takes (it cannot be encoded, or it is larger than
        256 KiB) goes to ``on_refused`` with the reason, and the rest are sent; without
        ``on_refused`` it raises ValueError."""
        queue = queue or queue_of(task_name)
        url = topology.queue_url(self._settings, queue)
        with task_sent_batch(self._app):  # one task-sent message per batch, not one per task
            return self._publish(task_name, queue, url, calls, on_refused)

    def _publish(
        self,
        task_name: str,
        queue: str,
        url: str,
        calls: Iterable[TaskCall],
        on_refused: Callable[[TaskCall, str], None] | None,
    ) -> int:
        """SendMessageBatch calls of at most ten messages and at most 256 KiB in all (SQS limits the
        whole request as well as each message)."""
        entries: list[dict[str, Any]] = []
        size = 0
        sent = 0
        for call in calls:
            try:
                body = self._encode(task_name, queue, call)
            except (EncodeError, RecursionError, TypeError, ValueError) as exc:
                reason = f"the {task_name} message cannot be encoded: {type(exc).__name__}: {exc}"
                if on_refused is None:
                    raise ValueError(reason) from exc
                on_refused(call, reason)
                continue
            length = len(body.encode())
            if length > SQS_MAX_MESSAGE_BYTES:
                reason = f"the {task_name} message would be {length} bytes; SQS takes {SQS_MAX_MESSAGE_BYTES}"
                if on_refused is None:
                    raise ValueError(reason)
                on_refused(call, reason)
                continue
            if entries and size + length > SQS_MAX_MESSAGE_BYTES:
                send_batch_all(self._sqs, url, entries)
                sent += len(entries)
                entries, size = [], 0
            entry: dict[str, Any] = {"Id": str(len(entries)), "MessageBody": body}
            if call.delay_seconds > 0:
                entry["DelaySeconds"] = min(int(call.delay_seconds), 900)
            entries.append(entry)
            size += length
            if len(entries) == SQS_BATCH_MAX_ENTRIES:
                send_batch_all(self._sqs, url, entries)
                sent += len(entries)
                entries, size = [], 0
        if entries:
            send_batch_all(self._sqs, url, entries)
            sent += len(entries)
        return sent

    def _encode(self, task_name: str, queue: str, call: TaskCall) -> str:
        if call.traceparent is None:
            return self._encode_message(task_name, queue, call)
        # the publish span (tracing's before_task_publish hook) becomes a child of the record's span
        token = otel_context.attach(extract({"traceparent": call.traceparent}))
        try:
            return self._encode_message(task_name, queue, call)
        finally:
            otel_context.detach(token)

    def _encode_message(self, task_name: str, queue: str, call: TaskCall) -> str:
        task_id = str(uuid.uuid4())
        message = self._app.amqp.create_task_message(
            task_id,
            task_name,
            call.args,
            call.kwargs,
            argsrepr=None,
            kwargsrepr=None,
            # None: the task's own setting decides (task_ignore_result). Celery's default here is
            # False, which made every bridge-published task store its result in Redis, so a Redis
            # stall held each finished task in the result backend until its time limit.
            ignore_result=None,
        )
        headers = {**message.headers, **call.headers}
        properties = dict(message.properties)
        signals.before_task_publish.send(
            sender=task_name,
            body=message.body,
            exchange=queue,
            routing_key=queue,
            declare=[],
            headers=headers,
            properties=properties,
            retry_policy=None,
        )
        content_type, content_encoding, dumped = serialization.dumps(message.body, serializer="json")
        body: bytes = dumped.encode(content_encoding) if isinstance(dumped, str) else dumped
        # The same envelope kombu's virtual channel builds in basic_publish (body base64, SQS-encoded).
        envelope = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": {
                **properties,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
                "delivery_info": {"exchange": queue, "routing_key": queue},
            },
        }
        encoded = AsyncMessage().encode(json.dumps(envelope))
        signals.after_task_publish.send(
            sender=task_name,
            body=message.body,
            exchange=queue,
            routing_key=queue,
            headers=headers,
            properties=properties,
        )
        return encoded
