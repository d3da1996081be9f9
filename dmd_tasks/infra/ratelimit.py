"""Rate limits shared by every worker, on every machine, in Redis (its clock: no skew between machines).

Celery's ``rate_limit`` counts tasks per worker process; the SMS provider counts message
parts per account.

- ``PacedLimiter`` (the SMS sends): calls evenly spaced, ``1 / rate`` apart. Each caller
  reserves the next free slot and sleeps until it; nothing is admitted in bursts. The
  spacing is ``headroom`` longer than ``1 / rate``: room for the jitter between the grant and
  the provider's receipt.
- ``SmsThrottle`` paces a send on its sale's rate and the account's cap together (one
  reservation, for one send or a whole batch's), and adds a last check, just before the call:
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
from collections.abc import Sequence

import redis
from cachetools import LRUCache

from dmd_tasks.domain.errors import NotAttempted
from dmd_tasks.infra.circuit import ProviderPaused
from dmd_tasks.infra.metrics import SEND_SLOTS_MISSED, SEND_WINDOW_HELD


def _no_slot(rate: float, timeout_seconds: float, wait_seconds: float) -> NotAttempted:
    """Nothing was sent: the limit has no room within the caller's timeout (try again after the wait)."""
    return NotAttempted(
        f"rate limit {rate:g}/s: no slot within {timeout_seconds:.0f}s", retry_after_seconds=wait_seconds
    )


#: KEYS: the window, then (optional) a provider circuit's open and tripped keys; ARGV: window (us),
#: limit, member, weight. Returns {0, 0}: go (counted); {1, us}: the window is full, ask again
#: then; {2, ms}: the circuit is open for that long; {3, 0}: it is half-open (a probe goes first).
_ACQUIRE = """
if #KEYS > 1 then
  local open_ttl = redis.call('PTTL', KEYS[2])
  if open_ttl > 0 then return {2, open_ttl} end
  if redis.call('EXISTS', KEYS[3]) == 1 then return {3, 0} end
end
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
  return {0, 0}
end
-- wait until enough of the oldest entries have left the window
local need = math.min(used, used + weight - limit)
local entry = redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
return {1, math.max(1, tonumber(entry[2]) + window - now)}
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
        _, wait_us = self._script(keys=[self._key], args=[window_us, limit, uuid.uuid4().hex, weight])
        return int(wait_us) / 1_000_000

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


#: KEYS: the campaign's next free slot, the account's; ARGV: the campaign's spacing (us), the
#: account's spacing per part (us), the longest wait (us), then each send's parts, in order. Each
#: send's slot is the first time both are free; the slots that come within the longest wait are
#: reserved (both keys moved past the last). Returns {wait until the first slot (us), reserved}, or
#: {-wait, 0} when not even the first comes in time (nothing reserved).
_RESERVE_SENDS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local campaign_spacing = tonumber(ARGV[1])
local account_spacing = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local campaign_next = tonumber(redis.call('GET', KEYS[1]) or '0')
local account_next = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = math.max(now, campaign_next, account_next)
local slot = first
local count = 0
for i = 4, #ARGV do
  if slot - now > max_wait then break end
  campaign_next = slot + campaign_spacing
  account_next = slot + account_spacing * tonumber(ARGV[i])
  count = count + 1
  slot = math.max(campaign_next, account_next)
end
if count == 0 then return {-(first - now), 0} end
redis.call('SET', KEYS[1], string.format('%d', campaign_next), 'PX', math.ceil((campaign_next - now) / 1000) + 1000)
redis.call('SET', KEYS[2], string.format('%d', account_next), 'PX', math.ceil((account_next - now) / 1000) + 1000)
return {first - now, count}
"""


