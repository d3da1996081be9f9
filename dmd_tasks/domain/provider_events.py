"""What the SMS provider reports on its status stream: delivery statuses and inbound replies.

A delivery status carries the provider's message id and, when the provider echoes it, our
reference (the notification id). An inbound reply whose body is a stop word opts its
sender out of every later message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})


class StatusEvent(BaseModel):
    type: Literal["status"]
    #: bounded: it is looked up as an index key (DynamoDB keys are at most 2 KB)
    message_id: str = Field(min_length=1, max_length=256)
    status: str = Field(max_length=32)
    timestamp: str = Field(max_length=64)
    #: Our own reference, echoed by the provider: the notification id (the idempotency key).
    reference: str | None = Field(default=None, max_length=512)
    #: Which provider reported it (``dmd_tasks.clients.providers``); None: the HTTP provider (its
    #: events on the status stream say nothing of it).
    provider: Literal["http", "eum"] | None = None


class InboundEvent(BaseModel):
    type: Literal["inbound"]
    sender: str
    body: str
    timestamp: str

    @property
    def is_stop(self) -> bool:
        """The fan asked to receive nothing more."""
        return self.body.strip().upper() in STOP_WORDS


ProviderEvent = StatusEvent | InboundEvent


def parse_event(raw: Any) -> ProviderEvent:
    """Validate one provider event; raises ValueError with the reason."""
    if not isinstance(raw, dict):
        raise ValueError("event is not an object")
    kind = raw.get("type")
    try:
        if kind == "status":
            return StatusEvent.model_validate(raw)
        if kind == "inbound":
            return InboundEvent.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"invalid {kind} event: {first['loc']} {first['msg']}") from exc
    raise ValueError(f"unknown event type {kind!r}")


# ---- AWS End User Messaging SMS -----------------------------------------------------------------
# Its delivery events reach us through an event destination (SNS, then SQS); two-way SMS (a fan's
# reply) through an SNS topic of its own. Event types: the service's "Event types for SMS".

#: Final event types, by the status they mean here: delivered; failed (refused for good: this
#: number or this message will not go); undelivered (it did not reach the handset this time).
EUM_FINAL_STATUSES: dict[str, str] = {
    "TEXT_DELIVERED": "delivered",
    "TEXT_SUCCESSFUL": "delivered",  # accepted by the carrier; some countries report only this
    "TEXT_BLOCKED": "failed",
    "TEXT_CARRIER_BLOCKED": "failed",
    "TEXT_SPAM": "failed",
    "TEXT_INVALID": "failed",
    "TEXT_INVALID_MESSAGE": "failed",
    "TEXT_PROTECT_BLOCKED": "failed",
    "TEXT_UNREACHABLE": "undelivered",
    "TEXT_CARRIER_UNREACHABLE": "undelivered",
    "TEXT_TTL_EXPIRED": "undelivered",
    "TEXT_UNKNOWN": "undelivered",
}
#: Intermediate event types: the message is on its way (ignored like the HTTP provider's ``queued``).
EUM_INTERMEDIATE = frozenset({"TEXT_QUEUED", "TEXT_PENDING"})
#: The ``Context`` key the sender puts the notification id in (``dmd_tasks.clients.eum``).
EUM_CONTEXT_KEY = "notificationId"


def _iso_from_millis(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("eventTimestamp is not a number of milliseconds")
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        raise ValueError("eventTimestamp is out of range") from None


def parse_eum_event(raw: Any, received_at: str | None = None) -> ProviderEvent:
    """One End User Messaging SMS event (an SMS event, or a two-way SMS reply) as a provider
    event; raises ValueError with the reason. ``received_at`` (ISO-8601) stands in for the
    reply's time, which a two-way message does not carry (its SNS envelope does)."""
    if not isinstance(raw, dict):
        raise ValueError("event is not an object")
    if "eventType" not in raw and "originationNumber" in raw:  # a fan's reply
        sender, body = raw.get("originationNumber"), raw.get("messageBody")
        if not isinstance(sender, str) or not isinstance(body, str):
            raise ValueError("two-way SMS message without originationNumber or messageBody")
        return InboundEvent(type="inbound", sender=sender, body=body, timestamp=received_at or "")
    kind = raw.get("eventType")
    if not isinstance(kind, str):
        raise ValueError("event has no eventType")
    message_id = raw.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise ValueError(f"{kind} event has no messageId")
    if kind not in EUM_FINAL_STATUSES and kind not in EUM_INTERMEDIATE:
        raise ValueError(f"unknown End User Messaging event type {kind[:64]!r}")
    if kind == "TEXT_QUEUED":
        status = "queued"
    elif kind in EUM_INTERMEDIATE or raw.get("isFinal") is False:
        # on its way, or a temporary error the service still retries (``isFinal`` false): never
        # one of the final statuses, whatever the type says
        status = "pending"
    else:
        status = EUM_FINAL_STATUSES[kind]
    context = raw.get("context")
    reference = context.get(EUM_CONTEXT_KEY) if isinstance(context, dict) else None
    try:
        return StatusEvent(
            type="status",
            message_id=message_id,
            status=status,
            timestamp=_iso_from_millis(raw.get("eventTimestamp")),
            reference=reference if isinstance(reference, str) else None,
            provider="eum",
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"invalid {kind} event: {first['loc']} {first['msg']}") from exc
