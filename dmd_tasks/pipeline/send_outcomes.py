"""What a send that the provider did not accept means for its notification (stage 4, after
``send_step``): ``unconfirmed``, ``failed``, or ``scheduled`` again with or without spending an
attempt; every write fenced by the lease token."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from dmd_tasks.domain.entities import NotificationStatus
from dmd_tasks.domain.errors import (
    NotAttempted,
    OutcomeUnknown,
    PermanentError,
    TransientError,
)
from dmd_tasks.domain.outcomes import SendOutcome
from dmd_tasks.infra.dependencies import describe
from dmd_tasks.infra.failover import ProviderRoute
from dmd_tasks.infra.logs import mask_phone
from dmd_tasks.pipeline.sent_records import SentRecords
from dmd_tasks.services import Services
from dmd_tasks.store.notifications import Back

log = logging.getLogger(__name__)

SENDING = NotificationStatus.SENDING.value


class Expired(PermanentError):
    """The notification's validity ended before it could be sent."""


@dataclass
class Owned:
    """The notification this worker owns, as its claim returned it."""

    notification_id: str
    sale_id: str
    fan_id: str
    item: dict[str, Any]

    @property
    def token(self) -> str | None:
        token = self.item.get("leaseToken")
        return str(token) if token is not None else None

    @property
    def attempts(self) -> int:
        return int(self.item.get("attempts", 0))


def retry_delay(attempts: int, base_seconds: float, cap_seconds: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, at least the provider's Retry-After, at most the cap."""
    delay = random.uniform(0, base_seconds * (2 ** max(0, attempts - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap_seconds)


def wait_for_window(services: Services, owned: Owned, opens: float) -> str:
    if services.notifications.mark_waiting(
        owned.sale_id, owned.fan_id, opens, "quiet hours at send time", lease_token=owned.token
    ):
        log.info("notification %s waits for its fan's send window (quiet hours)", owned.notification_id)
    return SendOutcome.QUIET_HOURS


def unknown_outcome(
    services: Services,
    owned: Owned,
    route: ProviderRoute,
    exc: OutcomeUnknown,
    again: list[tuple[str, float]] | None,
) -> str:
    settings = services.settings
    if route.provider.capabilities.idempotent:
        # Sent again, with the same key, through this provider only: elsewhere it could be a
        # second SMS. Spends an attempt unless the provider is failing most calls.
        return retry(services, owned, exc, spend=not exc.providers_fault, pin=route.name, again=again)
    # The SMS may be on its way and the provider cannot deduplicate: never sent again. It
    # waits for the provider's event (matched by the notification id in the request).
    until = time.time() + settings.unconfirmed_window_seconds
    services.notifications.mark_unconfirmed(owned.sale_id, owned.fan_id, until, str(exc), lease_token=owned.token)
    log.warning(
        "notification %s to %s unconfirmed (%s): waiting up to %.0fs for the provider's event",
        owned.notification_id,
        mask_phone(owned.item["phone"]),
        exc,
        settings.unconfirmed_window_seconds,
    )
    return SendOutcome.UNCONFIRMED


def failed(services: Services, owned: Owned, exc: Exception) -> str:
    spent = 0 if isinstance(exc, Expired) else 1  # an expired notification was not tried again
    services.notifications.mark_failed(
        owned.sale_id,
        owned.fan_id,
        str(exc),
        source=SENDING,
        attempts=owned.attempts + spent,
        lease_token=owned.token,
    )
    log.warning("notification %s to %s failed: %s", owned.notification_id, mask_phone(owned.item["phone"]), exc)
    return SendOutcome.FAILED


def not_attempted(
    services: Services,
    owned: Owned,
    exc: BaseException,
    again: list[tuple[str, float]] | None,
    records: SentRecords | None = None,
) -> str:
    """Nothing reached the provider, or the provider was throttling or down (the circuit): back to
    scheduled without spending an attempt (with the batch's others through ``records``, else at
    once), added to ``again`` once written."""
    settings = services.settings
    delay = retry_delay(
        1,
        settings.send_retry_base_seconds,
        settings.max_countdown_seconds,
        getattr(exc, "retry_after_seconds", None),
    )
    reason = str(exc) if isinstance(exc, NotAttempted) else describe(exc)
    due = time.time() + delay
    if records is not None:
        records.back(Back(owned.sale_id, owned.fan_id, owned.attempts, due, reason, owned.token), again)
    elif (
        services.notifications.mark_retry(
            owned.sale_id, owned.fan_id, owned.attempts, due, reason, lease_token=owned.token
        )
        and again is not None
    ):
        again.append((owned.notification_id, due))
    log.info("notification %s not sent (%s); again in %.1fs", owned.notification_id, reason, delay)
    return SendOutcome.NOT_ATTEMPTED


def retry(
    services: Services,
    owned: Owned,
    exc: TransientError,
    *,
    spend: bool,
    pin: str | None,
    again: list[tuple[str, float]] | None,
) -> str:
    """A failed call: back to ``scheduled`` with a backoff (``pin``: through that provider only;
    added to ``again``), or ``failed`` when it was the last attempt."""
    settings, notifications = services.settings, services.notifications
    attempts = owned.attempts + (1 if spend else 0)
    if attempts >= settings.max_send_attempts:
        notifications.mark_failed(
            owned.sale_id,
            owned.fan_id,
            f"gave up after {attempts} attempts: {exc}",
            source=SENDING,
            attempts=attempts,
            lease_token=owned.token,
        )
        log.warning(
            "notification %s to %s failed after %d attempts: %s",
            owned.notification_id,
            mask_phone(owned.item["phone"]),
            attempts,
            exc,
        )
        return SendOutcome.FAILED
    delay = retry_delay(
        max(1, attempts), settings.send_retry_base_seconds, settings.max_countdown_seconds, exc.retry_after_seconds
    )
    due = time.time() + delay
    if notifications.mark_retry(
        owned.sale_id, owned.fan_id, attempts, due, str(exc), lease_token=owned.token, pin=pin
    ) and (again is not None):
        again.append((owned.notification_id, due))
    log.info("notification %s: attempt %d failed (%s); retry in %.1fs", owned.notification_id, attempts, exc, delay)
    return SendOutcome.RETRY
