"""One send of stage 4, for a notification this worker owns (``sending`` under its lease):
check → call → record.

- **check** (``send_check``; for a batch's sends, done by its plan, ``send_plan``): the
  campaign, the fan's opt-out, the validity, the send window, the rendered message and its SMS
  parts;
- **call** (``_permit``, ``_call_provider``): the provider's circuit, the rate limits (the
  batch's reservation, or one of its own), the lease and the batch's time left, the record that
  a call starts (a provider without idempotency, or two providers), then the call, its outcome
  told to the circuit;
- **record**: ``sent`` (with the batch's others, ``SentRecords``), or what the failure means:
  ``unconfirmed`` (an unknown outcome at a provider without idempotency), ``failed`` (a
  permanent error, the last attempt), ``scheduled`` again with or without spending an attempt.

Every write is fenced by the lease token (see ``stage4_send``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dmd_tasks.domain.errors import (
    InvalidTemplate,
    NotAttempted,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    TransientError,
)
from dmd_tasks.domain.ids import split_notification_id
from dmd_tasks.domain.outcomes import SendOutcome
from dmd_tasks.infra import tracing
from dmd_tasks.infra.circuit import Permit, ProviderPaused
from dmd_tasks.infra.deadline import Deadline
from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS
from dmd_tasks.infra.failover import ProviderRoute
from dmd_tasks.infra.metrics import SEND_LATENCY
from dmd_tasks.infra.settings import Settings
from dmd_tasks.pipeline.send_check import Message, QuietHours, check_message
from dmd_tasks.pipeline.send_outcomes import (
    Owned,
    failed,
    not_attempted,
    retry,
    unknown_outcome,
    wait_for_window,
)
from dmd_tasks.pipeline.send_plan import Planned
from dmd_tasks.pipeline.sent_records import SentRecords
from dmd_tasks.services import Services
from dmd_tasks.store.notifications import Sent

log = logging.getLogger(__name__)

_OUT_OF_TIME = "send batch out of time before the provider call"

#: Failures before anything reached the provider: no attempt is spent on them.
_NOT_ATTEMPTED: tuple[type[BaseException], ...] = (NotAttempted, *DEPENDENCY_ERRORS)


def send_claimed(
    services: Services,
    notification_id: str,
    item: dict[str, Any],
    opted_out: set[str],
    traceparent: str | None = None,
    deadline: Deadline | None = None,
    again: list[tuple[str, float]] | None = None,
    records: SentRecords | None = None,
    planned: Planned | None = None,
) -> str:
    """Send one notification this worker owns, in its own trace; returns what happened. Past
    ``deadline`` (the batch's work budget) no call is begun: it goes back to ``scheduled``. One
    that goes back to ``scheduled`` is added to ``again`` with when it is due (the caller
    publishes its send task: ``chain.publish_due``). A send the provider accepted is recorded
    through ``records`` (written with the batch's others), or at once without it. ``planned``:
    what the batch's plan did for it (checked its message, reserved its slot)."""
    with tracing.continued("send notification", traceparent, **{"dmd.notification_id": notification_id}) as span:
        sale_id, fan_id = split_notification_id(notification_id)
        owned = Owned(notification_id, sale_id, fan_id, item)
        outcome = _send_claimed(services, owned, opted_out, deadline, again, records, planned)
        span.set_attribute("dmd.outcome", outcome)
        return outcome


def _send_claimed(
    services: Services,
    owned: Owned,
    opted_out: set[str],
    deadline: Deadline | None,
    again: list[tuple[str, float]] | None,
    records: SentRecords | None,
    planned: Planned | None,
) -> str:
    route = planned.route if planned is not None else services.sms_router.choose(owned.item.get("pinnedProvider"))
    try:
        try:
            message = planned.checked() if planned is not None else check_message(services, owned, opted_out)
        except QuietHours as closed:  # its write fails as the others do (below)
            return wait_for_window(services, owned, closed.opens)
        route, permit = _permit(services, owned, route, message, deadline, planned)
        validity = float(owned.item["expiresAt"]) - time.time() if owned.item.get("expiresAt") is not None else None
        message_id = _call_provider(route, permit, owned, message.body, validity, services.settings)
    except OutcomeUnknown as exc:
        return unknown_outcome(services, owned, route, exc, again)
    except (PermanentError, InvalidTemplate) as exc:
        return failed(services, owned, exc)
    except _NOT_ATTEMPTED as exc:
        return not_attempted(services, owned, exc, again, records)
    except TransientError as exc:
        return retry(services, owned, exc, spend=True, pin=None, again=again)
    sent = Sent(
        owned.sale_id,
        owned.fan_id,
        message_id,
        time.time(),
        owned.token,
        traceparent=tracing.current_traceparent(),
        parts=message.parts,
        encoding=message.encoding,
        account=route.circuit.provider,
        due=float(owned.item["sendAfter"]) if "sendAfter" in owned.item else None,
    )
    own = records or SentRecords(services.notifications)
    own.add(sent, route.provider.capabilities.idempotent)
    if records is None:  # on its own: written now
        own.flush()
        return SendOutcome.LEASE_LOST if own.lost else SendOutcome.SENT
    return SendOutcome.SENT


# --- call ---------------------------------------------------------------------------------------


def _permit(
    services: Services,
    owned: Owned,
    route: ProviderRoute,
    message: Message,
    deadline: Deadline | None,
    planned: Planned | None,
) -> tuple[ProviderRoute, Permit]:
    """Leave to call now: the route's circuit (the other provider's while this one is paused and
    the weights have not caught up), the rate limits, the lease and the batch's time left, and
    the record that the call starts where that is needed. Raises NotAttempted (or a dependency's
    error) when no call may be made; nothing is then held. Under the batch's permit, with a
    slot the batch reserved, the circuit is checked with the account's second, at the slot."""
    settings, rate = services.settings, message.campaign.rate_per_second
    # no wait for a slot past the batch's time: a slot that would come after it is not taken
    wait = (
        settings.send_rate_wait_seconds
        if deadline is None
        else min(settings.send_rate_wait_seconds, deadline.remaining)
    )
    if wait <= 0:
        raise NotAttempted(_OUT_OF_TIME)
    book, permit = (planned.book, planned.permit) if planned is not None else (None, None)
    if book is None or permit is None:  # not covered by the batch's plan: the circuit asked, a slot of its own
        book = None
        route, permit = _circuit(services, owned, route)
    try:
        if book is None:
            route.throttle.acquire(owned.sale_id, rate, message.parts, timeout_seconds=wait)
        else:
            until = time.monotonic() + wait
            slot = book.slot(planned.index if planned is not None else 0, wait)
            route.throttle.go(slot, message.parts, until, gate=route.circuit.gate_keys)
        if time.time() + settings.sms_timeout_seconds >= float(owned.item.get("leaseUntil", 0)):
            # The provider call could outlive our lease (this process was paused): give it back.
            raise NotAttempted("send lease nearly over before the provider call")
        if deadline is not None and deadline.passed:
            # A slow dependency held the batch up: the rest goes back, the next batch sends it.
            raise NotAttempted(_OUT_OF_TIME)
        provider = route.provider.capabilities
        if (not provider.idempotent or len(services.sms_router.routes) > 1) and not services.notifications.mark_calling(
            owned.sale_id, owned.fan_id, provider.name, time.time(), owned.token
        ):
            # The record that the call started (and where) comes first: without idempotency a
            # send that dies after it is never repeated; with two providers it is repeated at
            # this one only. Not written: the lease is lost; no call.
            raise NotAttempted("send lease lost before the provider call")
    except BaseException:
        route.circuit.release(permit)  # no call made: a probe's turn goes to another sender
        raise
    return route, permit


def _circuit(services: Services, owned: Owned, route: ProviderRoute) -> tuple[ProviderRoute, Permit]:
    """The route's leave to call (the other provider's while this one is paused and the weights
    have not caught up); ProviderPaused while the provider throttles or is down."""
    try:
        return route, route.circuit.before_call()
    except ProviderPaused:
        pinned = owned.item.get("pinnedProvider")
        routes = services.sms_router.routes.values()
        other = None if pinned else next((r for r in routes if r is not route), None)
        if other is None:
            raise
        return other, other.circuit.before_call()


def _call_provider(
    route: ProviderRoute,
    permit: Permit,
    owned: Owned,
    body: str,
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
                owned.item["phone"], body, notification_id=owned.notification_id, validity_seconds=validity_seconds
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
