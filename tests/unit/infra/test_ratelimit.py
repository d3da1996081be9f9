"""The shared rate limit: a sliding window in the session's Redis, one key per test.

Windows are long (seconds) where a test counts grants, so that a slow machine cannot let a
window pass between two calls; the one test that waits for a slot uses a short window.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis

from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra.ratelimit import SharedRateLimiter


@pytest.fixture()
def client(settings, stack) -> redis.Redis:  # type: ignore[no-untyped-def]
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
