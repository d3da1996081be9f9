"""Stage 1, shortening, against moto, Redis and the Bitly simulator: one call per event, ever."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from dmd_tasks.domain.entities import Event
from dmd_tasks.domain.errors import DisallowedUrl, PermanentError, TransientError
from dmd_tasks.pipeline.stage1_shorten import (
    EventNotFound,
    ShortenOutcome,
    shorten_event,
    shorten_event_url,
    shorten_with,
)
from dmd_tasks.services import Services
from dmd_tasks.store.events import EventRecords


def new_event(services: Services, *, url: str | None = None, short_url: str | None = None) -> Event:
    run = uuid.uuid4().hex
    event = Event(
        id=f"ev{run[:12]}", name="Show", url=url or f"https://www.ticketmaster.com/e/{run}", shortUrl=short_url
    )
    services.events.put(event)
    return event


def shorten(services: Services, event_id: str, *, lock_seconds: int = 5, **overrides: Any) -> ShortenOutcome:
    arguments: dict[str, Any] = {
        "events": services.events,
        "shortener": services.shortener,
        "redis_client": services.redis,
        "allowed_hosts": services.settings.shorten_allowed_hosts,
        "lock_seconds": lock_seconds,
        **overrides,
    }
    return shorten_event(event_id, **arguments)


def test_an_event_is_shortened_once_and_the_link_stored(services: Services, sim) -> None:
    event = new_event(services)

    assert shorten_with(services, event.id) is ShortenOutcome.SHORTENED
    stored = services.events.get(event.id)
    assert stored is not None and stored.short_url is not None
    assert stored.short_url.startswith("https://bit.ly/")
    assert sim.bitly_calls(event.url) == 1

    # a repeated message finds the link and calls nobody
    assert shorten_with(services, event.id) is ShortenOutcome.ALREADY_SHORTENED
    assert sim.bitly_calls(event.url) == 1
    assert services.events.get(event.id).short_url == stored.short_url  # type: ignore[union-attr]


def test_an_event_that_already_has_a_short_url_is_not_sent_to_the_shortener(services: Services, sim) -> None:
    event = new_event(services, short_url="https://bit.ly/given")

    assert shorten_with(services, event.id) is ShortenOutcome.ALREADY_SHORTENED
    assert sim.bitly_calls(event.url) == 0
    assert services.events.get(event.id).short_url == "https://bit.ly/given"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "url",
    ["https://evil.example.com/e/1", "javascript:alert(1)", "https://user:pw@www.ticketmaster.com/e/1"],
)
def test_a_disallowed_url_is_refused_without_a_call(services: Services, sim, url: str) -> None:
    event = new_event(services, url=url)
    before = sim.stats()["bitly"]["calls"]

    with pytest.raises(DisallowedUrl):
        shorten_with(services, event.id)

    assert sim.stats()["bitly"]["calls"] == before
    assert services.events.get(event.id).short_url is None  # type: ignore[union-attr]


def test_a_missing_event_is_a_transient_event_not_found(services: Services) -> None:
    with pytest.raises(EventNotFound) as raised:
        shorten_with(services, f"nosuch{uuid.uuid4().hex[:8]}")
    assert isinstance(raised.value, TransientError)  # the event row may still be on its way: retried


def test_a_worker_holding_the_event_lock_makes_the_others_retry(services: Services, sim) -> None:
    # Given another worker holds the event's shortening lock
    event = new_event(services)
    holder = services.redis.lock(f"dmd:lock:shorten:{event.id}", timeout=30)
    assert holder.acquire(blocking=False)
    try:
        # When this worker has waited its lock time for it
        with pytest.raises(TransientError) as raised:
            shorten(services, event.id, lock_seconds=1)
    finally:
        holder.release()

    # Then it gives up for now (retried soon) without calling the shortener
    assert type(raised.value) is TransientError
    assert raised.value.retry_after_seconds == 1
    assert sim.bitly_calls(event.url) == 0
    assert services.events.get(event.id).short_url is None  # type: ignore[union-attr]


def test_a_worker_that_waited_for_the_lock_finds_the_link_the_holder_stored(services: Services, sim) -> None:
    # Given another worker holds the lock and this one has read the event (no link yet)
    event = new_event(services)
    holder = services.redis.lock(f"dmd:lock:shorten:{event.id}", timeout=30)
    assert holder.acquire(blocking=False)
    read = threading.Event()

    class WatchedEvents(EventRecords):
        def get(self, event_id: str) -> Event | None:
            found = super().get(event_id)
            read.set()
            return found

    outcome: list[ShortenOutcome | BaseException] = []

    def waiter() -> None:
        try:
            outcome.append(shorten(services, event.id, events=WatchedEvents(services.table), lock_seconds=10))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        assert read.wait(10)
        # When the holder stores its link and lets go
        assert services.events.set_short_url(event.id, "https://bit.ly/holder")
    finally:
        holder.release()
    thread.join(15)

    # Then the waiter reads the link again under the lock and calls nobody
    assert outcome == [ShortenOutcome.ALREADY_SHORTENED]
    assert sim.bitly_calls(event.url) == 0
    assert services.events.get(event.id).short_url == "https://bit.ly/holder"  # type: ignore[union-attr]


def test_a_link_stored_by_another_writer_is_kept(services: Services, sim) -> None:
    # Given a writer outside the lock stores a link while this worker's call is under way
    event = new_event(services)

    class RacedShortener:
        def shorten(self, long_url: str) -> str:
            assert services.events.set_short_url(event.id, "https://bit.ly/other")
            return services.shortener.shorten(long_url)

    # When this worker's conditional write comes second
    outcome = shorten(services, event.id, shortener=RacedShortener())

    # Then the first link stays
    assert outcome is ShortenOutcome.STORED_BY_ANOTHER
    assert services.events.get(event.id).short_url == "https://bit.ly/other"  # type: ignore[union-attr]
    assert sim.bitly_calls(event.url) == 1


def test_a_failed_call_releases_the_lock_for_the_retry(services: Services, sim, faults) -> None:
    event = new_event(services)
    faults("bitly", error_rate=1.0)
    with pytest.raises(TransientError, match="upstream error 50"):
        shorten_with(services, event.id)
    assert services.events.get(event.id).short_url is None  # type: ignore[union-attr]

    # the retry, once the shortener is back, is not kept waiting by the failed attempt's lock
    faults("bitly", error_rate=0.0)
    assert shorten(services, event.id, lock_seconds=1) is ShortenOutcome.SHORTENED


@pytest.mark.parametrize("bad_id", ["a b", "", "x" * 65, "ev1\n", None])
def test_the_task_refuses_a_malformed_event_id_as_permanent(bad_id: Any) -> None:
    with pytest.raises(PermanentError, match="invalid shorten request"):
        shorten_event_url.run(bad_id)


def test_the_task_reports_its_outcome(services: Services) -> None:
    event = new_event(services)
    assert shorten_event_url.run(event.id) == "shortened"
    assert shorten_event_url.run(event.id) == "already-shortened"
