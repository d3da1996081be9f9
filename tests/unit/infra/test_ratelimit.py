"""The shared rate limit: a sliding window in the session's Redis, one key per test.

Windows are long (seconds) where a test counts grants, so that a slow machine cannot let a
window pass between two calls; the one test that waits for a slot uses a short window.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra.ratelimit import PacedLimiter, SharedRateLimiter


@pytest.fixture()
def client(settings, stack) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture()
def key() -> str:
    return f"test:rate:{uuid.uuid4().hex}"


def test_at_most_rate_grants_per_window_across_limiters_in_several_threads(
    settings: Any, client: redis.Redis, key: str
) -> None:
    # Given two limiters on one key, each with its own Redis connection (two workers, say)
    limiters = [SharedRateLimiter(redis.Redis.from_url(settings.redis_url), key, window_seconds=30) for _ in range(2)]
    grants: list[float] = []
    lock = threading.Lock()

    def ask(limiter: SharedRateLimiter) -> None:
        for _ in range(10):
            wait = limiter.try_acquire(5)
            with lock:
                grants.append(wait)

    # When four threads ask ten times each for a rate of 5
    threads = [threading.Thread(target=ask, args=(limiters[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then exactly five calls were let through; every other one was told to wait
    assert len(grants) == 40
    assert grants.count(0) == 5
    assert all(0 < wait <= 30 for wait in grants if wait != 0)
    assert client.zcard(key) == 5


def test_try_acquire_returns_the_wait_until_the_oldest_grant_leaves_the_window(client: redis.Redis, key: str) -> None:
    limiter = SharedRateLimiter(client, key, window_seconds=20)
    assert [limiter.try_acquire(2), limiter.try_acquire(2)] == [0, 0]

    wait = limiter.try_acquire(2)

    assert 15 < wait <= 20
    # a refusal is not counted
    assert client.zcard(key) == 2


def test_a_fractional_rate_above_one_rounds_down_and_a_rate_of_one_admits_one(client: redis.Redis, key: str) -> None:
    limiter = SharedRateLimiter(client, key, window_seconds=20)
    assert [limiter.try_acquire(2.9) == 0 for _ in range(4)] == [True, True, False, False]
    other = SharedRateLimiter(client, f"{key}:one", window_seconds=20)
    assert [other.try_acquire(1) == 0 for _ in range(2)] == [True, False]


def test_the_window_key_expires_on_its_own(client: redis.Redis, key: str) -> None:
    SharedRateLimiter(client, key, window_seconds=5).try_acquire(3)
    ttl_ms = client.pttl(key)
    assert 0 < ttl_ms <= 5000 + 1000


def test_acquire_waits_for_a_slot_when_one_comes_in_time(client: redis.Redis, key: str) -> None:
    limiter = SharedRateLimiter(client, key, window_seconds=0.3)
    limiter.acquire(1, timeout_seconds=1)

    # the second call must wait for the first grant to leave the 0.3 s window, and then goes
    limiter.acquire(1, timeout_seconds=5)

    assert client.zcard(key) == 1  # the first grant left the window; the second is counted


def test_acquire_raises_a_transient_error_with_retry_after_when_no_slot_comes_in_time(
    client: redis.Redis, key: str
) -> None:
    limiter = SharedRateLimiter(client, key, window_seconds=10)
    for _ in range(3):
        limiter.acquire(3, timeout_seconds=1)

    with pytest.raises(TransientError, match="rate limit 3/s: no slot within 1s") as raised:
        limiter.acquire(3, timeout_seconds=1)

    assert raised.value.retry_after_seconds is not None
    assert 5 < raised.value.retry_after_seconds <= 10
    assert client.zcard(key) == 3


def test_a_rate_below_one_a_second_spaces_grants_by_one_over_the_rate(client: redis.Redis, key: str) -> None:
    limiter = SharedRateLimiter(client, key)  # the default window, a little over a second
    assert limiter.try_acquire(0.5) == 0

    wait = limiter.try_acquire(0.5)

    # at 0.5 a second the next call may go two seconds after the first, not one
    assert wait >= 1.9


def test_a_call_of_several_parts_takes_that_many_units_of_the_window(client: redis.Redis, key: str) -> None:
    limiter = SharedRateLimiter(client, key, window_seconds=30)
    assert limiter.try_acquire(10, weight=6) == 0
    assert limiter.try_acquire(10, weight=5) > 0  # 6 + 5 > 10
    assert limiter.try_acquire(10, weight=4) == 0  # 6 + 4 = 10
    assert limiter.try_acquire(10, weight=1) > 0
    assert client.zcard(key) == 10


def test_a_call_heavier_than_the_whole_limit_goes_alone_into_an_empty_window(client: redis.Redis, key: str) -> None:
    limiter = SharedRateLimiter(client, key, window_seconds=30)
    assert limiter.try_acquire(3, weight=5) == 0  # would never fit otherwise
    assert limiter.try_acquire(3, weight=1) > 0


# --- PacedLimiter: the SMS sends, evenly spaced ----------------------------------------------------


def _now_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def test_paced_calls_get_slots_one_spacing_apart_across_limiters_and_threads(
    settings: Any, client: redis.Redis, key: str
) -> None:
    # Given two limiters on one key (two workers), at 10 a second with 50 % headroom: slots 0.15 s apart
    limiters = [PacedLimiter(redis.Redis.from_url(settings.redis_url), key, headroom=0.5) for _ in range(2)]
    start = _now_us(client)
    waits: list[float] = []
    lock = threading.Lock()

    def ask(limiter: PacedLimiter) -> None:
        for _ in range(10):
            wait = limiter.reserve(10, timeout_seconds=60)
            with lock:
                waits.append(wait)

    # When four threads reserve ten slots each
    threads = [threading.Thread(target=ask, args=(limiters[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then the forty slots follow one another 0.15 s apart: the next free one is 40 spacings on
    elapsed = _now_us(client) - start
    after = int(client.get(key) or 0)
    assert len(waits) == 40
    assert 40 * 150_000 <= after - start <= 40 * 150_000 + elapsed
    assert max(waits) >= 39 * 0.15 - elapsed / 1e6  # the last caller was told to wait for its slot


def test_a_call_of_several_parts_takes_that_many_slots(client: redis.Redis, key: str) -> None:
    limiter = PacedLimiter(client, key)
    assert limiter.reserve(1, timeout_seconds=60, weight=3) == 0  # the first slot is now
    wait = limiter.reserve(1, timeout_seconds=60)
    assert 2.9 <= wait <= 3.0  # after the three parts' slots, a second each


def test_a_slot_beyond_the_timeout_is_refused_and_not_reserved(client: redis.Redis, key: str) -> None:
    limiter = PacedLimiter(client, key)
    limiter.reserve(0.5, timeout_seconds=1)  # the next slot is two seconds on
    booked = client.get(key)

    with pytest.raises(TransientError, match=r"rate limit 0\.5/s: no slot within 1s") as raised:
        limiter.reserve(0.5, timeout_seconds=1)

    assert raised.value.retry_after_seconds is not None and 1.5 < raised.value.retry_after_seconds <= 2
    assert client.get(key) == booked  # nothing reserved by the refusal


def test_acquire_sleeps_until_its_slot(client: redis.Redis, key: str) -> None:
    limiter = PacedLimiter(client, key)
    limiter.acquire(5, timeout_seconds=1)
    before = _now_us(client)
    limiter.acquire(5, timeout_seconds=1)  # 0.2 s after the first
    assert _now_us(client) - before >= 150_000


def test_the_paced_key_expires_once_its_last_slot_has_passed(client: redis.Redis, key: str) -> None:
    PacedLimiter(client, key).reserve(2, timeout_seconds=1)
    assert 0 < client.pttl(key) <= 500 + 1000


def test_a_sender_that_wakes_too_late_takes_the_next_slot_once(
    client: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmd_tasks.infra import ratelimit
    from dmd_tasks.infra.metrics import SEND_SLOTS_MISSED

    # Given slots 0.12 s apart with 20 % headroom (late: more than 0.1 s), and a machine that oversleeps
    limiter = PacedLimiter(client, key, headroom=0.2, name=f"late-{key}")
    real_sleep = time.sleep
    monkeypatch.setattr(ratelimit.time, "sleep", lambda seconds: real_sleep(seconds + 0.15))
    limiter.acquire(10, timeout_seconds=5)  # the first slot is now: no sleep

    # When the next call sleeps for its slot and wakes 0.15 s late
    limiter.acquire(10, timeout_seconds=5)

    # Then it did not go on the missed slot: it took another, once
    assert SEND_SLOTS_MISSED.labels(f"late-{key}")._value.get() == 1


# --- SmsThrottle: the account's second, counted as the sends go ------------------------------------


def _slots_now(throttle: object, sale_id: str, rate: float, parts: list[int], timeout_seconds: float) -> list[float]:
    """Pacing out of the way: every slot is now."""
    return [time.monotonic()] * len(parts)


def test_sends_that_bunch_after_their_slots_are_held_to_the_cap_in_any_second(
    client: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmd_tasks.infra.metrics import SEND_WINDOW_HELD
    from dmd_tasks.infra.ratelimit import SmsThrottle

    # Given an account capped at 3 parts a second with 20 % headroom, and senders whose paced
    # slots all came at once (each woke late, say): pacing lets them through together
    throttle = SmsThrottle(client, key, 3, headroom=0.2)
    monkeypatch.setattr(SmsThrottle, "reserve", _slots_now)
    held_before = SEND_WINDOW_HELD._value.get()
    gone: list[int] = []

    # When five single-part sends ask to go, one after another
    for _ in range(5):
        throttle.acquire("sale", 100, parts=1, timeout_seconds=10)
        gone.append(_now_us(client))

    # Then three went at once, and the others only as the first ones left the window of 1.2 s
    # (the provider's second and the headroom): never four within it. (The window counts in
    # Redis's time, when a send is let through; ``gone`` is read by one more round trip after
    # it: up to 50 ms of slack. Without the window the fourth would go within milliseconds.)
    slack = 50_000
    assert gone[2] - gone[0] < 1_000_000
    assert gone[3] - gone[0] >= 1_200_000 - slack
    assert gone[4] - gone[1] >= 1_200_000 - slack
    assert SEND_WINDOW_HELD._value.get() - held_before >= 1  # the fourth waited (the fifth may not have)


def test_a_send_held_past_its_timeout_is_not_attempted(
    client: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmd_tasks.infra.ratelimit import SmsThrottle

    throttle = SmsThrottle(client, key, 2, headroom=0.0)
    monkeypatch.setattr(SmsThrottle, "reserve", _slots_now)
    throttle.acquire("sale", 100, parts=2, timeout_seconds=1)  # the account's second is full

    with pytest.raises(TransientError, match=r"rate limit 2/s: no slot within 0s"):
        throttle.acquire("sale", 100, parts=1, timeout_seconds=0.2)


# --- SmsThrottle: a batch's slots in one reservation -------------------------------------------------


def test_a_batch_reservation_spaces_its_sends_and_the_next_one_comes_after_it(client: redis.Redis, key: str) -> None:
    from dmd_tasks.infra.ratelimit import SmsThrottle

    # Given an account capped at 10 parts a second (no headroom), a sale at 5 messages a second,
    # and two processes that send for it
    first, second = SmsThrottle(client, key, 10, headroom=0.0), SmsThrottle(client, key, 10, headroom=0.0)
    sale = f"sale-{key}"

    # When one reserves for three sends (1, 3 and 1 parts) and then the other for one
    slots = first.reserve(sale, 5, [1, 3, 1], timeout_seconds=10)
    later = second.reserve(sale, 5, [1], timeout_seconds=10)

    # Then the batch's sends are a sale's spacing apart (0.2 s) or, after the three-part one,
    # the account's for three parts (0.3 s); the other process's send comes after the last
    assert [round(b - a, 2) for a, b in itertools.pairwise(slots)] == [0.2, 0.3]
    assert round(later[0] - slots[-1], 1) == 0.2


def test_a_batch_reserves_only_the_slots_that_come_within_its_wait(client: redis.Redis, key: str) -> None:
    from dmd_tasks.infra.ratelimit import SmsThrottle

    throttle = SmsThrottle(client, key, 10, headroom=0.0)
    sale = f"sale-{key}"

    # At 10 a second, a wait of 0.45 s covers the slots at 0, 0.1, ..., 0.4 s: five of eight
    assert len(throttle.reserve(sale, 100, [1] * 8, timeout_seconds=0.45)) == 5
    # and the ones not reserved were not counted: the next slot is the sixth
    nxt = throttle.reserve(sale, 100, [1], timeout_seconds=10)[0]
    assert 0.45 <= nxt - time.monotonic() <= 0.55
    # When the first slot is already past the wait, nothing is reserved
    with pytest.raises(TransientError, match="no slot within"):
        throttle.reserve(sale, 100, [1], timeout_seconds=0.1)


def test_a_send_under_a_batchs_leave_is_stopped_by_a_circuit_that_opened_since(client: redis.Redis, key: str) -> None:
    from dmd_tasks.infra.circuit import ProviderPaused
    from dmd_tasks.infra.ratelimit import SmsThrottle

    throttle = SmsThrottle(client, key, 100, headroom=0.0)
    gate = (f"{key}:open", f"{key}:tripped")
    slot = throttle.reserve("sale", 100, [1], timeout_seconds=5)[0]

    # While the circuit is closed the send goes (counted in the account's second)
    throttle.go(slot, 1, time.monotonic() + 5, gate=gate)
    assert client.zcard(f"dmd:rate:sms:{key}:second") == 1
    # Open: paused for what is left of the pause, nothing counted
    client.set(gate[0], "1", px=3000)
    with pytest.raises(ProviderPaused) as paused:
        throttle.go(time.monotonic(), 1, time.monotonic() + 5, gate=gate)
    assert 2 < (paused.value.retry_after_seconds or 0) <= 3
    # Half-open: a probe goes first, alone (this send asks again later)
    client.delete(gate[0])
    client.set(gate[1], "1", px=3000)
    with pytest.raises(ProviderPaused, match="half-open"):
        throttle.go(time.monotonic(), 1, time.monotonic() + 5, gate=gate)
    assert client.zcard(f"dmd:rate:sms:{key}:second") == 1
