"""Stage 6: delivery receipts and inbound replies from the SMS provider's status stream.

Trigger: the status bridge (``bridges/kinesis_sms_status.py``) reads the Kinesis stream
and enqueues batches of ``status_batch_size`` events.

- A delivery status (``delivered``, ``undelivered``, ``failed``) is correlated by the
  provider's message id: the provider echoes our reference (the notification id), so the
  item is read by key, and the conditional write requires the stored
  ``providerMessageId`` to match; without a reference the sparse index ``gsi2`` maps the
  message id to the notification. It moves ``sent → <status>``: a duplicate or a late,
  out-of-order receipt changes nothing.
  Intermediate statuses (``queued``, ``sent``, ...) are ignored.
- A receipt that arrives before our own ``sent`` write (the provider is fast, the index
  is eventually consistent) is not lost: it is retried with backoff, up to
  ``status_max_retries`` times, then dead-lettered with the reason.
- An inbound ``STOP`` adds the sender's number to the opt-out list.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from dmd_tasks import tracing
from dmd_tasks.celery_app import task
from dmd_tasks.errors import TransientError
from dmd_tasks.models import PHONE_PATTERN, TERMINAL_STATUSES, split_notification_id
from dmd_tasks.services import Services, get_services
from dmd_tasks.settings import get_settings

log = logging.getLogger(__name__)

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


def parse_event(raw: Any) -> StatusEvent | InboundEvent:
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
        raise ValueError(f"invalid {kind} event: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from exc
    raise ValueError(f"unknown event type {kind!r}")


def _by_reference(reference: str | None) -> tuple[str, str] | None:
    if not reference:
        return None
    try:
        return split_notification_id(reference)
    except ValueError:
        return None


def apply_event(services: Services, event: StatusEvent | InboundEvent) -> str:
    """Apply one event; returns the outcome ("unresolved" means: try again later)."""
    notifications = services.notifications
    if isinstance(event, InboundEvent):
        if event.body.strip().upper() in STOP_WORDS and PHONE_PATTERN.match(event.sender):
            notifications.add_optout(event.sender, time.time())
            return "opted-out"
        return "inbound-ignored"
    if event.status not in TERMINAL_STATUSES:
        return "intermediate-ignored"
    found = _by_reference(event.reference) or notifications.find_by_message_id(event.message_id)
    if found is None:
        return "unresolved"
    sale_id, fan_id = found
    updated = notifications.record_delivery(sale_id, fan_id, event.message_id, event.status, event.timestamp)
    if updated is not None:
        # continue the sender's trace: the receipt closes the notification's life
        with tracing.continued("delivery receipt", updated.get("traceparent"),
                               **{"dmd.notification_id": f"{sale_id}:{fan_id}", "dmd.status": event.status}):
            pass
        return event.status
    current = notifications.status_of(sale_id, fan_id)
    if current in TERMINAL_STATUSES:
        return "duplicate"
    return "unresolved"


@task(queue="sms-status", max_retries=get_settings().status_max_retries)
def record_sms_status(self, events: list[dict[str, Any]]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Apply a batch of provider events (see the module docstring); retries only the unresolved ones."""
    services = get_services()
    outcomes: Counter[str] = Counter()
    unresolved: list[dict[str, Any]] = []
    for raw in events if isinstance(events, list) else []:
        try:
            event = parse_event(raw)
        except ValueError as exc:
            outcomes["invalid"] += 1
            log.warning("ignored an invalid provider event: %s", exc)
            continue
        outcome = apply_event(services, event)
        outcomes[outcome] += 1
        if outcome == "unresolved":
            unresolved.append(raw)
    if unresolved:
        raise self.retry(args=(unresolved,), countdown=min(2 ** self.request.retries, 30), exc=TransientError(
            f"{len(unresolved)} receipts match no sent notification yet"))
    return dict(outcomes)
