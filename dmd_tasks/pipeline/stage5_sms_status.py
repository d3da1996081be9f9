"""Stage 5: delivery receipts and inbound replies from the SMS provider's status stream.

Trigger: the status bridge (``bridges/sms_status.py``) reads the Kinesis stream
and enqueues batches of ``status_batch_size`` events.

- A delivery status (``delivered``, ``undelivered``, ``failed``) is correlated by the
  provider's message id: the provider echoes our reference (the notification id), so the
  item is read by key, and the conditional write requires the stored
  ``providerMessageId`` to match; without a reference the sparse index ``gsi2`` maps the
  message id to the notification. It moves ``sent → <status>``: a duplicate or a late,
  out-of-order receipt changes nothing.
  Intermediate statuses (``queued``, ``sent``, ...) are ignored, but for a provider without
  idempotency: there an event for an ``unconfirmed`` send (matched by the notification id
  the request carried) moves it to ``sent``: the SMS went after all.
- A final status for an ``unconfirmed`` or ``unknown`` send (matched by that id: it has no
  message id of ours) records it too: the provider's word, however late; so does one for a
  send still ``sending`` whose call to such a provider was recorded (its worker died after the
  call), without waiting for the lease to expire.
- A receipt that arrives before our own ``sent`` write (the provider is fast, the index
  is eventually consistent) is not lost: it is retried with backoff, up to
  ``status_max_retries`` times, then dead-lettered with the reason.
- An inbound ``STOP`` adds the sender's number to the opt-out list.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from celery import Task

from dmd_tasks.celery_app.base import task
from dmd_tasks.clients.providers import capabilities_of
from dmd_tasks.domain.entities import TERMINAL_STATUSES, NotificationStatus
from dmd_tasks.domain.errors import TransientError
from dmd_tasks.domain.ids import notification_id, split_notification_id
from dmd_tasks.domain.phones import try_normalize
from dmd_tasks.domain.provider_events import InboundEvent, ProviderEvent, StatusEvent, parse_event
from dmd_tasks.infra import tracing
from dmd_tasks.pipeline.routing import RECORD_SMS_STATUS
from dmd_tasks.services import Services, get_services

log = logging.getLogger(__name__)


#: The final statuses a provider reports (``duplicate`` is dmd's own and never comes from it).
DELIVERY_STATUSES = frozenset({NotificationStatus.DELIVERED, NotificationStatus.UNDELIVERED, NotificationStatus.FAILED})
#: A send whose answer never came: the provider's final event still says what happened.
UNANSWERED = frozenset({NotificationStatus.UNCONFIRMED, NotificationStatus.UNKNOWN})
SENDING = NotificationStatus.SENDING.value


def _by_reference(reference: str | None) -> tuple[str, str] | None:
    if not reference:
        return None
    try:
        return split_notification_id(reference)
    except ValueError:
        return None


def _unanswered(status: str | None, event: StatusEvent) -> bool:
    """Whether a final event may settle a notification in ``status`` that has no message id of
    ours: unconfirmed or unknown; or still sending at a provider without idempotency (its worker
    died after the call: the event need not wait for the lease to expire)."""
    if status in UNANSWERED:
        return True
    return status == SENDING and event.provider is not None and not capabilities_of(event.provider).idempotent


def apply_event(services: Services, event: ProviderEvent) -> str:
    """Apply one event; returns the outcome ("unresolved" means: try again later)."""
    notifications = services.notifications
    if isinstance(event, InboundEvent):
        phone = try_normalize(event.sender, services.settings.phone_default_region)
        if event.is_stop and phone is not None:
            # keyed by the normalized number: the generator and the sender look it up the same way
            services.demand.add_optout(phone, time.time())
            return "opted-out"
        return "inbound-ignored"
    if event.status not in DELIVERY_STATUSES:
        idempotent = event.provider is None or capabilities_of(event.provider).idempotent
        unconfirmed = None if idempotent else _by_reference(event.reference)
        if unconfirmed is not None and notifications.confirm_sent(*unconfirmed, event.message_id, time.time()):
            # the provider has the message: an unconfirmed send went after all
            return "confirmed"
        return "intermediate-ignored"
    found = _by_reference(event.reference) or notifications.find_by_message_id(event.message_id)
    if found is None:
        return "unresolved"
    sale_id, fan_id = found
    updated = notifications.record_delivery(sale_id, fan_id, event.message_id, event.status, event.timestamp)
    if updated is None and event.reference and _unanswered(notifications.status_of(sale_id, fan_id), event):
        updated = notifications.record_unconfirmed_delivery(
            sale_id, fan_id, event.message_id, event.status, event.timestamp
        )
    if updated is not None:
        # continue the sender's trace: the receipt closes the notification's life
        with tracing.continued(
            "delivery receipt",
            updated.get("traceparent"),
            **{"dmd.notification_id": notification_id(sale_id, fan_id), "dmd.status": event.status},
        ):
            pass
        return event.status
    current = notifications.status_of(sale_id, fan_id)
    if current in TERMINAL_STATUSES:
        return "duplicate"
    return "unresolved"


@task(RECORD_SMS_STATUS)
def record_sms_status(self: Task, events: list[dict[str, Any]]) -> dict[str, int]:
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
        raise self.retry(
            args=(unresolved,),
            countdown=min(2**self.request.retries, 30),
            exc=TransientError(f"{len(unresolved)} receipts match no sent notification yet"),
        )
    return dict(outcomes)
