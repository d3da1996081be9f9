"""Rate limits shared by every send worker, on every machine: sliding one-second windows in Redis.

Celery's ``rate_limit`` counts tasks per worker process; the SMS provider counts message
parts per account. ``SharedRateLimiter.acquire`` admits at most ``rate`` calls in any window
of ``window_seconds`` across all processes, using Redis' clock (no skew between machines).
The window is a little longer than the provider's second, so network jitter between the
grant and the provider's receipt does not push the provider over its limit.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis
from cachetools import LRUCache

from dmd_tasks.domain.errors import NotAttempted

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local weight = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
-- a call heavier than the whole limit goes alone, into an empty window
if used + weight <= limit or used == 0 then
  for i = 1, weight do redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. i) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
-- wait until enough of the oldest entries have left the window
local need = math.min(used, used + weight - limit)
local entry = redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
return math.max(1, tonumber(entry[2]) + window - now)
"""


class SharedRateLimiter:
    def __init__(self, client: redis.Redis, key: str, *, window_seconds: float = 1.05) -> None:
        self._key = key
        self._window_us = int(window_seconds * 1_000_000)
        self._script = client.register_script(_ACQUIRE)

    def try_acquire(self, rate: float, weight: int = 1) -> float:
        """0 if a call of ``weight`` units (e.g. SMS parts) may go now (and it is counted); else
        seconds to wait before asking again.

        At a rate below one a second the window stretches instead (0.5/s: one unit per 2.1 s).
        """
        if rate >= 1:
            limit, window_us = int(rate), self._window_us
        else:
            limit, window_us = 1, int(self._window_us / max(rate, 1e-6))
        weight = max(1, int(weight))
        wait_us = int(self._script(keys=[self._key], args=[window_us, limit, uuid.uuid4().hex, weight]))
        return wait_us / 1_000_000

    def acquire(self, rate: float, timeout_seconds: float, weight: int = 1) -> None:
        """Block until a call may go; NotAttempted if that takes longer than ``timeout_seconds``."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            wait = self.try_acquire(rate, weight)
            if wait == 0:
                return
            if time.monotonic() + wait > deadline:
                raise NotAttempted(
                    f"rate limit {rate:g}/s: no slot within {timeout_seconds:.0f}s", retry_after_seconds=wait
                )
            time.sleep(wait)


class SmsThrottle:
    """The two limits every SMS send passes, in Redis: its sale's campaign rate (messages per
    second, a ceiling) and then the account's cap (message parts per second, per provider and
    sender, shared by every sale)."""

    def __init__(self, client: redis.Redis, account: str, account_parts_per_second: float) -> None:
        self._client = client
        self._account = SharedRateLimiter(client, f"dmd:rate:sms:{account}")
        self._cap = account_parts_per_second
        # one limiter per sale being sent, kept: a send must not register its script again
        self._campaigns: LRUCache[str, SharedRateLimiter] = LRUCache(maxsize=256)
        self._lock = threading.Lock()

    def campaign(self, sale_id: str) -> SharedRateLimiter:
        with self._lock:  # a batch's sends run on several threads
            limiter = self._campaigns.get(sale_id)
            if limiter is None:
                limiter = self._campaigns[sale_id] = SharedRateLimiter(self._client, f"dmd:rate:sale:{sale_id}")
            return limiter

    def acquire(self, sale_id: str, campaign_rate: float, parts: int, timeout_seconds: float) -> None:
        """Wait for both slots (NotAttempted after ``timeout_seconds`` in all)."""
        deadline = time.monotonic() + timeout_seconds
        self.campaign(sale_id).acquire(campaign_rate, timeout_seconds)
        self._account.acquire(self._cap, max(0.0, deadline - time.monotonic()), weight=parts)
