"""Rate limits shared by every worker, on every machine, in Redis (its clock: no skew between machines).

Celery's ``rate_limit`` counts tasks per worker process; the SMS provider counts message
parts per account.

- ``PacedLimiter`` (the SMS sends): calls evenly spaced, ``1 / rate`` apart. Each caller
  reserves the next free slot and sleeps until it; nothing is admitted in bursts. The
  spacing is ``headroom`` longer than ``1 / rate``: room for the jitter between the grant and
  the provider's receipt.
- ``SmsThrottle`` adds a last check to the account's pacing, just before the provider call:
  at most ``rate`` parts in any window of ``1 + headroom`` seconds, counted when the senders
  actually go. Pacing alone lets a sender that woke a little late come close to the next
  one; this window holds the next one back instead, so the provider's sliding second sees at
  most ``rate`` parts as long as the way there varies by less than ``headroom`` seconds.
- ``SharedRateLimiter`` (the Discovery API): at most ``rate`` calls in any window of
  ``window_seconds``, admitted as they come.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

import redis
from cachetools import LRUCache

from dmd_tasks.domain.errors import NotAttempted
from dmd_tasks.infra.metrics import SEND_SLOTS_MISSED, SEND_WINDOW_HELD


def _no_slot(rate: float, timeout_seconds: float, wait_seconds: float) -> NotAttempted:
    """Nothing was sent: the limit has no room within the caller's timeout (try again after the wait)."""
    return NotAttempted(
        f"rate limit {rate:g}/s: no slot within {timeout_seconds:.0f}s", retry_after_seconds=wait_seconds
    )


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
                raise _no_slot(rate, timeout_seconds, wait)
            time.sleep(wait)


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spacing = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local start = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if start - now > max_wait then
  return -(start - now)
end
local after = start + spacing * weight
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000) + 1000)
return start - now
"""


class PacedLimiter:
    """Calls of one key at most ``rate`` a second, evenly spaced: a call of ``weight`` units (SMS
    parts) takes ``weight`` slots of ``(1 + headroom) / rate`` seconds each (GCRA, with no burst).

    ``acquire`` reserves the first free slot, if it comes within the timeout, and sleeps until
    it. A reservation is kept: a caller that gives up after it wastes the slot (the limit errs
    on the provider's side). With headroom, a caller that wakes up more than half of it late
    (``headroom / 2`` seconds: a loaded machine) does not send then: it would come closer to
    the sends after it than the provider's second allows. It takes the next free slot instead
    (once: the second slot is kept, however late).
    """

    def __init__(self, client: redis.Redis, key: str, *, headroom: float = 0.0, name: str = "") -> None:
        self._key = key
        self._name = name or key
        self._headroom = headroom
        self._late_seconds = headroom / 2 if headroom > 0 else math.inf
        self._script = client.register_script(_RESERVE)

    def reserve(self, rate: float, timeout_seconds: float, weight: int = 1) -> float:
        """Seconds until this call's slot (reserved); NotAttempted if it is further than the timeout."""
        spacing_us = max(1, int((1.0 + self._headroom) * 1_000_000 / max(rate, 1e-6)))
        args = [spacing_us, max(1, int(weight)), int(timeout_seconds * 1_000_000)]
        wait_us = int(self._script(keys=[self._key], args=args))
        if wait_us < 0:
            raise _no_slot(rate, timeout_seconds, -wait_us / 1e6)
        return wait_us / 1_000_000

    def acquire(self, rate: float, timeout_seconds: float, weight: int = 1) -> None:
        """Block until this call's slot; NotAttempted (nothing reserved) if none comes within the timeout."""
        deadline = time.monotonic() + timeout_seconds
        for attempt in range(2):  # a missed slot is taken again once: a loaded machine cannot spin here
            wait = self.reserve(rate, max(0.0, deadline - time.monotonic()), weight)
            slot = time.monotonic() + wait
            if wait > 0:
                time.sleep(wait)
            if attempt or time.monotonic() - slot <= self._late_seconds:
                return
            SEND_SLOTS_MISSED.labels(self._name).inc()


class SmsThrottle:
    """The two limits every SMS send passes, in Redis: its sale's campaign rate (messages per
    second, a ceiling) and then the account's cap (message parts per second, per provider and
    sender, shared by every sale)."""

    def __init__(
        self, client: redis.Redis, account: str, account_parts_per_second: float, headroom: float = 0.02
    ) -> None:
        self._client = client
        # the provider's limit: spaced a little wider than 1/cap (jitter on the way to the provider)
        self._account = PacedLimiter(client, f"dmd:rate:sms:{account}", headroom=headroom, name="account")
        self._cap = account_parts_per_second
        # the provider's second (and the headroom), counted as the sends go: no bunching after a late wake
        self._second = SharedRateLimiter(
            client, f"dmd:rate:sms:{account}:second", window_seconds=1.0 + max(0.0, headroom)
        )
        # one limiter per sale being sent, kept: a send must not register its script again
        self._campaigns: LRUCache[str, PacedLimiter] = LRUCache(maxsize=256)
        self._lock = threading.Lock()

    def campaign(self, sale_id: str) -> PacedLimiter:
        """The sale's own ceiling (ours, not the provider's: no headroom)."""
        with self._lock:  # a batch's sends run on several threads
            limiter = self._campaigns.get(sale_id)
            if limiter is None:
                limiter = self._campaigns[sale_id] = PacedLimiter(
                    self._client, f"dmd:rate:sale:{sale_id}", name="campaign"
                )
            return limiter

    def acquire(self, sale_id: str, campaign_rate: float, parts: int, timeout_seconds: float) -> None:
        """Wait for both slots, then for the account's second to have room (NotAttempted after
        ``timeout_seconds`` in all). Returns with the parts counted in that second: call the
        provider at once."""
        deadline = time.monotonic() + timeout_seconds
        self.campaign(sale_id).acquire(campaign_rate, timeout_seconds)
        self._account.acquire(self._cap, max(0.0, deadline - time.monotonic()), weight=parts)
        wait = self._second.try_acquire(self._cap, parts)
        if wait == 0:
            return
        SEND_WINDOW_HELD.inc()
        self._second.acquire(self._cap, max(0.0, deadline - time.monotonic()), weight=parts)
