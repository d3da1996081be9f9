"""Data the benchmarks start from: events, fans, campaigns, sales."""

from __future__ import annotations

import time
from datetime import time as clock_time
from typing import Any

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable

TEMPLATE = "{{ event_name }}: tickets are on sale now! {{ short_url }} Reply STOP to opt out."
ALWAYS_OPEN = SendWindow(start=clock_time(0, 0), end=clock_time(0, 0))
TIMEZONES = ("America/New_York", "Europe/London", "Asia/Tokyo", "UTC")


def phone(n: int, area: int = 555) -> str:
    return f"+1{area}{n:07d}"


def demand_rows(event_id: str, fans: int, start: int = 0, area: int = 555) -> list[dict[str, Any]]:
    """``fans`` demand rows, every phone valid E.164, nobody opted out: one notification per fan."""
    return [
        item(
            Demand(eventId=event_id, fanId=f"fan{n:07d}", phone=phone(n, area), timezone=TIMEZONES[n % len(TIMEZONES)])
        )
        for n in range(start, start + fans)
    ]


def seed_event(settings: Settings, event_id: str, fans: int, *, short_url: bool = True, area: int = 555) -> float:
    """Write an event and its demand; returns the seconds the demand took to write."""
    from dmd_tasks.infra import aws

    table = DemandTable(settings)
    event = Event(
        id=event_id,
        name=f"Bench {event_id}",
        url=f"https://www.ticketmaster.com/event/{event_id}",
        shortUrl=f"https://bit.ly/{event_id}" if short_url else None,
    )
    table.put_items([item(event)])
    started = time.perf_counter()
    for start in range(0, fans, 10_000):  # bounded memory for a million fans
        table.put_items(demand_rows(event_id, min(10_000, fans - start), start, area), aws.io_pool(settings))
    return time.perf_counter() - started


def new_sale(settings: Settings, sale_id: str, event_id: str, rate_per_second: float) -> None:
    """A campaign and a sale due now (``waiting``: beat's claim picks it up)."""
    open_campaign_store(settings).put(
        Campaign(saleId=sale_id, eventId=event_id, template=TEMPLATE, window=ALWAYS_OPEN, ratePerSecond=rate_per_second)
    )
    DemandTable(settings).put_items([item(Sale(id=sale_id, eventId=event_id, notifyAt=iso(time.time() - 1)))])


def claim_sale(settings: Settings, sale_id: str) -> None:
    """Claim the sale as beat's ``claim_due_sales`` would (waiting → generating)."""
    if not SaleRecords(DemandTable(settings)).claim(sale_id, time.time(), settings.generate_lease_seconds):
        raise RuntimeError(f"sale {sale_id} could not be claimed")


def sale_status(settings: Settings, sale_id: str) -> str:
    sale = SaleRecords(DemandTable(settings)).get(sale_id) or {}
    return str(sale.get("status", "missing"))
