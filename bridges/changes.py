"""Pure parts of the demand-stream bridge: parse change records, route them, plan a batch.

A change record is the DynamoDB Streams record of the ``demand`` table, either as read
from DynamoDB Streams or wrapped in a Kinesis record (the table's Kinesis streaming
destination, whose ``Data`` is the same record as JSON). Nothing here touches a network.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from dmd_tasks import tracing
from dmd_tasks.deadletter import DeadLetter
from dmd_tasks.logs import CORRELATION_HEADER
from dmd_tasks.errors import InvalidRecord
from dmd_tasks.models import ID_PATTERN, Entity, NotificationStatus, split_notification_id
from dmd_tasks.publish import TaskCall
from dmd_tasks.store import deserialize

EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})
SHORTEN_TASK = "dmd_tasks.shorten.shorten_event_url"
SEND_TASK = "dmd_tasks.send.send_notifications"
#: SQS holds a message back at most 15 minutes (DelaySeconds).
MAX_DELAY_SECONDS = 900



@dataclass(frozen=True)
class ChangeRecord:
    """One change of one item of the ``demand`` table."""

    event_id: str
    event_name: str
    sequence_number: str
    new: Mapping[str, Any] | None
    old: Mapping[str, Any] | None
    created_at: datetime | None = None

    @property
    def entity(self) -> str | None:
        image = self.new if self.new is not None else self.old
        value = image.get("entity") if image else None
        return value if isinstance(value, str) else None

    @property
    def correlation_id(self) -> str:
        """Deterministic per record, so a record read twice carries the same id."""
        return f"ddb-{self.event_id}"


@dataclass(frozen=True)
class Route:
    """A task to enqueue for a change.

    ``item`` is the task's argument, or one element of its list argument for a batched
    task (see ``BATCHED_TASKS``); ``key`` de-duplicates routes within a page.
    """

    task: str
    key: str
    item: Any
    correlation_id: str
    delay_seconds: int = 0
    traceparent: str | None = None


@dataclass
class BatchPlan:
    """What one batch of records turns into: task calls per task, and dead letters."""

    calls: dict[str, list[TaskCall]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: (task, key) of every route planned, to remember once the calls are published.
    keys: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    duplicates: int = 0

    @property
    def enqueued(self) -> int:
        return sum(len(c) for c in self.calls.values())


def _image(raw: Any, name: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRecord(f"{name} is not a DynamoDB item")
    try:
        return deserialize(raw)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidRecord(f"{name} is not valid DynamoDB JSON: {exc}") from exc


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        # DynamoDB Streams gives seconds; the Kinesis form gives milliseconds.
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    return None


def parse_change(raw: Mapping[str, Any], sequence_number: str | None = None) -> ChangeRecord:
    """Parse a DynamoDB Streams record (dict as boto3 returns it, or its JSON form)."""
    if not isinstance(raw, Mapping):
        raise InvalidRecord("record is not an object")
    event_name = raw.get("eventName")
    if event_name not in EVENT_NAMES:
        raise InvalidRecord(f"eventName {event_name!r} is not INSERT, MODIFY or REMOVE")
    ddb = raw.get("dynamodb")
    if not isinstance(ddb, Mapping):
        raise InvalidRecord("record has no 'dynamodb' object")
    new = _image(ddb.get("NewImage"), "NewImage")
    old = _image(ddb.get("OldImage"), "OldImage")
    if new is None and old is None:
        raise InvalidRecord("record carries neither NewImage nor OldImage (stream view type must be NEW_AND_OLD_IMAGES)")
    if event_name == "INSERT" and new is None:
        raise InvalidRecord("INSERT without NewImage")
    sequence = sequence_number or ddb.get("SequenceNumber")
    event_id = raw.get("eventID") or sequence
    if not event_id or not sequence:
        raise InvalidRecord("record has no eventID/SequenceNumber")
    return ChangeRecord(event_id=str(event_id), event_name=event_name, sequence_number=str(sequence), new=new,
                        old=old, created_at=_timestamp(ddb.get("ApproximateCreationDateTime")))


def decode_kinesis_change(record: Mapping[str, Any]) -> ChangeRecord:
    """Parse a Kinesis record whose ``Data`` is a DynamoDB change record as JSON."""
    data = record.get("Data")
    if isinstance(data, str):  # a Lambda-style event carries base64 text
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRecord("Kinesis Data is not base64") from exc
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidRecord("Kinesis record has no Data")
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord("Kinesis Data is not JSON") from exc
    if not isinstance(payload, Mapping):
        raise InvalidRecord("Kinesis Data is not a JSON object")
    sequence = record.get("SequenceNumber")
    return parse_change(payload, sequence_number=str(sequence) if sequence else None)


def route(change: ChangeRecord, now: float | None = None) -> Route | None:
    """The task a change leads to, or None when the change needs nothing.

    - a new DEMAND row → ``shorten_event_url(eventId)``
    - a NOTIFICATION entering ``scheduled`` → ``send_notifications([id, ...])``, held back
      by SQS until its ``notBefore`` (a retry's backoff)

    Raises InvalidRecord for an entity type the pipeline does not know.
    """
    entity = change.entity
    if entity is None:
        raise InvalidRecord("item has no 'entity' attribute")
    try:
        kind = Entity(entity)
    except ValueError:
        raise InvalidRecord(f"unknown entity type {entity!r}") from None
    if kind is Entity.DEMAND and change.event_name == "INSERT":
        event_id = (change.new or {}).get("eventId")
        if not isinstance(event_id, str) or not ID_PATTERN.match(event_id):
            raise InvalidRecord("demand item has no valid 'eventId'")
        return Route(task=SHORTEN_TASK, key=event_id, item=event_id, correlation_id=change.correlation_id)
    if kind is Entity.NOTIFICATION and change.new is not None:
        new_status = change.new.get("status")
        old_status = (change.old or {}).get("status")
        if new_status != NotificationStatus.SCHEDULED or old_status == NotificationStatus.SCHEDULED:
            return None
        nid = change.new.get("id")
        try:
            split_notification_id(nid)  # type: ignore[arg-type]
        except (ValueError, AttributeError):
            raise InvalidRecord("notification item has no valid 'id'") from None
        not_before = change.new.get("notBefore")
        delay = 0
        if isinstance(not_before, (int, float, Decimal)):
            # rounded up: a retry must never come back before the time it was given (e.g. Retry-After)
            wait = float(not_before) - (time.time() if now is None else now)
            delay = min(MAX_DELAY_SECONDS, max(0, math.ceil(wait)))
        return Route(task=SEND_TASK, key=f"{nid}#{change.new.get('attempts', 0)}", item=nid,
                     correlation_id=change.correlation_id, delay_seconds=delay)
    return None


def plan_batch(raws: Iterable[Any], decode: Callable[[Any], ChangeRecord],
               routes: Callable[[ChangeRecord], Route | None] = route,
               batch_sizes: Mapping[str, int] | None = None, source: str = "bridge-demand",
               recently_published: Container[tuple[str, str]] = ()) -> BatchPlan:
    """Turn a page of raw records into de-duplicated task calls and dead letters.

    One bad record becomes a dead letter with its reason; the rest of the page proceeds.
    Routes already in ``recently_published`` (earlier pages) count as duplicates.
    Routes to a task in ``batch_sizes`` are packed into messages of that many items
    (one message per distinct delay).
    """
    plan = BatchPlan()
    seen: set[tuple[str, str]] = set()
    batched: dict[tuple[str, int], list[Route]] = {}
    sizes = batch_sizes or {}
    for raw in raws:
        try:
            change = decode(raw)
            target = routes(change)
        except InvalidRecord as exc:
            plan.dead_letters.append(DeadLetter(reason=str(exc), payload=jsonable(raw), source=source,
                                                correlation_id=record_correlation_id(raw)))
            continue
        if target is None:
            plan.ignored += 1
            continue
        target = _traced(target, change, source)
        if (target.task, target.key) in seen or (target.task, target.key) in recently_published:
            plan.duplicates += 1
            continue
        seen.add((target.task, target.key))
        plan.keys.append((target.task, target.key))
        if target.task in sizes:
            batched.setdefault((target.task, target.delay_seconds), []).append(target)
        else:
            plan.calls.setdefault(target.task, []).append(TaskCall(
                args=(target.item,), headers={CORRELATION_HEADER: target.correlation_id},
                delay_seconds=target.delay_seconds, traceparent=target.traceparent))
    for (task_name, delay), group in batched.items():
        size = sizes[task_name]
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            # each item keeps its own trace: the task continues it per item (span per notification)
            traces = {r.item: r.traceparent for r in chunk if r.traceparent}
            plan.calls.setdefault(task_name, []).append(TaskCall(
                args=([r.item for r in chunk],), kwargs={"trace_context": traces} if traces else {},
                headers={CORRELATION_HEADER: chunk[0].correlation_id}, delay_seconds=delay,
                traceparent=chunk[0].traceparent))
    return plan


def _traced(target: Route, change: ChangeRecord, source: str) -> Route:
    """A span for the routed record (continuing the trace stored on its item, if any)."""
    if not tracing.enabled():  # the bridge's hot path: no span work when nothing exports
        return target
    stored = (change.new or {}).get("traceparent")
    with tracing.continued(f"{source} route {target.task.rsplit('.', 1)[-1]}",
                           stored if isinstance(stored, str) else None,
                           **{"dmd.correlation_id": change.correlation_id, "dmd.item": str(target.item)}):
        return replace(target, traceparent=tracing.current_traceparent())


def record_correlation_id(raw: Any) -> str | None:
    """The correlation id a record would have had, from whatever identifies it."""
    if isinstance(raw, Mapping):
        if raw.get("eventID"):
            return f"ddb-{raw['eventID']}"
        if raw.get("SequenceNumber"):
            return f"kin-{raw['SequenceNumber']}"
    return None


def jsonable(raw: Any) -> Any:
    """A copy of a raw record that survives json.dumps (bytes as base64, datetimes as ISO)."""
    if isinstance(raw, Mapping):
        return {str(k): jsonable(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [jsonable(v) for v in raw]
    if isinstance(raw, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(raw)).decode()}
    if isinstance(raw, datetime):
        return raw.isoformat()
    if raw is None or isinstance(raw, (str, int, float, bool)):
        return raw
    return str(raw)
