"""The routing table: which record or status change wakes which task, on which queue.

What comes from outside reaches the pipeline through a stream and a bridge, by the rules here:

- a new DEMAND row → ``shorten_event_url(eventId)`` (stage 1)
- a provider event on the status stream → ``record_sms_status([event, ...])`` (stage 5)

A notification's own transitions do not echo through the stream: the stage that moves
notifications into ``scheduled`` publishes their ``send_notifications([id, ...])`` itself (stage 4,
held back by SQS until a retry's ``notBefore``; ``chain.py``). The demand bridge ignores them.

Beat starts stages 2 and 3 (``claim_due_sales``, ``schedule_notifications``) and the
reconciler (``reconcile_sales``, stage 6), which owns every notification still in flight. The
task names and their queues are in ``dmd_tasks.infra.topology`` (the Celery app, a layer below,
routes by them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dmd_tasks.domain.entities import Entity, SaleStatus
from dmd_tasks.domain.errors import InvalidRecord
from dmd_tasks.domain.ids import is_valid_id
from dmd_tasks.infra import tracing
from dmd_tasks.infra.deadletters import DeadLetter
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import RECORD_SMS_STATUS, SHORTEN_EVENT_URL, TaskCall
from dmd_tasks.pipeline.records import (
    ChangeRecord,
    decode_status_record,
    jsonable,
    record_correlation_id,
)
from dmd_tasks.store.keys import own_entity_of


@dataclass(frozen=True)
class Route:
    """A task a record leads to: ``item`` is the task's argument; ``key`` de-duplicates routes."""

    task: str
    key: str
    item: Any
    correlation_id: str
    traceparent: str | None = None


