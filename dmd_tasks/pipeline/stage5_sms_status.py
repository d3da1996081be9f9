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
- A receipt that arrives before our own ``sent`` write (the provider is fast; or its answer
  to our call was lost, a timeout, and the send waits for its retry) is not lost: while its
  notification is in flight (``pending``, ``scheduled``, ``sending``, ``unconfirmed``) it is
  published again with a backoff (up to 30 s), however long that takes: the reconciler
  bounds how long a notification stays in flight, and once it is final the receipt applies or
  is a duplicate. A receipt that matches no notification in flight (none found, or one
  ``sent`` with another message id: the index is eventually consistent) is tried
  ``status_max_retries`` times, then dead-lettered with the reason; the batch's others go on.
- An inbound ``STOP`` adds the sender's number to the opt-out list.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from dmd_tasks.celery_app.base import DmdTask, task
from dmd_tasks.domain.entities import IN_FLIGHT_STATUSES, TERMINAL_STATUSES, NotificationStatus
from dmd_tasks.domain.ids import notification_id, split_notification_id
from dmd_tasks.domain.phones import try_normalize
from dmd_tasks.domain.provider_events import InboundEvent, ProviderEvent, StatusEvent, parse_event
from dmd_tasks.domain.providers import capabilities_of
from dmd_tasks.infra import tracing
from dmd_tasks.infra.topology import RECORD_SMS_STATUS
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


def apply_events(services: Services, events: list[ProviderEvent]) -> list[str]:
    """Apply a batch of events; returns each one's outcome, in order. The common case, a final
    status for a ``sent`` notification named by its reference, goes 100 to a request
    (``record_deliveries``); whatever that does not settle takes ``apply_event``'s way."""
    outcomes: list[str | None] = [None] * len(events)
    direct: list[tuple[int, tuple[str, str], StatusEvent]] = []
    for n, event in enumerate(events):
        found = _by_reference(event.reference) if isinstance(event, StatusEvent) else None
        if isinstance(event, StatusEvent) and event.status in DELIVERY_STATUSES and found is not None:
            direct.append((n, found, event))
    applied = services.notifications.record_deliveries(
        [(*found, e.message_id, e.status, e.timestamp) for _, found, e in direct]
    )
    moved = [(n, found, e) for (n, found, e), ok in zip(direct, applied, strict=True) if ok]
    if moved and tracing.enabled():  # the sender's trace, continued by each receipt
        traces = services.notifications.traceparents([found for _, found, _ in moved])
        for _, found, e in moved:
            _receipt_span(traces.get(found), found, e.status)
    for n, _, e in moved:
        outcomes[n] = e.status
    tried = {n for n, _, _ in direct}
    return [
        outcome if outcome is not None else apply_event(services, events[n], sent_tried=n in tried)
        for n, outcome in enumerate(outcomes)
    ]


def _receipt_span(traceparent: str | None, found: tuple[str, str], status: str) -> None:
    """The receipt closes the notification's life: a span continuing the sender's trace."""
    with tracing.continued(
        "delivery receipt", traceparent, **{"dmd.notification_id": notification_id(*found), "dmd.status": status}
    ):
        pass


def apply_event(services: Services, event: ProviderEvent, sent_tried: bool = False) -> str:
    """Apply one event; returns the outcome ("unresolved" means: try again later). ``sent_tried``:
    the move from ``sent`` was just tried for it (``apply_events``) and failed."""
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
    updated = (
        None
        if sent_tried
        else notifications.record_delivery(sale_id, fan_id, event.message_id, event.status, event.timestamp)
    )
    current = None if updated is not None else notifications.status_of(sale_id, fan_id)
    if updated is None and event.reference and _unanswered(current, event):
        updated = notifications.record_unconfirmed_delivery(
            sale_id, fan_id, event.message_id, event.status, event.timestamp
        )
    if updated is not None:
        _receipt_span(updated.get("traceparent"), found, event.status)
        return event.status
    if current in TERMINAL_STATUSES:
        return "duplicate"
    if current in IN_FLIGHT_STATUSES:
        return "early"  # our own write has not happened yet
    return "unresolved"


@task(RECORD_SMS_STATUS)
def record_sms_status(self: DmdTask, events: list[dict[str, Any]], waits: int = 0, misses: int = 0) -> dict[str, int]:
    """Apply a batch of provider events (see the module docstring); the ones that cannot apply yet
    go again, in a task of their own (``waits``: how many times they went again; ``misses``: how
    many of those times some matched no notification in flight)."""
    services = get_services()
    settings = services.settings
    outcomes: Counter[str] = Counter()
    early: list[dict[str, Any]] = []
    unresolved: list[dict[str, Any]] = []
    parsed: list[tuple[dict[str, Any], ProviderEvent]] = []
    for raw in events if isinstance(events, list) else []:
        try:
            parsed.append((raw, parse_event(raw)))
        except ValueError as exc:
            outcomes["invalid"] += 1
            log.warning("ignored an invalid provider event: %s", exc)
    for (raw, _), outcome in zip(parsed, apply_events(services, [e for _, e in parsed]), strict=True):
        outcomes[outcome] += 1
        if outcome == "early":
            early.append(raw)
        elif outcome == "unresolved":
            unresolved.append(raw)
    if unresolved and misses >= settings.status_max_retries:
        reason = (
            f"{len(unresolved)} receipts matched no notification in flight or sent with their "
            f"message id, {misses + 1} times"
        )
        self.dead_letter(reason, [unresolved], {})
        log.warning("dead-lettered %s", reason)
        outcomes["dead-lettered"] += len(unresolved)
        unresolved = []
    # Each goes again in a task of its own (not a retry): an early receipt's wait is bounded by its
    # notification's life, not by this task's max_retries (they stay for the dependencies' failures).
    countdown = min(2 ** min(waits, 5), 30, settings.max_countdown_seconds)
    for again, tried in ((early, 0), (unresolved, misses + 1)):
        if again:
            record_sms_status.apply_async(
                args=(again,), kwargs={"waits": waits + 1, "misses": tried}, countdown=countdown
            )
    if early or unresolved:
        log.info(
            "%d receipts wait for their notification's sent write, %d match none yet: again in %ds",
            len(early),
            len(unresolved),
            countdown,
        )
    return dict(outcomes)
