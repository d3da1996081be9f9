"""DEMAND and OPTOUT items against moto: an event's audience page by page after a cursor, and opt-outs."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from dmd_tasks.domain.entities import Demand
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import iso
from dmd_tasks.store.demand import DemandRecords, demand_item, optout_item
from dmd_tasks.store.table import DemandTable


@pytest.fixture()
def table(stack: object, settings: Settings) -> DemandTable:
    return DemandTable(settings)


@pytest.fixture()
def demand(table: DemandTable) -> DemandRecords:
    return DemandRecords(table)


def audience(demand: DemandRecords, n: int) -> str:
    event_id = f"ev{uuid.uuid4().hex[:12]}"
    assert (
        demand.put_many(Demand(eventId=event_id, fanId=f"fan{i:03d}", phone=f"+1555000{i:04d}") for i in range(n)) == n
    )
    return event_id


def phones(n: int) -> list[str]:
    return [f"+1{random.randrange(10**9, 10**10)}" for _ in range(n)]


def test_a_demand_item_is_keyed_under_its_event() -> None:
    row = demand_item(Demand(eventId="ev1", fanId="fan1", phone="+15550001234", timezone="Asia/Tokyo"))
    assert row == {
        "pk": "EVENT#ev1",
        "sk": "DEMAND#fan1",
        "entity": "DEMAND",
        "id": "ev1:fan1",
        "eventId": "ev1",
        "fanId": "fan1",
        "phone": "+15550001234",
        "timezone": "Asia/Tokyo",
    }


def test_an_optout_item_is_keyed_by_phone_with_its_time() -> None:
    assert optout_item("+15550001234", 0) == {
        "pk": "OPTOUT#+15550001234",
        "sk": "OPTOUT",
        "entity": "OPTOUT",
        "at": iso(0),
    }


def test_pages_read_the_whole_audience_in_pages_of_the_size_asked(demand: DemandRecords) -> None:
    event_id = audience(demand, 11)
    pages = list(demand.pages(event_id, None, 4))
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [r["fanId"] for p in pages for r in p] == [f"fan{i:03d}" for i in range(11)]
    assert pages[0][0]["phone"] == "+15550000000" and pages[0][0]["entity"] == "DEMAND"


def test_pages_start_after_the_cursor(demand: DemandRecords) -> None:
    event_id = audience(demand, 10)
    pages = list(demand.pages(event_id, "fan003", 4))
    assert [r["fanId"] for p in pages for r in p] == [f"fan{i:03d}" for i in range(4, 10)]
    assert all(len(p) <= 4 for p in pages)
    assert list(demand.pages(event_id, "fan009", 4)) == []  # nothing after the last fan


def test_pages_read_only_demand_not_the_event_item(demand: DemandRecords, table: DemandTable) -> None:
    event_id = audience(demand, 2)
    table.put({"pk": f"EVENT#{event_id}", "sk": "EVENT", "entity": "EVENT", "id": event_id, "url": "u"}, what="put")
    assert [r["fanId"] for p in demand.pages(event_id, None, 10) for r in p] == ["fan000", "fan001"]


def test_an_event_without_demand_has_no_pages(demand: DemandRecords) -> None:
    assert list(demand.pages(f"ev{uuid.uuid4().hex[:12]}", None, 10)) == []


def test_put_many_with_a_pool_writes_every_row(demand: DemandRecords) -> None:
    event_id = f"ev{uuid.uuid4().hex[:12]}"
    with ThreadPoolExecutor(max_workers=3) as pool:
        written = demand.put_many(
            (Demand(eventId=event_id, fanId=f"f{i:03d}", phone="+15550001234") for i in range(60)), pool
        )
    assert written == 60
    assert sum(len(p) for p in demand.pages(event_id, None, 25)) == 60


def test_opted_out_names_exactly_the_numbers_that_said_stop(demand: DemandRecords) -> None:
    stopped, others = phones(3), phones(4)
    demand.add_optout(stopped[0], 1000)
    assert demand.add_optouts(stopped[1:], 1000) == 2
    assert demand.opted_out(stopped + others + stopped[:1]) == set(stopped)
    assert demand.opted_out(others) == set()
    assert demand.opted_out([]) == set()


def test_opted_out_over_more_than_100_numbers_with_a_pool(demand: DemandRecords) -> None:
    numbers = phones(230)
    stopped = set(numbers[::50])
    demand.add_optouts(stopped, 1000)
    with ThreadPoolExecutor(max_workers=3) as pool:
        assert demand.opted_out(numbers, pool) == stopped
