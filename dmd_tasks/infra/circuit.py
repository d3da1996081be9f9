"""A circuit breaker on the SMS provider, shared by every send worker on every machine (Redis).

When the provider throttles (429) or answers errors to most calls, sending pauses for
everyone instead of each worker spending its notifications' attempts against it:

- **closed**: calls go out; each outcome is counted in a sliding window
  (``circuit_window_seconds``, in buckets of a few seconds).
- **open**: once at least ``circuit_min_calls`` calls in the window failed (5xx, timeouts,
  connection errors) at a rate of ``circuit_error_ratio`` or more, or as many calls failed in a
  row (at least ``streak_failures``), or the provider answered 429, no call goes out for
  ``circuit_open_seconds`` (a 429: its ``Retry-After``, at least a second). A send that finds it
  open goes back to ``scheduled`` without spending an attempt. The run of failures matters when
  a provider dies after a busy minute: its window still holds that minute's successes, and the
  failover (``dmd_tasks.infra.failover``) takes its traffic away as its error ratio grows, so
  without it the ratio would only be reached when those successes have aged out and traffic
  comes back to fail again.
- **half-open** (after a pause for failures): one caller at a time (a Redis key with a TTL,
  so a probe that dies frees it) makes a probe call; success closes the circuit and clears
  the window, failure opens it again. After a 429's pause sending resumes at once: the
  provider answered, and the rate limits keep every sender under the cap.

A failure is the message's (it spends one of its attempts) only while the provider answers
most calls well; a failure while most calls in the window fail (before there are enough of them
to open the circuit too), after ``streak_failures`` failed calls in a row (the first seconds of an
outage, while the window still holds the successes from before: without this, a message retried
quickly could spend every attempt then), while the circuit is open or half-open, or that opened
it, is the provider's, not the message's, and spends none. So a provider that stops answering
fails no notification, however long it stays down; a message the provider keeps refusing
with 5xx while it answers others still uses up its attempts (and one retried alone, with
nobody else sending, ends ``failed`` "expired" at the end of its validity instead).

Every change of state is counted in ``dmd_provider_circuit_total{provider, event}``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from dmd_tasks.domain.errors import NotAttempted
from dmd_tasks.infra.metrics import PROVIDER_CIRCUIT

log = logging.getLogger(__name__)

#: KEYS: open, tripped, probe; ARGV: probe ttl ms, token. Returns {state, wait ms}:
#: 0 closed (go), 1 probe (go, as the half-open probe), 2 open (wait).
_BEFORE = """
local open_ttl = redis.call('PTTL', KEYS[1])
if open_ttl > 0 then return {2, open_ttl} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, 0} end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[1]) then return {1, 0} end
-- another caller probes: ask again in a second at most (the probe usually answers sooner)
return {2, math.min(math.max(redis.call('PTTL', KEYS[3]), 100), 1000)}
"""

#: KEYS: bucket, open, tripped, probe, streak, then the window's bucket keys; ARGV: ok (1/0), bucket
#: ttl s, min calls, error ratio, open ms, tripped ttl ms, is probe (1/0), token, streak length,
#: successes counted before this outcome (a batch's, told together).
#: Returns 1 when this failure opened the circuit (the window's ratio, or min calls failed in a
#: row), 2 when it was already open/half-open, 4 when the provider is failing (most calls in the
#: window, or the last few calls in a row) but too few calls failed to open it yet, 0 otherwise.
_RECORD = """
local earlier = tonumber(ARGV[10] or '0')
if earlier > 0 then
  redis.call('HINCRBY', KEYS[1], 'ok', earlier)
  redis.call('DEL', KEYS[5])
end
local field = ARGV[1] == '1' and 'ok' or 'err'
redis.call('HINCRBY', KEYS[1], field, 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
local probing = ARGV[7] == '1'
if probing and redis.call('GET', KEYS[4]) == ARGV[8] then redis.call('DEL', KEYS[4]) end
local streak = 0
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[5])
else
  streak = redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[2]))
end
if ARGV[1] == '1' then
  if probing then
    redis.call('DEL', KEYS[3])
    for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
    return 3
  end
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
if probing or redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[6])
  return 2
