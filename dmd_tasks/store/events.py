"""EVENT items: an event and its short URL, stored once."""

from __future__ import annotations

from typing import Any

from dmd_tasks.domain.entities import Entity, Event
from dmd_tasks.store.keys import event_key
from dmd_tasks.store.table import DemandTable


def event_item(event: Event) -> dict[str, Any]:
    item: dict[str, Any] = {
        **event_key(event.id),
        "entity": Entity.EVENT.value,
        "id": event.id,
        "name": event.name,
        "url": event.url,
    }
    if event.short_url:
        item["shortUrl"] = event.short_url
    return item


class EventRecords:
    def __init__(self, table: DemandTable) -> None:
        self._table = table

    def put(self, event: Event) -> None:
        """Write an event (the product's side; the demo and the tests use it)."""
        self._table.put(event_item(event), what=f"put event {event.id}")

    def get(self, event_id: str) -> Event | None:
        item = self._table.get(event_key(event_id), what=f"get event {event_id}")
        return Event.model_validate(item) if item else None

    def set_short_url(self, event_id: str, short_url: str) -> bool:
        """Store the event's short URL once. False when another writer stored one first."""
        return (
            self._table.update(
                event_key(event_id),
                what=f"store short URL of {event_id}",
                update="SET shortUrl = :u",
                condition="attribute_exists(pk) AND (attribute_not_exists(shortUrl) OR shortUrl = :u)",
                values={":u": short_url},
            )
            is not None
        )
