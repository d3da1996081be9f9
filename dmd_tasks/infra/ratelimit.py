"""A rate limit shared by every send worker, on every machine: a sliding one-second window in Redis.

Celery's ``rate_limit`` counts tasks per worker process; the SMS provider counts messages
per account. ``SharedRateLimiter.acquire`` admits at most ``rate`` calls in any window
of ``window_seconds`` across all processes, using Redis' clock (no skew between machines).
The window is a little longer than the provider's second, so network jitter between the
grant and the provider's receipt does not push the provider over its limit.
"""

from __future__ import annotations

import time
import uuid

import redis

from dmd_tasks.domain.errors import NotAttempted

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class SharedRateLimiter:
    def __init__(self, client: redis.Redis, key: str, *, window_seconds: float = 1.05) -> None:
        self._key = key
        self._window_us = int(window_seconds * 1_000_000)
        self._script = client.register_script(_ACQUIRE)

    def try_acquire(self, rate: float) -> float:
        """0 if a call may go now (and it is counted); else seconds to wait before asking again.

        At a rate below one a second the window stretches instead (0.5/s: one call per 2.1 s).
        """
        if rate >= 1:
            limit, window_us = int(rate), self._window_us
        else:
            limit, window_us = 1, int(self._window_us / max(rate, 1e-6))
        wait_us = int(self._script(keys=[self._key], args=[window_us, limit, uuid.uuid4().hex]))
        return wait_us / 1_000_000

    def acquire(self, rate: float, timeout_seconds: float) -> None:
        """Block until a call may go; NotAttempted if that takes longer than ``timeout_seconds``."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            wait = self.try_acquire(rate)
            if wait == 0:
                return
            if time.monotonic() + wait > deadline:
                raise NotAttempted(
                    f"rate limit {rate}/s: no slot within {timeout_seconds:.0f}s", retry_after_seconds=wait
                )
            time.sleep(wait)
