"""Stage 1: give an event its short URL (Bitly), once.

Trigger: the demand-stream bridge, for every new demand row (de-duplicated by event id
per batch), on the ``short-url`` queue.

Idempotency: an event that already has ``shortUrl`` is skipped before any call; a
per-event Redis lock keeps two workers from calling Bitly for the same event at once;
the write is conditional (``attribute_not_exists(shortUrl)``), so a repeated message
never changes a stored link.

Retries: timeouts, 429 (after its ``Retry-After``) and 5xx are retried with backoff and
jitter, ``shorten_max_retries`` times (2); then, or at
once for a permanent error, the message goes to the queue's dead-letter queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import StrEnum

import redis
from celery import Task

from dmd_tasks.celery_app.base import task
from dmd_tasks.clients.bitly import Shortener
from dmd_tasks.domain.entities import ShortenRequest
from dmd_tasks.domain.errors import PermanentError, TransientError
from dmd_tasks.domain.urls import check_allowed_url
from dmd_tasks.infra.topology import SHORTEN_EVENT_URL
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.events import EventRecords

log = logging.getLogger(__name__)


class ShortenOutcome(StrEnum):
    SHORTENED = "shortened"
    ALREADY_SHORTENED = "already-shortened"
    STORED_BY_ANOTHER = "stored-by-another"


class EventNotFound(TransientError):
    """The demand row arrived before its event row (or the event is gone); retried, then dead-lettered."""


def shorten_event(
    event_id: str,
    *,
    events: EventRecords,
    shortener: Shortener,
    redis_client: redis.Redis,
    allowed_hosts: Iterable[str],
    lock_seconds: int,
) -> ShortenOutcome:
    """Ensure the event has a short URL; call the shortener at most once across all workers."""
    event = events.get(event_id)
    if event is None:
        raise EventNotFound(f"event {event_id} not found")
    if event.short_url:
        return ShortenOutcome.ALREADY_SHORTENED
    long_url = check_allowed_url(event.url, allowed_hosts)

    # Another worker shortening the same event finishes within one Bitly call: wait for it.
    lock = redis_client.lock(f"dmd:lock:shorten:{event_id}", timeout=lock_seconds, blocking_timeout=lock_seconds)
    if not lock.acquire():
        raise TransientError(f"event {event_id} is being shortened by another worker", retry_after_seconds=1)
    try:
        # Another worker may have finished between our read and the lock.
        event = events.get(event_id)
        if event is not None and event.short_url:
            return ShortenOutcome.ALREADY_SHORTENED
        short_url = shortener.shorten(long_url)
        stored = events.set_short_url(event_id, short_url)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("shorten lock of event %s expired before release", event_id)
    if not stored:
        return ShortenOutcome.STORED_BY_ANOTHER
    return ShortenOutcome.SHORTENED


def shorten_with(services: Services, event_id: str) -> ShortenOutcome:
    """``shorten_event`` with this process's clients and settings."""
    return shorten_event(
        event_id,
        events=services.events,
        shortener=services.shortener,
        redis_client=services.redis,
        allowed_hosts=services.settings.shorten_allowed_hosts,
        lock_seconds=services.settings.shorten_lock_seconds,
    )


@task(SHORTEN_EVENT_URL)
def shorten_event_url(self: Task, event_id: str) -> str:
    """Give one event its short URL (see the module docstring for trigger, idempotency, retries)."""
    try:
        request = ShortenRequest(event_id=event_id)
    except ValueError as exc:
        raise PermanentError(f"invalid shorten request: {exc}") from exc
    outcome = shorten_with(get_services(), request.event_id)
    log.info("event %s: %s", request.event_id, outcome.value)
    return outcome.value
