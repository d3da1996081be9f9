"""The table item of each product entity, and that the entity modules read it back."""

from __future__ import annotations

import uuid

import pytest

from dmd_tasks.domain.entities import Demand, Event, Sale, SaleStatus
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.demand import DemandRecords
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.items import item
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable


def test_each_entity_becomes_the_item_of_its_kind() -> None:
    event = item(Event(id="ev1", url="https://t.co/e"))
    demand = item(Demand(eventId="ev1", fanId="fan1", phone="+15550001234"))
    sale = item(Sale(id="s1", eventId="ev1", notifyAt="2026-11-25T10:00:00Z"))
    assert (event["pk"], event["sk"], event["entity"]) == ("EVENT#ev1", "EVENT", "EVENT")
    assert (demand["pk"], demand["sk"], demand["entity"]) == ("EVENT#ev1", "DEMAND#fan1", "DEMAND")
    assert (sale["pk"], sale["sk"], sale["entity"]) == ("SALE#s1", "SALE", "SALE")
    assert (sale["status"], sale["gsi1pk"], sale["gsi1sk"]) == ("waiting", "SALES#waiting", "2026-11-25T10:00:00Z")


def test_a_sale_past_waiting_is_not_put_in_the_due_index() -> None:
    for status in (SaleStatus.GENERATING, SaleStatus.GENERATED, SaleStatus.FAILED):
        sale = item(Sale(id="s1", eventId="ev1", notifyAt="2026-11-25T10:00:00Z", status=status))
        assert sale["status"] == status.value
        assert "gsi1pk" not in sale


def test_items_written_in_one_batch_read_back_through_their_modules(stack: object, settings: Settings) -> None:
    # Given an event, its demand and its sale written as items, the way the demo and benchmarks seed
    table = DemandTable(settings)
    run = uuid.uuid4().hex[:10]
    event = Event(id=f"ev{run}", name="Show", url="https://t.co/e", shortUrl="https://bit.ly/x")
    fan = Demand(eventId=event.id, fanId="fan1", phone="+15550001234", timezone="Europe/Paris")
    sale = Sale(id=f"sale{run}", eventId=event.id, notifyAt="2026-11-25T10:00:00Z")
    assert table.put_items([item(event), item(fan), item(sale)]) == 3
    # Then each entity module reads what it expects
    assert EventRecords(table).get(event.id) == event
    [[row]] = list(DemandRecords(table).pages(event.id, None, 10))
    assert Demand.model_validate(row) == fan
    stored = SaleRecords(table).get(sale.id)
    assert stored is not None
    assert Sale.model_validate(stored) == sale


@pytest.mark.parametrize("entity", [Event(id="e", url="u"), Demand(eventId="e", fanId="f", phone="+15550001234")])
def test_items_hold_only_strings_and_integers(entity: Event | Demand) -> None:
    # the codec's fast path: nothing a product item holds goes through boto3's serializer
    assert all(type(v) in (str, int) for v in item(entity).values())