@dataclass
class BatchPlan:
    """What one batch of records turns into: task calls per task, and dead letters."""

    calls: dict[str, list[TaskCall]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: (task, key) of every route planned, to remember once the calls are published.
    keys: list[tuple[str, str]] = field(default_factory=list)
    #: Records that became (part of) a task message.
    routed: int = 0
    ignored: int = 0
    duplicates: int = 0
    #: REMOVE records (items deleted: nothing to do), and those of them made by DynamoDB's TTL
    removed: int = 0
    ttl_expired: int = 0
    #: sales written as waiting (a new sale, a re-run): beat's claim has work (``Wake``)
    sales_waiting: int = 0

    @property
    def messages(self) -> int:
        return sum(len(c) for c in self.calls.values())

    def merge(self, other: BatchPlan) -> None:
        """Add ``other``'s calls, letters and counts to this plan (a page planned record by record)."""
        for task_name, calls in other.calls.items():
            self.calls.setdefault(task_name, []).extend(calls)
        self.dead_letters.extend(other.dead_letters)
        self.keys.extend(other.keys)
        self.routed += other.routed
        self.ignored += other.ignored
        self.duplicates += other.duplicates
        self.removed += other.removed
        self.ttl_expired += other.ttl_expired
        self.sales_waiting += other.sales_waiting


def route_change(change: ChangeRecord) -> Route | None:
    """The task a change of the demand table leads to, or None when the change needs nothing (a
    notification's own transitions among them: their stage publishes the next task itself).

    Raises InvalidRecord for an entity type the pipeline does not know.
    """
    entity = change.entity
    if entity is None:
        image = change.new if change.new is not None else change.old or {}
        own = own_entity_of(image.get("pk"), image.get("sk"))
        if own is None:
            raise InvalidRecord("item has no 'entity' attribute")
        entity = own.value  # the pipeline's own item, created by an update: known by its key
    try:
        kind = Entity(entity)
    except ValueError:
        raise InvalidRecord(f"unknown entity type {entity!r}") from None
    if kind is Entity.DEMAND and change.event_name == "INSERT":
        event_id = (change.new or {}).get("eventId")
        if not is_valid_id(event_id):
            raise InvalidRecord("demand item has no valid 'eventId'")
        return Route(task=SHORTEN_EVENT_URL, key=str(event_id), item=event_id, correlation_id=change.correlation_id)
    return None


def is_sale_waiting(change: ChangeRecord) -> bool:
    """A sale written (or re-written) as waiting: one the claim should look at."""
    new = change.new
    if change.event_name == "REMOVE" or new is None or change.entity != Entity.SALE.value:
        return False
    return new.get("status", SaleStatus.WAITING.value) == SaleStatus.WAITING.value


def plan_changes(
    raws: Iterable[Any],
    decode: Callable[[Any], ChangeRecord],
    source: str = "bridge-demand",
    recently_published: Container[tuple[str, str]] = (),
) -> BatchPlan:
    """Turn a page of raw change records into de-duplicated task calls and dead letters.

    One bad record becomes a dead letter with its reason; the rest of the page proceeds.
    Routes already in ``recently_published`` (earlier pages) count as duplicates.
    """
    plan = BatchPlan()
    seen: set[tuple[str, str]] = set()
    for raw in raws:
        try:
            change = decode(raw)
            if change.event_name == "REMOVE":
                plan.removed += 1
                plan.ttl_expired += change.ttl_expired
                continue
            plan.sales_waiting += is_sale_waiting(change)
            target = route_change(change)
            if target is not None:
                target = _traced(target, change, source)
        except Exception as exc:  # whatever a record raises, it is that record's problem alone
            plan.dead_letters.append(dead_letter(raw, exc, source))
            continue
        if target is None:
            plan.ignored += 1
            continue
        if (target.task, target.key) in seen or (target.task, target.key) in recently_published:
            plan.duplicates += 1
            continue
        seen.add((target.task, target.key))
        plan.keys.append((target.task, target.key))
        plan.routed += 1
        plan.calls.setdefault(target.task, []).append(
            TaskCall(
                args=(target.item,),
                headers={CORRELATION_HEADER: target.correlation_id},
                traceparent=target.traceparent,
            )
        )
    return plan


def plan_status_records(
    records: Iterable[Any],
    batch_size: int,
    source: str = "bridge-sms-status",
    decode: Callable[[Any], dict[str, Any]] = decode_status_record,
) -> BatchPlan:
    """Valid provider events in messages of ``batch_size``, and a dead letter per invalid record.
    ``decode``: a Kinesis record of the status stream, or an SQS message (``decode_sqs_status``)."""
    plan = BatchPlan()
    events: list[tuple[dict[str, Any], str]] = []
    for record in records:
        try:
            event = decode(record)
            correlation_id = record_correlation_id(record) or "kin-"
        except Exception as exc:  # whatever a record raises, it is that record's problem alone
            plan.dead_letters.append(dead_letter(record, exc, source))
            continue
        events.append((event, correlation_id))
    plan.routed = len(events)
    if events:
        plan.calls[RECORD_SMS_STATUS] = [
            TaskCall(args=([e for e, _ in chunk],), headers={CORRELATION_HEADER: chunk[0][1]})
            for chunk in _status_chunks(events, batch_size)
        ]
    return plan


#: The most event JSON one status message carries: its body is base64 in the SQS envelope (4/3),
#: beside Celery's headers, and SQS takes 256 KiB a message.
MAX_STATUS_MESSAGE_JSON_BYTES = 96 * 1024


def _status_chunks(events: list[tuple[dict[str, Any], str]], batch_size: int) -> list[list[tuple[dict[str, Any], str]]]:
    """Events in messages of at most ``batch_size`` and at most ``MAX_STATUS_MESSAGE_JSON_BYTES`` (a
    provider event is a few hundred bytes, but a valid one may be up to 16 KB)."""
    chunks: list[list[tuple[dict[str, Any], str]]] = []
    chunk: list[tuple[dict[str, Any], str]] = []
    size = 0
    for event in events:
        length = len(json.dumps(event[0], default=str))
        if chunk and (len(chunk) == batch_size or size + length > MAX_STATUS_MESSAGE_JSON_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(event)
        size += length
    if chunk:
        chunks.append(chunk)
    return chunks


def dead_letter(raw: Any, exc: BaseException, source: str) -> DeadLetter:
    """The dead letter of a record that could not be routed: the reason (an InvalidRecord's own
    words, or the unexpected error's type and message) and a copy of the record."""
    reason = str(exc) if isinstance(exc, InvalidRecord) else f"unexpected {type(exc).__name__}: {exc}"
    return DeadLetter(
        reason=reason[:1000],
        payload=jsonable(raw),
        source=source,
        correlation_id=_safe_correlation_id(raw),
        position={"sequence": sequence_of(raw)},
    )


def sequence_of(raw: Any) -> str | None:
    """A stream record's sequence number, from whichever form it has (None when it has none)."""
    if not isinstance(raw, Mapping):
        return None
    sequence = raw.get("SequenceNumber")
    change = raw.get("dynamodb")
    if sequence is None and isinstance(change, Mapping):
        sequence = change.get("SequenceNumber")
    return str(sequence)[:128] if isinstance(sequence, (str, int)) else None


def _safe_correlation_id(raw: Any) -> str | None:
    try:
        return record_correlation_id(raw)
    except Exception:
        return None


def _traced(target: Route, change: ChangeRecord, source: str) -> Route:
    """A span for the routed record (continuing the trace stored on its item, if any)."""
    if not tracing.enabled():  # the bridge's hot path: no span work when nothing exports
        return target
    stored = (change.new or {}).get("traceparent")
    with tracing.continued(
        f"{source} route {target.task.rsplit('.', 1)[-1]}",
        stored if isinstance(stored, str) else None,
        **{"dmd.correlation_id": change.correlation_id, "dmd.item": str(target.item)},
    ):
        return replace(target, traceparent=tracing.current_traceparent())