end
local ok, err = 0, 0
for i = 6, #KEYS do
  local counts = redis.call('HMGET', KEYS[i], 'ok', 'err')
  ok = ok + (tonumber(counts[1]) or 0)
  err = err + (tonumber(counts[2]) or 0)
end
local failing = err >= tonumber(ARGV[4]) * (ok + err)
if (failing and err >= tonumber(ARGV[3])) or streak >= math.max(tonumber(ARGV[3]), tonumber(ARGV[9])) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[6])
  return 1
end
if failing or streak >= tonumber(ARGV[9]) then return 4 end
return 0
"""

#: KEYS: probe; ARGV: token. A probe that made no call gives its turn back.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

#: KEYS: open, tripped, probe; ARGV: open ms, tripped ttl ms, token. A 429: pause everyone for its
#: Retry-After, then resume at once (the provider answered: it is up, only asking for less).
_THROTTLED = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return 1
"""


@dataclass(frozen=True)
class CircuitSettings:
    window_seconds: float = 30.0
    bucket_seconds: float = 5.0
    min_calls: int = 10
    error_ratio: float = 0.5
    open_seconds: float = 15.0
    probe_timeout_seconds: float = 10.0
    #: Failed calls in a row (across every sender) after which a failure is the provider's even
    #: though the window still holds the successes from before it went down.
    streak_failures: int = 3


class Tally:
    """Successes under a batch's permit, told to the circuit together (thread-safe)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
            return count


@dataclass(frozen=True)
class Permit:
    """Leave to make one provider call (``probe``: as the half-open probe), or, with a ``tally``,
    a batch's calls while the circuit was closed when the batch began: each of those checks the
    circuit again just before its call (``gate_keys``) and counts its success in the tally."""

    probe: bool
    token: str
    tally: Tally | None = None


class ProviderPaused(NotAttempted):
    """The provider's circuit is open: no call was made, and no attempt is spent."""


