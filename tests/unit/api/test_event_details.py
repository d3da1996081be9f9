"""Event details against Redis and the Discovery simulator: the 24 h cache, the stale copy served
when Discovery fails, the remembered 404 and one upstream call for concurrent misses. (The GraphQL
answers built on them are tested over HTTP in tests/e2e/test_api.py.)"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dmd_tasks.api.errors import InvalidArgument, NotFound, Unavailable
from dmd_tasks.api.event_details import EventDetailsService
from dmd_tasks.clients.discovery import DiscoveryClient
from dmd_tasks.infra.settings import Settings, load_settings
from simulators.faults import Faults
from tests.helpers import wait_until

# The service's cache keys of one event: the 24 h copy, the week-long copy served stale, the remembered 404.
FRESH, STALE, MISSING = "dmd:event:{}", "dmd:event-stale:{}", "dmd:event-missing:{}"


@pytest.fixture()
def tuned(stack) -> Settings:
    """The session's settings, but with room in Discovery's shared rate budget (5 a second) for these
    tests' calls in quick succession: a spent budget would serve stale copies where a test expects a fetch."""
    return load_settings(discovery_rate_per_second=1000)


@pytest.fixture()
def cache(tuned: Settings) -> redis.Redis:
    return redis.Redis.from_url(tuned.redis_url)


def service_over(settings: Settings, client: redis.Redis) -> EventDetailsService:
    return EventDetailsService(settings, client, DiscoveryClient.from_settings(settings))


@pytest.fixture()
def details(tuned: Settings, cache: redis.Redis) -> EventDetailsService:
    return service_over(tuned, cache)


@pytest.fixture()
def discovery_faults(sim) -> Iterator[Any]:
    """``discovery_faults(error_rate=1.0)`` for this test; Discovery is healthy again after it."""
    try:
        yield lambda **values: sim.configure(discovery=values)
    finally:
        sim.configure(discovery=Faults().public())


def new_id() -> str:
    return f"ed{uuid.uuid4().hex[:10]}"


def calls(sim, event_id: str) -> int:
    return int(sim.stats()["discovery"]["calls_by_event"].get(event_id, 0))


def test_a_miss_is_fetched_once_then_served_from_the_cache(
    tuned, details: EventDetailsService, cache: redis.Redis, sim
) -> None:
    event_id = new_id()

    cold = details.get(event_id)
    assert (cold["id"], cold["stale"]) == (event_id, False)
    assert cold["venue"]["name"] == "Simulated Arena" and cold["fetchedAt"].endswith("Z")
    # kept 24 h fresh, and a week as the copy to serve when Discovery fails
    assert 0 < cache.ttl(FRESH.format(event_id)) <= tuned.event_cache_ttl_seconds
    assert tuned.event_cache_ttl_seconds < cache.ttl(STALE.format(event_id)) <= tuned.event_stale_ttl_seconds

    # another process's service finds the same copy
    assert service_over(tuned, cache).get(event_id) == cold
    assert details.get(event_id) == cold
    assert calls(sim, event_id) == 1


@pytest.mark.parametrize("fault", ["error_rate", "throttle_rate"])
def test_when_discovery_fails_the_last_good_copy_is_served_marked_stale(
    details: EventDetailsService, cache: redis.Redis, discovery_faults, fault: str
) -> None:
    # Given a copy fetched earlier whose 24 h have passed
    event_id = new_id()
    fetched = details.get(event_id)
    cache.delete(FRESH.format(event_id))

    # When Discovery fails (5xx, or its quota is spent), the old copy is served, and says so
    discovery_faults(**{fault: 1.0})
    served = details.get(event_id)
    assert served == {**fetched, "stale": True}

    # and with no copy at all, the answer is that Discovery is unavailable
    with pytest.raises(Unavailable, match="event details unavailable"):
        details.get(new_id())


def test_a_404_is_remembered_briefly(tuned, details: EventDetailsService, cache: redis.Redis, sim) -> None:
    event_id = f"missing{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        with pytest.raises(NotFound):
            details.get(event_id)
    assert calls(sim, event_id) == 1
    assert 0 < cache.ttl(MISSING.format(event_id)) <= tuned.event_missing_ttl_seconds

    # once forgotten, Discovery is asked again
    cache.delete(MISSING.format(event_id))
    with pytest.raises(NotFound):
        details.get(event_id)
    assert calls(sim, event_id) == 2


