"""What the SMS provider reports on its status stream: delivery statuses and inbound replies.

A delivery status carries the provider's message id and, when the provider echoes it, our
reference (the notification id). An inbound reply whose body is a stop word opts its
sender out of every later message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ValidationError

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})


class StatusEvent(BaseModel):
    type: Literal["status"]
    message_id: str
    status: str
    timestamp: str
    #: Our own reference, echoed by the provider: the notification id (the idempotency key).
    reference: str | None = None


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
