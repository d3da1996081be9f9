"""DynamoDB's wire form of items, and the string forms of times and leases stored in them."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from dmd_tasks.domain.entities import utc_iso

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _attribute(value: Any) -> dict[str, Any]:
    """One value in DynamoDB's wire form: strings and integers (nearly every attribute) directly,
    anything else through boto3's serializer (a profile of generation showed it at 10 % of a chunk)."""
    kind = type(value)
    if kind is str:
        return {"S": value}
    if kind is int:
        return {"N": str(value)}
    return cast(dict[str, Any], _serializer.serialize(value))


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    """A plain dict → DynamoDB attribute values."""
    return {k: _attribute(v) for k, v in item.items()}


def _value(attribute: dict[str, Any]) -> Any:
    if "S" in attribute:
        return attribute["S"]
    if "N" in attribute:
        return Decimal(attribute["N"])  # what boto3's deserializer gives
    return _deserializer.deserialize(cast(Any, attribute))


def deserialize(image: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values (an item, or a stream image) → a plain dict."""
    return {k: _value(v) for k, v in image.items()}


#: Epoch seconds → sortable ISO-8601 UTC (second precision), the form of every *At attribute:
#: the domain's own form (one definition for both).
iso = utc_iso


def epoch_key(ts: float) -> str:
    """Epoch seconds as a fixed-width string, so index sort keys compare in time order."""
    return f"{int(ts):012d}"


def new_lease(now: float, seconds: float) -> str:
    """A generator lease: its expiry (sortable against ``iso(now)``) and a token unique to its owner,
    so two runs taking a lease in the same second cannot both hold it."""
    return f"{iso(now + seconds)}#{uuid.uuid4().hex[:12]}"
