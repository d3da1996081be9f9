"""What a send batch reads about its sale and its event, kept for a while in the process.

Campaigns and short URLs change rarely during a sale; a send batch should not re-read them for
every message. One per process (``Services.send_lookups``); a batch's sends run on several
threads, so the caches are used under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from cachetools import TTLCache

from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.domain.urls import check_allowed_url
from dmd_tasks.store.campaigns import CampaignStore
from dmd_tasks.store.events import EventRecords


class SendLookups:
    def __init__(
        self, campaigns: CampaignStore, events: EventRecords, allowed_hosts: Iterable[str], ttl_seconds: float = 30
    ) -> None:
        self._campaign_store, self._event_records = campaigns, events
        self._allowed_hosts = allowed_hosts
        self._campaigns: TTLCache[str, Campaign | None] = TTLCache(maxsize=256, ttl=ttl_seconds)
        self._events: TTLCache[str, tuple[str, str]] = TTLCache(maxsize=256, ttl=ttl_seconds)
        self._lock = threading.Lock()

    def campaign(self, sale_id: str) -> Campaign | None:
        with self._lock:
            if sale_id not in self._campaigns:
                self._campaigns[sale_id] = self._campaign_store.get(sale_id)
            return self._campaigns[sale_id]

    def event_values(self, event_id: str) -> tuple[str, str]:
        """(event name, short URL) of an event; without a short URL, the long one if it passes the
        URL policy (``check_allowed_url``: DisallowedUrl, a PermanentError, otherwise)."""
        with self._lock:
            if event_id not in self._events:
                event = self._event_records.get(event_id)
                if event is None:
                    raise PermanentError(f"event {event_id} not found")
                link = event.short_url or check_allowed_url(event.url, self._allowed_hosts)
                self._events[event_id] = (event.name, link)
            return self._events[event_id]