class ProviderCircuit:
    def __init__(self, client: redis.Redis, provider: str, config: CircuitSettings) -> None:
        self._redis = client
        self.provider = provider
        self._config = config
        base = f"dmd:circuit:{provider}"
        self._open, self._tripped, self._probe, self._bucket = f"{base}:open", f"{base}:tripped", f"{base}:probe", base
        self._streak = f"{base}:streak"
        self._before = client.register_script(_BEFORE)
        self._record = client.register_script(_RECORD)
        self._throttled = client.register_script(_THROTTLED)
        self._release = client.register_script(_RELEASE)

    def _buckets(self, now: float) -> list[str]:
        size = self._config.bucket_seconds
        current = int(now // size)
        count = max(1, int(self._config.window_seconds // size))
        return [f"{self._bucket}:b:{n}" for n in range(current - count + 1, current + 1)]

    def _tripped_ms(self) -> int:
        # how long "it failed; probe before trusting it again" is remembered: long enough to outlast any pause
        return int(max(self._config.open_seconds, 1) * 1000 * 20)

    def before_call(self) -> Permit:
        """A permit to call the provider now, or ProviderPaused (with how long to wait)."""
        token = uuid.uuid4().hex
        state, wait_ms = self._before(
            keys=[self._open, self._tripped, self._probe],
            args=[int(self._config.probe_timeout_seconds * 1000), token],
        )
        if int(state) == 2:
            raise ProviderPaused(
                f"sms provider {self.provider} paused (circuit open)", retry_after_seconds=int(wait_ms) / 1000
            )
        if int(state) == 1:
            PROVIDER_CIRCUIT.labels(self.provider, "probe").inc()
        return Permit(probe=int(state) == 1, token=token)

    def batch_permit(self) -> Permit | None:
        """Leave for a batch's calls while the circuit is closed; None when it is open or half-open
        (each call then asks ``before_call`` on its own: a probe goes alone)."""
        try:
            permit = self.before_call()
        except ProviderPaused:
            return None
        if permit.probe:
            self.release(permit)
            return None
        return Permit(probe=False, token=permit.token, tally=Tally())

    @property
    def gate_keys(self) -> tuple[str, str]:
        """The open and tripped keys: a call under a batch's permit goes only while neither is set."""
        return self._open, self._tripped

    def release(self, permit: Permit) -> None:
        """No call was made with this permit after all (no rate-limit slot in time, a lease nearly over)."""
        if permit.probe:
            self._release(keys=[self._probe], args=[permit.token])

    def _outcome(self, permit: Permit, ok: bool, earlier: int = 0) -> int:
        buckets = self._buckets(time.time())
        result = self._record(
            keys=[buckets[-1], self._open, self._tripped, self._probe, self._streak, *buckets],
            args=[
                1 if ok else 0,
                int(self._config.window_seconds + self._config.bucket_seconds) + 1,
                self._config.min_calls,
                self._config.error_ratio,
                int(self._config.open_seconds * 1000),
                self._tripped_ms(),
                1 if permit.probe else 0,
                permit.token,
                self._config.streak_failures,
                earlier,
            ],
        )
        return int(result)

    def succeeded(self, permit: Permit) -> None:
        """The provider answered (a send accepted, or a message refused on its own merits).

        Best effort: the call is done and its outcome must be recorded whatever Redis does, so a
        Redis error here is logged, not raised (a probe's turn then expires on its own). Under a
        batch's permit it is counted in the batch's tally (``flush``)."""
        if permit.tally is not None:
            permit.tally.add()
            return
        try:
            outcome = self._outcome(permit, ok=True)
        except redis.RedisError as exc:
            log.warning("sms provider %s: could not record a success in the circuit (%s)", self.provider, exc)
            return
        if outcome == 3:
            PROVIDER_CIRCUIT.labels(self.provider, "closed").inc()
            log.warning("sms provider %s answers again: circuit closed", self.provider)

    def failed(self, permit: Permit) -> bool:
        """The call failed (5xx, timeout, connection). True when the failure is the provider's (the
        circuit is or just went open, or most calls in the window fail): it must not spend the
        notification's attempt. The batch's successes so far are told first, in the same round trip."""
        earlier = permit.tally.take() if permit.tally is not None else 0
        result = self._outcome(permit, ok=False, earlier=earlier)
        if result == 1:
            PROVIDER_CIRCUIT.labels(self.provider, "opened").inc()
            log.error(
                "sms provider %s fails most calls: sending paused for %.0fs (circuit open)",
                self.provider,
                self._config.open_seconds,
            )
        elif result == 2 and permit.probe:
            PROVIDER_CIRCUIT.labels(self.provider, "reopened").inc()
        return result in (1, 2, 4)

    def flush(self, permit: Permit) -> None:
        """Tell the circuit the successes counted under a batch's permit (best effort, as ``succeeded``)."""
        count = permit.tally.take() if permit.tally is not None else 0
        if count == 0:
            return
        try:
            self._outcome(Permit(probe=False, token=permit.token), ok=True, earlier=count - 1)
        except redis.RedisError as exc:
            log.warning("sms provider %s: could not record %d successes in the circuit (%s)", self.provider, count, exc)

    def throttled(self, permit: Permit, retry_after_seconds: float | None) -> float:
        """The provider said 429: every worker pauses for its Retry-After (at least a second); returns it."""
        pause = max(1.0, retry_after_seconds or 0.0)
        self._throttled(
            keys=[self._open, self._tripped, self._probe], args=[int(pause * 1000), self._tripped_ms(), permit.token]
        )
        PROVIDER_CIRCUIT.labels(self.provider, "throttled").inc()
        return pause

    def window_counts(self) -> tuple[int, int]:
        """(answered, failed) calls in the sliding window, as the circuit counts them (read only)."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in self._buckets(time.time()):
            pipe.hmget(bucket, "ok", "err")
        ok = err = 0
        for counts in pipe.execute():
            ok += int(counts[0] or 0)
            err += int(counts[1] or 0)
        return ok, err

    def state(self) -> str:
        """closed, open or half-open (for ``dmd`` and the tests)."""
        if self._redis.pttl(self._open) > 0:
            return "open"
        return "half-open" if self._redis.exists(self._tripped) else "closed"
