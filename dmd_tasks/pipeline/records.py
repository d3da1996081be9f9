"""Decoding the stream records the bridges read, shared by every bridge and by dead-letter replay.

- A change record is the DynamoDB Streams record of the ``demand`` table, either as read
  from DynamoDB Streams or wrapped in a Kinesis record (the table's Kinesis streaming
  destination, whose ``Data`` is the same record as JSON).
- A status record is a Kinesis record of the SMS provider's stream whose ``Data`` is one
  provider event as JSON.

Nothing here touches a network. A record that cannot be decoded raises InvalidRecord with
the reason, which becomes the reason of its dead letter.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dmd_tasks.domain.errors import InvalidRecord
from dmd_tasks.domain.provider_events import parse_event
from dmd_tasks.store.codec import deserialize

EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})
#: A provider event is a few hundred bytes; anything this large is not one.
MAX_EVENT_BYTES = 16_384


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
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        # DynamoDB Streams gives seconds; the Kinesis form gives milliseconds.
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, tz=UTC)
    return None


def parse_change(raw: Any, sequence_number: str | None = None) -> ChangeRecord:
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
        raise InvalidRecord(
            "record carries neither NewImage nor OldImage (stream view type must be NEW_AND_OLD_IMAGES)"
        )
    if event_name == "INSERT" and new is None:
        raise InvalidRecord("INSERT without NewImage")
    sequence = sequence_number or ddb.get("SequenceNumber")
    event_id = raw.get("eventID") or sequence
    if not event_id or not sequence:
        raise InvalidRecord("record has no eventID/SequenceNumber")
    return ChangeRecord(
        event_id=str(event_id),
        event_name=event_name,
        sequence_number=str(sequence),
        new=new,
        old=old,
        created_at=_timestamp(ddb.get("ApproximateCreationDateTime")),
    )


def kinesis_data(record: Any) -> bytes:
    """The ``Data`` of a Kinesis record as bytes (boto3 gives bytes, a Lambda-style event base64 text)."""
    if not isinstance(record, Mapping):
        raise InvalidRecord("record is not an object")
    data = record.get("Data")
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRecord("Kinesis Data is not base64") from exc
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidRecord("Kinesis record has no Data")
    return bytes(data)


def decode_kinesis_change(record: Any) -> ChangeRecord:
    """Parse a Kinesis record whose ``Data`` is a DynamoDB change record as JSON."""
    data = kinesis_data(record)
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord("Kinesis Data is not JSON") from exc
    if not isinstance(payload, Mapping):
        raise InvalidRecord("Kinesis Data is not a JSON object")
    sequence = record.get("SequenceNumber")
    return parse_change(payload, sequence_number=str(sequence) if sequence else None)


def decode_status_record(record: Any) -> dict[str, Any]:
    """The provider event a status-stream record carries, validated (the task gets it as JSON)."""
    data = kinesis_data(record)
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidRecord(f"record is {len(data)} bytes; provider events are at most {MAX_EVENT_BYTES}")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord("record is not JSON") from exc
    try:
        parse_event(raw)
    except ValueError as exc:
        raise InvalidRecord(str(exc)) from exc
    return raw


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


def restore(value: Any) -> Any:
    """Undo ``jsonable`` for bytes (kept as ``{"base64": ...}``): a dead-lettered record as it was read."""
    if isinstance(value, dict):
        if set(value) == {"base64"} and isinstance(value["base64"], str):
            return base64.b64decode(value["base64"])
        return {k: restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v) for v in value]
    return value
