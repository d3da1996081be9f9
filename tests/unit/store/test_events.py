"""EVENT items against moto: write and read an event, and store its short URL once."""

from __future__ import annotations

import uuid

import pytest

from dmd_tasks.domain.entities import Event
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.events import EventRecords, event_item
from dmd_tasks.store.table import DemandTable


@pytest.fixture()
def events(stack: object, settings: Settings) -> EventRecords:
    return EventRecords(DemandTable(settings))


def new_event(events: EventRecords, **extra: str) -> Event:
    event = Event(id=f"ev{uuid.uuid4().hex[:12]}", name="Show", url="https://www.ticketmaster.com/e/1", **extra)
    events.put(event)
    return event


def test_an_event_item_carries_its_short_url_only_once_it_has_one() -> None:
    bare = event_item(Event(id="ev1", name="Show", url="https://t.co/e"))
    assert bare == {
        "pk": "EVENT#ev1",
        "sk": "EVENT",
        "entity": "EVENT",
        "id": "ev1",
        "name": "Show",
        "url": "https://t.co/e",
    }
    assert event_item(Event(id="ev1", url="u", shortUrl="https://bit.ly/x"))["shortUrl"] == "https://bit.ly/x"


def test_an_event_reads_back_as_it_was_written(events: EventRecords) -> None:
    event = new_event(events, shortUrl="https://bit.ly/abc")
    assert events.get(event.id) == event


def test_a_missing_event_is_none(events: EventRecords) -> None:
    assert events.get(f"ev{uuid.uuid4().hex[:12]}") is None


def test_the_short_url_is_stored_once(events: EventRecords) -> None:
    event = new_event(events)
    assert events.set_short_url(event.id, "https://bit.ly/first")
    # the same URL again (a repeated message) is a success that changes nothing
    assert events.set_short_url(event.id, "https://bit.ly/first")
    # another writer's URL does not replace the first
    assert not events.set_short_url(event.id, "https://bit.ly/second")
    stored = events.get(event.id)
    assert stored is not None and stored.short_url == "https://bit.ly/first"
    assert (stored.name, stored.url) == (event.name, event.url)


def test_a_short_url_for_a_missing_event_creates_nothing(events: EventRecords) -> None:
    event_id = f"ev{uuid.uuid4().hex[:12]}"
    assert not events.set_short_url(event_id, "https://bit.ly/x")
    assert events.get(event_id) is None
