"""Stage 4: send each scheduled notification as one SMS, exactly once.

Trigger: the stage that moved notifications into ``scheduled`` (the scheduler's tick, a send
going back for a retry, the reconciler) publishes their task here, in batches of
``send_batch_size`` notification ids (``chain.py``; a retry carries SQS DelaySeconds until its
``notBefore``).

Per notification:

1. ``scheduled → sending`` with a conditional write and a lease: only one worker owns it;
   a repeated message finds it no longer ``scheduled`` and does nothing.
2. Render the campaign template with the safe renderer (no access to Python objects).
3. Wait for a slot of the rate limit shared by every send worker (Redis), since Celery's
   ``rate_limit`` is per worker only.
4. Call the SMS provider (``dmd_tasks.clients.providers``) with the notification id: the
   idempotency key of a provider that has one, ``Context`` of one that has none. Before a
   call to a provider without idempotency, the lease holder records that the call started
   (``callStartedAt``); a call whose outcome is unknown (no answer) moves the notification to
   ``unconfirmed``: it waits for the provider's event and is never sent again.
5. ``sending → sent`` with the provider's message id. Retryable failures (429, 5xx,
   timeouts) go back to ``scheduled`` with ``attempts + 1`` and a backoff (or the
   provider's ``Retry-After``); permanent failures and the last attempt end ``failed``
   with the reason.

A batch's claims (1) go out together, and so do its sends (2-5), on the process's AWS
thread pool: a batch waits about one provider round trip, not ten, while the shared rate
limit still spaces the calls.

The claim's lease carries a token, and every later write of the send (``sent``, retry,
``failed``) is conditional on it: a worker that overran its lease writes nothing. A worker
that dies between 4 and 5 leaves the notification in ``sending``; when the lease expires
the reconciler (``stage6_reconcile``) takes it back and it is re-sent with the same
idempotency key, so the provider does not send a second SMS; with a provider without
idempotency, a call that had started makes it ``unconfirmed`` instead (at most once). A send that never reached
the provider (no rate-limit slot in time, Redis or AWS down) goes back to ``scheduled``
without spending an attempt.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import wait as futures_wait
from typing import Any

from cachetools import TTLCache
from celery import Task

from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.entities import NotificationStatus
from dmd_tasks.domain.errors import (
    InvalidTemplate,
    NotAttempted,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    TransientError,
)
from dmd_tasks.domain.ids import split_notification_id
from dmd_tasks.domain.segments import measure
from dmd_tasks.domain.templates import render
from dmd_tasks.domain.urls import check_allowed_url
from dmd_tasks.infra import aws, tracing
from dmd_tasks.infra.circuit import Permit, ProviderPaused
from dmd_tasks.infra.deadline import Deadline
from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS, describe
from dmd_tasks.infra.failover import ProviderRoute
from dmd_tasks.infra.logs import mask_phone
from dmd_tasks.infra.metrics import SEND_LATENCY
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.topology import SEND_NOTIFICATIONS
from dmd_tasks.pipeline.chain import publish_due
from dmd_tasks.pipeline.sent_records import SentRecords
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.keys import fan_of, sale_of
from dmd_tasks.store.notifications import Sent

log = logging.getLogger(__name__)

SENDING = NotificationStatus.SENDING.value
#: Failures before anything reached the provider: no attempt is spent on them.
_NOT_ATTEMPTED: tuple[type[BaseException], ...] = (NotAttempted, *DEPENDENCY_ERRORS)

#: Campaigns and short URLs change rarely during a sale; a send batch should not re-read them.
#: (A batch's sends run on several threads: the caches are used under a lock.)
_campaigns: TTLCache[str, Campaign | None] = TTLCache(maxsize=256, ttl=30)
_events: TTLCache[str, tuple[str, str]] = TTLCache(maxsize=256, ttl=30)
_cache_lock = threading.Lock()


def _campaign(services: Services, sale_id: str) -> Campaign | None:
    with _cache_lock:
        if sale_id not in _campaigns:
            _campaigns[sale_id] = services.campaigns.get(sale_id)
        return _campaigns[sale_id]


def _event_values(services: Services, event_id: str) -> tuple[str, str]:
    """(event name, short URL) of an event; without a short URL, the long one if it passes the
    URL policy (``check_allowed_url``: DisallowedUrl, a PermanentError, otherwise)."""
    with _cache_lock:
        if event_id not in _events:
            event = services.events.get(event_id)
            if event is None:
                raise PermanentError(f"event {event_id} not found")
            link = event.short_url or check_allowed_url(event.url, services.settings.shorten_allowed_hosts)
            _events[event_id] = (event.name, link)
        return _events[event_id]


def retry_delay(attempts: int, base_seconds: float, cap_seconds: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, at least the provider's Retry-After, at most the cap."""
    delay = random.uniform(0, base_seconds * (2 ** max(0, attempts - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap_seconds)


def claim_batch(services: Services, notification_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``scheduled → sending`` for each id, 100 claims to a request (each conditional on its own
    status: only one worker wins a notification); returns the ones this worker now owns."""
    ids = [split_notification_id(nid) for nid in dict.fromkeys(notification_ids)]
    items = services.notifications.claim_many(ids, time.time(), services.settings.send_lease_seconds)
    return [(f"{sale_of(i['pk'])}:{fan_of(i['sk'])}", i) for i in items]


def send_claimed(
    services: Services,
    notification_id: str,
    item: dict[str, Any],
    opted_out: set[str],
    traceparent: str | None = None,
    deadline: Deadline | None = None,
    again: list[tuple[str, float]] | None = None,
    records: SentRecords | None = None,
) -> str:
    """Send one notification this worker owns, in its own trace; returns what happened. Past
    ``deadline`` (the batch's work budget) no call is begun: it goes back to ``scheduled``. One
    that goes back to ``scheduled`` is added to ``again`` with when it is due (the caller
    publishes its send task: ``chain.publish_due``). A send the provider accepted is recorded
    through ``records`` (written with the batch's others), or at once without it."""
    with tracing.continued("send notification", traceparent, **{"dmd.notification_id": notification_id}) as span:
        outcome = _send_claimed(services, notification_id, item, opted_out, deadline, again, records)
        span.set_attribute("dmd.outcome", outcome)
        return outcome


class Expired(PermanentError):
    """The notification's validity ended before it could be sent."""


def _send_claimed(
    services: Services,
    notification_id: str,
    item: dict[str, Any],
    opted_out: set[str],
    deadline: Deadline | None,
    again: list[tuple[str, float]] | None,
    records: SentRecords | None,
) -> str:
    settings = services.settings
    notifications = services.notifications
    sale_id, fan_id = split_notification_id(notification_id)
    attempts = int(item.get("attempts", 0))
    phone = item["phone"]
    token = item.get("leaseToken")
    lease_until = float(item.get("leaseUntil", 0))
    router = services.sms_router
    pinned = item.get("pinnedProvider")
    route = router.choose(pinned)
    circuit, provider = route.circuit, route.provider.capabilities
    try:
        campaign = _campaign(services, sale_id)
        if campaign is None:
            raise PermanentError(f"sale {sale_id} has no campaign")
        if phone in opted_out:
            raise PermanentError("fan opted out (STOP) after the notification was generated")
        now = time.time()
        expires = item.get("expiresAt")
        if expires is not None and now >= float(expires):
            raise Expired(f"expired: not sent within its validity ({campaign.validity_seconds}s from its first chance)")
        opens = campaign.window.next_open_ts(now, item.get("timezone"))
        if opens > now:
            # Quiet hours came first (a retry, a backlog, a pause that ran late): wait for the next opening.
            if notifications.mark_waiting(sale_id, fan_id, opens, "quiet hours at send time", lease_token=token):
                log.info("notification %s waits for its fan's send window (quiet hours)", notification_id)
            return "quiet-hours"
        event_name, short_url = _event_values(services, item["eventId"])
        body = render(
            campaign.template, {"event_name": event_name, "short_url": short_url, "sale_id": sale_id, "fan_id": fan_id}
        )
        segments = measure(body)
        if segments.parts > settings.max_message_parts:
            raise PermanentError(
                f"message takes {segments.parts} SMS parts ({segments.encoding}), more than the "
                f"{settings.max_message_parts} allowed"
            )
        try:
            permit = circuit.before_call()  # ProviderPaused while the provider throttles or is down
        except ProviderPaused:
            other = None if pinned else next((r for r in router.routes.values() if r is not route), None)
            if other is None:
                raise
            # this provider is paused and the weights have not caught up yet: the other one
            route, circuit, provider = other, other.circuit, other.provider.capabilities
            permit = circuit.before_call()
        try:
            route.throttle.acquire(
                sale_id, campaign.rate_per_second, segments.parts, timeout_seconds=settings.send_rate_wait_seconds
            )
            if time.time() + settings.sms_timeout_seconds >= lease_until:
                # The provider call could outlive our lease (this process was paused): give it back.
                raise NotAttempted("send lease nearly over before the provider call")
            if deadline is not None and deadline.passed:
                # A slow dependency held the batch up: the rest goes back, the next batch sends it.
                raise NotAttempted("send batch out of time before the provider call")
            if (not provider.idempotent or len(router.routes) > 1) and not notifications.mark_calling(
                sale_id, fan_id, provider.name, time.time(), token
            ):
                # The record that the call started (and where) comes first: without idempotency a
                # send that dies after it is never repeated; with two providers it is repeated at
                # this one only. Not written: the lease is lost; no call.
                raise NotAttempted("send lease lost before the provider call")
        except BaseException:
            circuit.release(permit)  # no call made: a probe's turn goes to another sender
            raise
        validity = float(expires) - time.time() if expires is not None else None
        message_id = _call_provider(route, permit, phone, body, notification_id, validity, settings)
    except OutcomeUnknown as exc:
        if provider.idempotent:
            # Sent again, with the same key, through this provider only: elsewhere it could be a
            # second SMS. Spends an attempt unless the provider is failing most calls.
            return _retry(
                services, notification_id, item, exc, spend=not exc.providers_fault, pin=route.name, again=again
            )
        # The SMS may be on its way and the provider cannot deduplicate: never sent again. It
        # waits for the provider's event (matched by the notification id in the request).
        until = time.time() + settings.unconfirmed_window_seconds
        notifications.mark_unconfirmed(sale_id, fan_id, until, str(exc), lease_token=token)
        log.warning(
            "notification %s to %s unconfirmed (%s): waiting up to %.0fs for the provider's event",
            notification_id,
            mask_phone(phone),
            exc,
            settings.unconfirmed_window_seconds,
        )
        return "unconfirmed"
    except (PermanentError, InvalidTemplate) as exc:
        spent = 0 if isinstance(exc, Expired) else 1  # an expired notification was not tried again
        notifications.mark_failed(
            sale_id, fan_id, str(exc), source=SENDING, attempts=attempts + spent, lease_token=token
        )
        log.warning("notification %s to %s failed: %s", notification_id, mask_phone(phone), exc)
        return "failed"
    except _NOT_ATTEMPTED as exc:
        # Nothing reached the provider, or the provider was throttling or down (the circuit): back to
        # scheduled without spending an attempt.
        delay = retry_delay(
            1,
            settings.send_retry_base_seconds,
            settings.max_countdown_seconds,
            getattr(exc, "retry_after_seconds", None),
        )
        reason = str(exc) if isinstance(exc, NotAttempted) else describe(exc)
        due = time.time() + delay
        if notifications.mark_retry(sale_id, fan_id, attempts, due, reason, lease_token=token) and again is not None:
            again.append((notification_id, due))
        log.info("notification %s not sent (%s); again in %.1fs", notification_id, reason, delay)
        return "not-attempted"
    except TransientError as exc:
        return _retry(services, notification_id, item, exc, spend=True, pin=None, again=again)
    sent = Sent(
        sale_id,
        fan_id,
        message_id,
        time.time(),
        token,
        traceparent=tracing.current_traceparent(),
        parts=segments.parts,
        encoding=segments.encoding,
    )
    own = records or SentRecords(notifications)
    own.add(sent, provider.idempotent)
    if records is None:  # on its own: written now
        own.flush()
        return "lease-lost" if own.lost else "sent"
    return "sent"


def _retry(
    services: Services,
    notification_id: str,
    item: dict[str, Any],
    exc: TransientError,
    *,
    spend: bool,
    pin: str | None,
    again: list[tuple[str, float]] | None,
) -> str:
    """A failed call: back to ``scheduled`` with a backoff (``pin``: through that provider only;
    added to ``again``), or ``failed`` when it was the last attempt."""
    settings, notifications = services.settings, services.notifications
    sale_id, fan_id = split_notification_id(notification_id)
    token = item.get("leaseToken")
    attempts = int(item.get("attempts", 0)) + (1 if spend else 0)
    if attempts >= settings.max_send_attempts:
        notifications.mark_failed(
            sale_id,
            fan_id,
            f"gave up after {attempts} attempts: {exc}",
            source=SENDING,
            attempts=attempts,
            lease_token=token,
        )
        log.warning(
            "notification %s to %s failed after %d attempts: %s",
            notification_id,
            mask_phone(item["phone"]),
            attempts,
            exc,
        )
        return "failed"
    delay = retry_delay(
        max(1, attempts), settings.send_retry_base_seconds, settings.max_countdown_seconds, exc.retry_after_seconds
    )
    due = time.time() + delay
    if notifications.mark_retry(sale_id, fan_id, attempts, due, str(exc), lease_token=token, pin=pin) and (
        again is not None
    ):
        again.append((notification_id, due))
    log.info("notification %s: attempt %d failed (%s); retry in %.1fs", notification_id, attempts, exc, delay)
    return "retry"


def _call_provider(
    route: ProviderRoute,
    permit: Permit,
    phone: str,
    body: str,
    notification_id: str,
    validity_seconds: float | None,
    settings: Settings,
) -> str:
    """One provider call, its outcome told to the circuit. A 429, or a failure during an outage,
    raises NotAttempted (no attempt spent); a failure while the provider answers most calls
    well is this message's (TransientError: an attempt). An unknown outcome is never turned into
    a plain retry, whatever the circuit says (the caller pins it, or waits for an event)."""
    circuit = route.circuit
    try:
        with SEND_LATENCY.labels("sms").time():
            message_id = route.provider.send(
                phone, body, notification_id=notification_id, validity_seconds=validity_seconds
            )
    except OutcomeUnknown as exc:
        exc.providers_fault = circuit.failed(permit)
        raise
    except RateLimited as exc:
        pause = circuit.throttled(permit, exc.retry_after_seconds)
        raise ProviderPaused(
            f"provider throttled (429): every sender paused {pause:g}s", retry_after_seconds=pause
        ) from exc
    except TransientError as exc:
        if circuit.failed(permit):
            raise ProviderPaused(
                f"{exc} (provider failing most calls: no attempt spent)",
                retry_after_seconds=settings.circuit_open_seconds,
            ) from exc
        raise
    except PermanentError:
        circuit.succeeded(permit)  # the provider answered: this message was refused on its own merits
        raise
    circuit.succeeded(permit)
    return message_id


@task(SEND_NOTIFICATIONS, max_retries=3)
def send_notifications(
    self: Task,
    notification_ids: list[str],
    trace_context: dict[str, str] | None = None,
) -> dict[str, int]:
    """Send a batch of scheduled notifications (see the module docstring).

    Each notification's outcome is its own; one bad id never sinks the rest. Errors outside
    a single send (the store unreachable) are retried by Celery; every step is idempotent.
    """
    services = get_services()
    deadline = Deadline.after(services.settings.work_budget_seconds)
    outcomes: Counter[str] = Counter()
    valid: list[str] = []
    for nid in notification_ids if isinstance(notification_ids, list) else []:
        try:
            split_notification_id(nid)
            valid.append(nid)
        except ValueError:
            outcomes["invalid-id"] += 1
            log.warning("send batch carried an invalid notification id")
    owned = claim_batch(services, valid)
    outcomes["skipped"] += len(valid) - len(owned)  # not scheduled any more: sent, failed, or owned elsewhere
    opted_out = services.demand.opted_out([item["phone"] for _, item in owned]) if owned else set()
    traces = trace_context if isinstance(trace_context, dict) else {}
    # The sends are independent and mostly wait on the provider: they go out together (the
    # shared rate limit still spaces them), each in a copy of this task's context (its
    # correlation id in the logs).
    pool = aws.io_pool(services.settings)
    again: list[tuple[str, float]] = []  # back to scheduled: their send tasks are published below
    records = SentRecords(services.notifications)  # what the provider accepted: written together
    futures = [
        pool.submit(
            contextvars.copy_context().run,
            send_claimed,
            services,
            nid,
            item,
            opted_out,
            traces.get(nid),
            deadline,
            again,
            records,
        )
        for nid, item in owned
    ]
    while futures_wait(futures, timeout=0.1).not_done:
        records.flush(due_only=True)  # no send finished for a while: what waits is written anyway
    first_error: BaseException | None = None
    for future in futures:
        try:
            outcomes[future.result()] += 1
        except Exception as exc:  # a dependency failed after the claim: the lease expires, the reconciler resends
            outcomes["error"] += 1
            first_error = first_error or exc
    records.flush()
    if owned:  # provider calls were made: their receipts are on their way to the status stream
        services.status_doorbell.ring()
    if records.lost:  # their write found the lease gone: counted as sent above, lost in fact
        outcomes["sent"] -= records.lost
        outcomes["lease-lost"] += records.lost
    # those that went back to scheduled (a not-attempted send, a retry): their tasks, each held
    # back until it is due (a publish lost here is the reconciler's, as a stale scheduled one)
    publish_due(self.app, services.settings, again)
    if first_error is not None:
        log.warning("send batch: %s", dict(outcomes))
        raise first_error
    return dict(outcomes)