class SmsThrottle:
    """The two limits every SMS send passes, in Redis: its sale's campaign rate (messages per
    second, a ceiling) and then the account's cap (message parts per second, per provider and
    sender, shared by every sale).

    A send's slot is reserved on both at once (``reserve``: one round trip, for one send or a
    batch's), slept until (``go``), and checked one last time against the account's second
    just before the call (with the provider's circuit, when the caller holds a batch's leave
    to call rather than one of its own)."""

    def __init__(
        self, client: redis.Redis, account: str, account_parts_per_second: float, headroom: float = 0.02
    ) -> None:
        self._client = client
        # the provider's limit: spaced a little wider than 1/cap (jitter on the way to the provider)
        self._account_key = f"dmd:rate:sms:{account}"
        self._headroom = headroom
        self._late_seconds = headroom / 2 if headroom > 0 else math.inf
        self._cap = account_parts_per_second
        # the provider's second (and the headroom), counted as the sends go: no bunching after a late wake
        self._second_key = f"dmd:rate:sms:{account}:second"
        self._second_us = int((1.0 + max(0.0, headroom)) * 1_000_000)
        self._reserve = client.register_script(_RESERVE_SENDS)
        self._last_check = client.register_script(_ACQUIRE)
        # one limiter per sale being sent, kept (for reading a sale's pacing; sends reserve through ``reserve``)
        self._campaigns: LRUCache[str, PacedLimiter] = LRUCache(maxsize=256)
        self._lock = threading.Lock()

    def campaign(self, sale_id: str) -> PacedLimiter:
        """The sale's own ceiling (ours, not the provider's: no headroom), on the key ``reserve`` moves."""
        with self._lock:  # a batch's sends run on several threads
            limiter = self._campaigns.get(sale_id)
            if limiter is None:
                limiter = self._campaigns[sale_id] = PacedLimiter(
                    self._client, f"dmd:rate:sale:{sale_id}", name="campaign"
                )
            return limiter

    def reserve(self, sale_id: str, campaign_rate: float, parts: Sequence[int], timeout_seconds: float) -> list[float]:
        """Slots for sends of these ``parts``, in order, in one round trip: each one's time
        (``time.monotonic``), for as many as come within ``timeout_seconds`` (the others are not
        reserved: ask again for them). NotAttempted when not even the first comes in time.

        A slot is the first time both the sale's pacing (``1 / campaign_rate``) and the account's
        (``parts × (1 + headroom) / cap``) are free; a reservation is kept (one not used wastes
        its slot: the limit errs on the provider's side)."""
        campaign_us = max(1, int(1_000_000 / max(campaign_rate, 1e-6)))
        account_us = max(1, int((1.0 + self._headroom) * 1_000_000 / max(self._cap, 1e-6)))
        weights = [max(1, int(p)) for p in parts]
        asked = time.monotonic()
        first_us, count = self._reserve(
            keys=[f"dmd:rate:sale:{sale_id}", self._account_key],
            args=[campaign_us, account_us, int(timeout_seconds * 1_000_000), *weights],
        )
        first_us, count = int(first_us), int(count)
        if count == 0:
            raise _no_slot(min(campaign_rate, self._cap), timeout_seconds, -first_us / 1e6)
        slots, at = [], first_us
        for weight in weights[:count]:
            slots.append(asked + at / 1_000_000)
            at += max(campaign_us, account_us * weight)
        return slots

    def acquire(self, sale_id: str, campaign_rate: float, parts: int, timeout_seconds: float) -> None:
        """One send: its slot reserved and waited for, then the account's second (NotAttempted
        after ``timeout_seconds`` in all). Returns with the parts counted in that second: call
        the provider at once."""
        deadline = time.monotonic() + timeout_seconds
        slot = self.reserve(sale_id, campaign_rate, [parts], timeout_seconds)[0]
        self.go(slot, parts, deadline)

    def go(self, slot: float, parts: int, deadline: float, gate: tuple[str, str] | None = None) -> None:
        """Sleep until ``slot`` (reserved), then the last check before the call: the account's
        second decides. A send that comes to its slot late (a loaded machine, or a batch's send
        whose thread was busy with the one before) could come close to the sends after it; the
        second holds it back when that would put more than the cap in the provider's second,
        and lets it go at once otherwise (a new slot would cost a round trip and waste this
        one). Late sends are counted (``dmd_send_slots_missed_total``). ``gate``: the provider
        circuit's open and tripped keys, checked in the same round trip (ProviderPaused while it
        is open or half-open)."""
        if (wait := slot - time.monotonic()) > 0:
            time.sleep(wait)
        if time.monotonic() - slot > self._late_seconds:
            SEND_SLOTS_MISSED.labels("account").inc()
        self._last(parts, deadline, gate)

    def _last(self, parts: int, deadline: float, gate: tuple[str, str] | None) -> None:
        """The account's second has room for ``parts`` now (counted), or wait for it until ``deadline``."""
        weight, member, held = max(1, int(parts)), uuid.uuid4().hex, False
        limit = max(1, int(self._cap))
        while True:
            code, value = self._last_check(
                keys=[self._second_key, *(gate or ())], args=[self._second_us, limit, member, weight]
            )
            code, value = int(code), int(value)
            if code == 0:
                return
            if code == 2:
                raise ProviderPaused("sms provider paused (circuit open)", retry_after_seconds=value / 1000)
            if code == 3:
                raise ProviderPaused("sms provider on probation (circuit half-open)", retry_after_seconds=1.0)
            if not held:
                SEND_WINDOW_HELD.inc()
                held = True
            wait = value / 1_000_000
            if time.monotonic() + wait > deadline:
                raise _no_slot(self._cap, max(0.0, deadline - time.monotonic()), wait)
            time.sleep(wait)
