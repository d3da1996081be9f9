"""Decoding the stream records the bridges read, shared by every bridge and by dead-letter replay.

- A change record is the DynamoDB Streams record of the ``demand`` table, either as read
  from DynamoDB Streams or wrapped in a Kinesis record (the table's Kinesis streaming
  destination, whose ``Data`` is the same record as JSON).
- A status record is a Kinesis record of the SMS provider's stream whose ``Data`` is one
  provider event as JSON.
- An SQS message of an intake queue (``bridges/sqs.py``) carries either kind as JSON, raw or
  in an SNS envelope.

Nothing here touches a network. A record that cannot be decoded raises InvalidRecord with
the reason, which becomes the reason of its dead letter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dmd_tasks.domain.errors import InvalidRecord
from dmd_tasks.domain.provider_events import parse_eum_event, parse_event
from dmd_tasks.store.codec import deserialize

EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})
#: A provider event is a few hundred bytes; anything this large is not one.
MAX_EVENT_BYTES = 16_384
#: How deep a dead letter's copy of a record goes; deeper values are replaced by a note (a record
#: nested thousands of levels deep must not break the letter that reports it).
MAX_COPY_DEPTH = 32
#: Who deletes an item whose time to live has passed (``userIdentity`` of the REMOVE record).
TTL_PRINCIPAL = "dynamodb.amazonaws.com"


@dataclass(frozen=True)
class ChangeRecord:
    """One change of one item of the ``demand`` table."""

    event_id: str
    event_name: str
    sequence_number: str
    new: Mapping[str, Any] | None
    old: Mapping[str, Any] | None
    created_at: datetime | None = None
    #: a REMOVE made by DynamoDB's time to live, not by a writer
    ttl_expired: bool = False

    @property
    def entity(self) -> str | None:
        image = self.new if self.new is not None else self.old
        value = image.get("entity") if image else None
        return value if isinstance(value, str) else None

    @property
    def correlation_id(self) -> str:
        """Deterministic per record, so a record read twice carries the same id."""
        return f"ddb-{bounded_id(self.event_id)}"


def _wire_binary(value: Any) -> Any:
    """JSON's form of DynamoDB binary (base64 text in ``B`` / ``BS``) → bytes, as boto3 gives it;
    anything else unchanged. (boto3's deserializer accepts only bytes for binary.)"""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    ((kind, inner),) = value.items()
    if kind == "B" and isinstance(inner, str):
        return {"B": _b64(inner)}
    if kind == "BS" and isinstance(inner, list):
        return {"BS": [_b64(v) if isinstance(v, str) else v for v in inner]}
    if kind == "L" and isinstance(inner, list):
        return {"L": [_wire_binary(v) for v in inner]}
    if kind == "M" and isinstance(inner, dict):
        return {"M": {k: _wire_binary(v) for k, v in inner.items()}}
    return value


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRecord("a binary attribute is not base64") from exc


#: The longest record id carried as it is (AWS's are 32-36 characters; a longer one is hashed).
MAX_ID_CHARS = 128


def bounded_id(value: Any) -> str:
    """A record's id for headers and logs: as it is when short, else a digest of it (a hostile
    record's 200 KB id must not make its task message larger than SQS takes)."""
    text = str(value)
    if len(text) <= MAX_ID_CHARS:
        return text
    return "sha1-" + hashlib.sha1(text.encode(errors="replace")).hexdigest()


def _image(raw: Any, name: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRecord(f"{name} is not a DynamoDB item")
    try:
        return deserialize({k: _wire_binary(v) for k, v in raw.items()})
    except InvalidRecord:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
        raise InvalidRecord(f"{name} is not valid DynamoDB JSON: {exc}") from exc
    except RecursionError:
        raise InvalidRecord(f"{name} is nested too deeply") from None


#: ApproximateCreationDateTimePrecision → the unit of ApproximateCreationDateTime (Kinesis form).
_PRECISION = {"MILLISECOND": 1e3, "MICROSECOND": 1e6}


def _timestamp(value: Any, precision: Any = None) -> datetime | None:
    """When the change was made, from any of AWS's forms: a datetime (boto3 reading DynamoDB
    Streams), epoch seconds (the stream's JSON), or, in the Kinesis form, milliseconds or
    microseconds as ``ApproximateCreationDateTimePrecision`` says. Never raises: the time is
    only for the lag metric."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(precision, str) and precision in _PRECISION:
        seconds = value / _PRECISION[precision]
    else:  # no precision given: judge by magnitude (seconds are ~1.7e9 in this century)
        seconds = value / 1e6 if value > 1e14 else value / 1e3 if value > 1e11 else value
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _ttl_expired(raw: Mapping[str, Any]) -> bool:
    identity = raw.get("userIdentity")
    return (
        isinstance(identity, Mapping)
        and identity.get("type") == "Service"
        and identity.get("principalId") == TTL_PRINCIPAL
    )


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
    sequence = sequence_number or ddb.get("SequenceNumber")
    event_id = raw.get("eventID") or sequence
    if not event_id or not sequence or not isinstance(event_id, (str, int)):
        raise InvalidRecord("record has no eventID/SequenceNumber")
    created_at = _timestamp(ddb.get("ApproximateCreationDateTime"), ddb.get("ApproximateCreationDateTimePrecision"))
    if event_name == "REMOVE":
        # A deleted item needs nothing (a notification or demand row is never deleted by the
        # pipeline; TTL removes old items): no image is required, whatever the stream view type.
        return ChangeRecord(
            event_id=str(event_id),
            event_name=event_name,
            sequence_number=str(sequence),
            new=None,
            old=_image_or_none(ddb.get("OldImage")),
            created_at=created_at,
            ttl_expired=_ttl_expired(raw),
        )
    new = _image(ddb.get("NewImage"), "NewImage")
    old = _image(ddb.get("OldImage"), "OldImage")
    if new is None:
        if "Keys" in ddb and old is None:
            raise InvalidRecord(
                f"{event_name} carries only the item's keys (stream view type KEYS_ONLY); the bridge "
                "needs NEW_AND_OLD_IMAGES"
            )
        raise InvalidRecord(f"{event_name} without NewImage (stream view type must be NEW_AND_OLD_IMAGES)")
    return ChangeRecord(
        event_id=str(event_id),
        event_name=event_name,
        sequence_number=str(sequence),
        new=new,
        old=old,
        created_at=created_at,
    )


def _image_or_none(raw: Any) -> dict[str, Any] | None:
    """An image the routing does not need: kept when readable, dropped when not."""
    try:
        return _image(raw, "OldImage")
    except InvalidRecord:
        return None


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
    payload = _json(data, "Kinesis Data")
    if not isinstance(payload, Mapping):
        raise InvalidRecord("Kinesis Data is not a JSON object")
    sequence = record.get("SequenceNumber")
    return parse_change(payload, sequence_number=str(sequence) if sequence else None)


def decode_status_record(record: Any) -> dict[str, Any]:
    """The provider event a status-stream record carries, validated (the task gets it as JSON)."""
    data = kinesis_data(record)
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidRecord(f"record is {len(data)} bytes; provider events are at most {MAX_EVENT_BYTES}")
    raw = _json(data, "record")
    try:
        event = parse_event(raw)
    except ValueError as exc:
        raise InvalidRecord(str(exc)) from exc
    # the event as validated, not as received: fields no provider event has (a nested structure
    # the worker's decoder would refuse, losing every event of its message) do not travel on
    return event.model_dump(exclude_none=True)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord(f"{what} is not JSON") from exc
    except RecursionError:
        raise InvalidRecord(f"{what} is JSON nested too deeply") from None


def record_correlation_id(raw: Any) -> str | None:
    """The correlation id a record would have had, from whatever identifies it."""
    if isinstance(raw, Mapping):
        if raw.get("eventID"):
            return f"ddb-{bounded_id(raw['eventID'])}"
        if raw.get("SequenceNumber"):
            return f"kin-{bounded_id(raw['SequenceNumber'])}"
        if raw.get("MessageId"):
            return f"sqs-{bounded_id(raw['MessageId'])}"
    return None


def jsonable(raw: Any, depth: int = 0) -> Any:
    """A copy of a raw record that survives json.dumps (bytes as base64, datetimes as ISO), at most
    ``MAX_COPY_DEPTH`` levels deep (what lies deeper becomes a note)."""
    if isinstance(raw, (Mapping, list, tuple)) and depth >= MAX_COPY_DEPTH:
        return f"(nested deeper than {MAX_COPY_DEPTH} levels: not copied)"
    if isinstance(raw, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [jsonable(v, depth + 1) for v in raw]
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


# ---- SQS intake (``bridges/sqs.py``) -------------------------------------------------------------
# A message as ``ReceiveMessage`` gives it (``MessageId``, ``Body``); its body is the record as
# JSON, raw or wrapped in an SNS envelope (a queue subscribed to a topic without raw delivery).

#: SQS takes at most 256 KiB a message; a record is far smaller.
MAX_SQS_BODY_BYTES = 262_144


def sqs_payload(message: Any) -> tuple[Any, str | None]:
    """The JSON a message carries, unwrapped from its SNS envelope if it has one, and the time
    SNS stamped on it (None without an envelope). Raises InvalidRecord with the reason."""
    if not isinstance(message, Mapping):
        raise InvalidRecord("message is not an object")
    body = message.get("Body")
    if not isinstance(body, str):
        raise InvalidRecord("message has no Body")
    if len(body) > MAX_SQS_BODY_BYTES:
        raise InvalidRecord(f"message body is {len(body)} characters; SQS takes at most {MAX_SQS_BODY_BYTES}")
    payload = _json(body.encode("utf-8", "surrogatepass"), "message body")
    if isinstance(payload, Mapping) and payload.get("Type") == "Notification" and "TopicArn" in payload:
        inner = payload.get("Message")
        if not isinstance(inner, str):
            raise InvalidRecord("SNS notification without a Message")
        stamp = payload.get("Timestamp")
        return _json(inner.encode("utf-8", "surrogatepass"), "SNS Message"), stamp if isinstance(stamp, str) else None
    return payload, None


def decode_sqs_change(message: Any) -> ChangeRecord:
    """A demand-table change delivered through SQS: the DynamoDB Streams record as EventBridge
    Pipes puts it on an SQS target (the record's JSON, ``eventSource`` ``aws:dynamodb``)."""
    payload, _stamp = sqs_payload(message)
    if not isinstance(payload, Mapping):
        raise InvalidRecord("message body is not a JSON object")
    source = payload.get("eventSource")
    if source is not None and source != "aws:dynamodb":
        raise InvalidRecord(f"eventSource {source!r} is not aws:dynamodb")
    return parse_change(payload)


def decode_sqs_status(message: Any) -> dict[str, Any]:
    """A provider event delivered through SQS: an End User Messaging SMS event or two-way SMS
    reply (through SNS), or an event in the HTTP provider's own form; validated as on the stream."""
    payload, stamp = sqs_payload(message)
    size = len(json.dumps(payload, default=str))
    if size > MAX_EVENT_BYTES:
        raise InvalidRecord(f"event is {size} bytes as JSON; provider events are at most {MAX_EVENT_BYTES}")
    try:
        if isinstance(payload, Mapping) and "type" in payload:
            event = parse_event(payload)
        else:
            event = parse_eum_event(payload, received_at=stamp)
    except ValueError as exc:
        raise InvalidRecord(str(exc)) from exc
    return event.model_dump(exclude_none=True)
