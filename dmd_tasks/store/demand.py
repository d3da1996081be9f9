"""DEMAND items (a fan's registration for an event) and OPTOUT items (numbers that said STOP).

Demand lives under its event, so a sale's audience is one partition read page by page.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from dmd_tasks.domain.entities import Demand, Entity
from dmd_tasks.store.codec import deserialize, iso, serialize
from dmd_tasks.store.keys import DEMAND_PREFIX, demand_key, event_partition, optout_key, phone_of
from dmd_tasks.store.table import DemandTable


def demand_item(demand: Demand) -> dict[str, Any]:
    return {
        **demand_key(demand.event_id, demand.fan_id),
        "entity": Entity.DEMAND.value,
        "id": demand.id,
        "eventId": demand.event_id,
        "fanId": demand.fan_id,
        "phone": demand.phone,
        "timezone": demand.timezone,
    }


def optout_item(phone: str, now: float) -> dict[str, Any]:
    return {**optout_key(phone), "entity": Entity.OPTOUT.value, "at": iso(now)}


class DemandRecords:
    def __init__(self, table: DemandTable) -> None:
        self._table = table

    def put_many(self, demands: Iterable[Demand], pool: Executor | None = None) -> int:
        """Write demand rows (the product's side; the demo and the tests use it)."""
        return self._table.put_items((demand_item(d) for d in demands), pool)

    def pages(self, event_id: str, after_fan: str | None, page_size: int) -> Iterator[list[dict[str, Any]]]:
        """The event's demand rows after ``after_fan``, one DynamoDB page at a time (raw rows:
        the generator validates each one)."""
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :d)",
            "ExpressionAttributeValues": {":pk": {"S": event_partition(event_id)}, ":d": {"S": DEMAND_PREFIX}},
            "Limit": page_size,
            "ConsistentRead": True,
        }
        if after_fan:
            kwargs["ExclusiveStartKey"] = serialize(demand_key(event_id, after_fan))
        for page in self._table.query_pages(what=f"demand of event {event_id}", **kwargs):
            items = [deserialize(i) for i in page.get("Items", [])]
            if items:
                yield items

    # --- opt-outs ---------------------------------------------------------------------------

    def add_optout(self, phone: str, now: float) -> None:
        self._table.put(optout_item(phone, now), what="add opt-out")

    def add_optouts(self, phones: Iterable[str], now: float) -> int:
        return self._table.put_items(optout_item(p, now) for p in phones)

    def opted_out(self, phones: Iterable[str], pool: Executor | None = None) -> set[str]:
        """Which of these numbers opted out."""
        keys = [optout_key(p) for p in set(phones)]
        return {phone_of(k["pk"]) for k in self._table.existing_keys(keys, pool)}
