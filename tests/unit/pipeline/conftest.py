"""What the stage tests share: a ``Services`` over the session's stack, and seeding of events, fans,
campaigns, sales and notifications with ids of each test's own (other sessions and tests share the
table and the simulators)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time as clock
from typing import Any

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.services import Services
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import notification_key
from tests.helpers import unique_phones

ALWAYS_OPEN = SendWindow(start=clock(0), end=clock(0))


@pytest.fixture()
def services(stack) -> Services:
    # small chunks so that a 23-fan sale takes several chunks and runs
    return Services(load_settings(generate_chunk_size=5, generate_chunks_per_run=2))


def new_run() -> str:
    return uuid.uuid4().hex[:8]


def seed(services: Services, n: int, *, rate: float = 50.0, window: SendWindow = ALWAYS_OPEN) -> str:
    """An event with a short URL, ``n`` fans, a campaign and a due sale; returns the sale id."""
    run = new_run()
    event = Event(id=f"ev{run}", name="Show", url=f"https://www.ticketmaster.com/e/{run}", shortUrl="https://bit.ly/x")
    services.table.put_items([item(event)])
    phones = unique_phones(n)  # an opt-out or claim another test left never meets this sale's fans
    services.table.put_items(item(Demand(eventId=event.id, fanId=f"fan{i:03d}", phone=phones[i])) for i in range(n))
    sale_id = f"sale{run}"
    services.campaigns.put(
        Campaign(saleId=sale_id, eventId=event.id, template="{{ short_url }}", window=window, ratePerSecond=rate)
    )
    services.table.put_items([item(Sale(id=sale_id, eventId=event.id, notifyAt=iso(time.time() - 1)))])
    return sale_id


def notifications_of(services: Services, sale_id: str) -> list[dict[str, Any]]:
    return list(services.notifications_table.query_all(f"SALE#{sale_id}", "NOTIFICATION#"))


@pytest.fixture()
def seed_sale() -> Callable[..., str]:
    """``seed_sale(services, n, rate=..., window=...)``: see ``seed``."""
    return seed


@pytest.fixture()
def sale_notifications() -> Callable[[Services, str], list[dict[str, Any]]]:
    """``sale_notifications(services, sale_id)``: every notification item of the sale."""
    return notifications_of


@dataclass
class Outbox:
    """One sale's campaign and event, to which ``add`` adds notifications in a given status."""

    services: Services
    sale_id: str
    event_id: str

    def add(
        self,
        fan_id: str,
        *,
        phone: str | None = None,
        attempts: int = 0,
        status: str = "scheduled",
        tz: str = "UTC",
        expires_at: float | None = None,
    ) -> tuple[str, str]:
        """A notification of this sale (generated ``pending``, then moved as a stage would); returns
        (notification id, phone)."""
        notifications = self.services.notifications
        phone = phone or unique_phones(1)[0]
        now = time.time()
        new = notifications.new_item(
            sale_id=self.sale_id,
            event_id=self.event_id,
            fan_id=fan_id,
            phone=phone,
            tz=tz,
            send_after=now - 1,
            now=now,
            expires_at=expires_at,
        )
        self.services.notifications_table.put_items([{**new, "attempts": attempts}])
        if status in ("scheduled", "sending"):
            assert notifications.schedule(self.sale_id, fan_id, now)
        if status == "sending":
            assert notifications.claim_for_send(self.sale_id, fan_id, now, 60) is not None
        return f"{self.sale_id}:{fan_id}", phone

    def item(self, fan_id: str) -> dict[str, Any]:
        found = self.services.notifications_table.get(notification_key(self.sale_id, fan_id), what="test read")
        assert found is not None
        return found


@pytest.fixture()
def outbox(services: Services) -> Callable[..., Outbox]:
    """``outbox(rate=..., template=..., campaign=True)``: a new event and sale (with its campaign,
    unless ``campaign=False``) to add notifications to."""

    def make(
        *,
        rate: float = 50.0,
        template: str = "{{ event_name }}: {{ short_url }}",
        campaign: bool = True,
        window: SendWindow = ALWAYS_OPEN,
    ) -> Outbox:
        run = new_run()
        event = Event(
            id=f"ev{run}", name="Show", url=f"https://www.ticketmaster.com/e/{run}", shortUrl="https://bit.ly/s"
        )
        services.table.put_items([item(event)])
        sale_id = f"sale{run}"
        if campaign:
            services.campaigns.put(
                Campaign(saleId=sale_id, eventId=event.id, template=template, window=window, ratePerSecond=rate)
            )
        return Outbox(services, sale_id, event.id)

    return make
