"""Event details, for the GraphQL API and the ``query`` queue.

Event details (TM Discovery) are cached in Redis for ``event_cache_ttl_seconds`` (24 h).
Concurrent misses for one id make a single upstream call (a Redis lock; the others wait
for the cache). When Discovery fails or the shared 5-per-second budget is spent, the
last good copy is served, marked ``stale``. A 404 is remembered briefly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import redis

from dmd_tasks.api.errors import NotFound, Unavailable, check_argument_id
from dmd_tasks.clients.discovery import DiscoveryClient, EventNotFound
from dmd_tasks.domain.errors import DmdError
from dmd_tasks.infra.metrics import CACHE_REQUESTS
from dmd_tasks.infra.ratelimit import SharedRateLimiter
from dmd_tasks.infra.settings import Settings
from dmd_tasks.services import get_services

log = logging.getLogger(__name__)


def cache_keys(event_id: str) -> tuple[str, str, str, str]:
    """Redis keys of an event's details: (fresh copy, stale copy, remembered 404, fetch lock)."""
    return (
        f"dmd:event:{event_id}",
        f"dmd:event-stale:{event_id}",
        f"dmd:event-missing:{event_id}",
        f"dmd:event-lock:{event_id}",
    )


class EventDetailsService:
    """Cached, single-flight, stale-on-failure event details."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, discovery: DiscoveryClient) -> None:
        self._s = settings
        self._redis = redis_client
        self._discovery = discovery
        self._limiter = SharedRateLimiter(redis_client, "dmd:rate:discovery", window_seconds=1.0)

    def _keys(self, event_id: str) -> tuple[str, str, str, str]:
        return cache_keys(event_id)

    def get(self, event_id: str) -> dict[str, Any]:
        check_argument_id(event_id, "eventId")
        fresh_key, _stale_key, missing_key, lock_key = self._keys(event_id)
        found = self._cached(fresh_key, missing_key, event_id)
        if found is not None:
            CACHE_REQUESTS.labels("event-details", "hit").inc()
            return found
        CACHE_REQUESTS.labels("event-details", "miss").inc()
        lock = self._redis.lock(lock_key, timeout=self._s.discovery_timeout_seconds * 2 + 2, blocking=False)
        if lock.acquire():
            try:
                # Another caller may have filled the cache between our look and the lock.
                found = self._cached(fresh_key, missing_key, event_id)
                return found if found is not None else self._fetch(event_id)
            finally:
                with contextlib.suppress(redis.exceptions.LockError):
                    lock.release()
        return self._wait_for_fetch(event_id)

    def _wait_for_fetch(self, event_id: str) -> dict[str, Any]:
        """Another caller is fetching this id: wait for its result instead of calling again."""
        fresh_key, _stale_key, missing_key, lock_key = self._keys(event_id)
        deadline = time.monotonic() + self._s.discovery_timeout_seconds * 2 + 2
        while time.monotonic() < deadline:
            time.sleep(0.02)
            fetching = self._redis.exists(lock_key)
            # read after looking at the lock: a fetch that ended in between has written its copy
            found = self._cached(fresh_key, missing_key, event_id)
            if found is not None:
                return found
            if not fetching:
                break
        return self._stale_or_fail(event_id, "the concurrent fetch did not produce a copy")

    def _cached(self, fresh_key: str, missing_key: str, event_id: str) -> dict[str, Any] | None:
        raw, missing = self._redis.mget(fresh_key, missing_key)
        if missing:
            raise NotFound(f"event {event_id} not found")
        return {**json.loads(raw), "stale": False} if raw else None

    def _fetch(self, event_id: str) -> dict[str, Any]:
        fresh_key, stale_key, missing_key, _ = self._keys(event_id)
        try:
            # Wait up to a second for a slot of Discovery's rate limit, then fall back.
            self._limiter.acquire(self._s.discovery_rate_per_second, timeout_seconds=1.0)
            details = self._discovery.event(event_id)
        except EventNotFound:
            self._redis.set(missing_key, 1, ex=self._s.event_missing_ttl_seconds)
            raise NotFound(f"event {event_id} not found") from None
        except DmdError as exc:  # timeouts, 5xx, 429, our rate share spent, refused key
            log.warning("event %s: discovery failed (%s); trying the stale copy", event_id, exc)
            return self._stale_or_fail(event_id, str(exc))
        document = {**details.model_dump(), "fetchedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = json.dumps(document)
        pipe = self._redis.pipeline()
        pipe.set(fresh_key, text, ex=self._s.event_cache_ttl_seconds)
        pipe.set(stale_key, text, ex=self._s.event_stale_ttl_seconds)
        pipe.delete(missing_key)
        pipe.execute()
        return {**document, "stale": False}

    def _stale_or_fail(self, event_id: str, reason: str) -> dict[str, Any]:
        raw = self._redis.get(self._keys(event_id)[1])
        if raw:
            CACHE_REQUESTS.labels("event-details", "stale").inc()
            return {**json.loads(raw), "stale": True}
        raise Unavailable(f"event details unavailable: {reason}")


def event_details_service() -> EventDetailsService:
    services = get_services()
    return EventDetailsService(services.settings, services.redis, DiscoveryClient.from_settings(services.settings))