@pytest.mark.parametrize("bad_id", ["a b", "", "x" * 65, "ev1\n", "../etc/passwd"])
def test_a_malformed_id_is_refused_before_any_call(details: EventDetailsService, sim, bad_id: str) -> None:
    before = sim.stats()["discovery"]["calls"]
    with pytest.raises(InvalidArgument, match="eventId"):
        details.get(bad_id)
    assert sim.stats()["discovery"]["calls"] == before


def test_concurrent_misses_make_one_upstream_call(details: EventDetailsService, discovery_faults, sim) -> None:
    discovery_faults(latency_ms=300)
    event_id = new_id()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: details.get(event_id), range(8)))
    assert {a["id"] for a in answers} == {event_id}
    assert calls(sim, event_id) == 1


def fetch_in_background(service: EventDetailsService, event_id: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(service.get(event_id))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_caller_waiting_on_a_fetch_that_failed_serves_the_stale_copy_without_calling(
    tuned, details: EventDetailsService, cache: redis.Redis, discovery_faults, sim
) -> None:
    # Given a stale copy, and a first caller whose fetch is under way and will fail
    event_id = new_id()
    details.get(event_id)
    cache.delete(FRESH.format(event_id))
    discovery_faults(latency_ms=500, error_rate=1.0)
    first, first_outcome = fetch_in_background(service_over(tuned, cache), event_id)
    wait_until(lambda: calls(sim, event_id) == 2, timeout=10, what="the first caller's request")

    # When a second caller asks meanwhile, it waits for the first one rather than calling too
    served = details.get(event_id)
    first.join(10)

    # Then both serve the stale copy, and Discovery was asked once
    assert served["stale"] is True and first_outcome[0]["stale"] is True
    assert calls(sim, event_id) == 2


def test_a_caller_waiting_on_a_fetch_that_failed_with_no_copy_is_unavailable(
    tuned, details: EventDetailsService, cache: redis.Redis, discovery_faults, sim
) -> None:
    event_id = new_id()
    discovery_faults(latency_ms=500, error_rate=1.0)
    first, first_outcome = fetch_in_background(service_over(tuned, cache), event_id)
    wait_until(lambda: calls(sim, event_id) == 1, timeout=10, what="the first caller's request")

    with pytest.raises(Unavailable, match="concurrent fetch did not produce a copy"):
        details.get(event_id)
    first.join(10)
    assert isinstance(first_outcome[0], Unavailable)
    assert calls(sim, event_id) == 1


def test_a_miss_that_takes_the_lock_after_another_caller_filled_the_cache_does_not_call_again(
    tuned, details: EventDetailsService, monkeypatch: pytest.MonkeyPatch, sim
) -> None:
    # Given a caller that found no copy, and another caller whose whole fetch completes before this
    # one takes the lock
    event_id = new_id()
    late = redis.Redis.from_url(tuned.redis_url)
    take_lock = late.lock

    def lock_after_the_other_caller_is_done(*args: Any, **kwargs: Any) -> Any:
        details.get(event_id)
        return take_lock(*args, **kwargs)

    monkeypatch.setattr(late, "lock", lock_after_the_other_caller_is_done)

    # When it goes on
    answer = service_over(tuned, late).get(event_id)

    # Then it serves the copy that is now there, and Discovery was asked once
    assert answer["id"] == event_id
    assert calls(sim, event_id) == 1


def test_a_waiting_caller_whose_fetcher_finished_between_two_looks_serves_the_fresh_copy(
    tuned, details: EventDetailsService, monkeypatch: pytest.MonkeyPatch, discovery_faults, sim
) -> None:
    # Given a first caller's fetch under way
    event_id = new_id()
    discovery_faults(latency_ms=300)
    first, first_outcome = fetch_in_background(details, event_id)
    wait_until(lambda: calls(sim, event_id) == 1, timeout=10, what="the first caller's request")

    # and a second caller that looked at the cache (nothing yet), and looks at the lock only after the
    # first caller stored its copy and let go
    waiting = redis.Redis.from_url(tuned.redis_url)
    look_at_lock = waiting.exists

    def exists_after_the_first_caller_is_done(*keys: Any) -> Any:
        first.join(10)
        return look_at_lock(*keys)

    monkeypatch.setattr(waiting, "exists", exists_after_the_first_caller_is_done)

    # When the second caller goes on, it serves the copy now in the cache
    answer = service_over(tuned, waiting).get(event_id)
    assert first_outcome[0]["stale"] is False
    assert (answer["id"], answer["stale"]) == (event_id, False)
    assert calls(sim, event_id) == 1
