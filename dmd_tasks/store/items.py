"""The table item of any entity the product writes (events, demand rows, sales), for writers
that hold domain objects: the demo, the benchmarks, the tests."""

from __future__ import annotations

from typing import Any

from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.store.demand import demand_item
from dmd_tasks.store.events import event_item
from dmd_tasks.store.sales import sale_item


def item(entity: Event | Demand | Sale) -> dict[str, Any]:
    """``entity`` as the item the table holds for it."""
    if isinstance(entity, Event):
        return event_item(entity)
    if isinstance(entity, Demand):
        return demand_item(entity)
    return sale_item(entity)
