"""Each stage's logic called directly, against moto, Redis and the simulators (no workers).

These cover what is hard to provoke through the whole pipeline: a generator that stops
mid-sale and resumes, a second beat claiming the same sale, the scheduler's budget, a
receipt that arrives before our own ``sent`` write, and the shared rate limit.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import time as clock
from typing import Any

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.domain.provider_events import StatusEvent
from dmd_tasks.infra.ratelimit import SharedRateLimiter
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.pipeline.stage2_generate import generate_sale
from dmd_tasks.pipeline.stage3_schedule import run_tick
from dmd_tasks.pipeline.stage5_sms_status import apply_event
from dmd_tasks.services import Services
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item

pytestmark = pytest.mark.e2e


@pytest.fixture()
def services(stack) -> Services:  # type: ignore[no-untyped-def]
    # small chunks so that a 23-fan sale takes several chunks and runs
    return Services(load_settings(generate_chunk_size=5, generate_chunks_per_run=2))


def seed(services: Services, n: int, *, rate: float = 50.0) -> str:
    run = uuid.uuid4().hex[:8]
    event = Event(id=f"ev{run}", name="Show", url=f"https://www.ticketmaster.com/e/{run}", shortUrl="https://bit.ly/x")
    services.table.put_items([item(event)])
    area = int(run, 16) % 1000
    services.table.put_items(
        item(Demand(eventId=event.id, fanId=f"fan{i:03d}", phone=f"+1555{area:03d}{i:04d}")) for i in range(n)
    )
    sale_id = f"sale{run}"
    services.campaigns.put(
        Campaign(
            saleId=sale_id,
            eventId=event.id,
            template="{{ short_url }}",
            window=SendWindow(start=clock(0), end=clock(0)),
            ratePerSecond=rate,
        )
    )
    services.table.put_items([item(Sale(id=sale_id, eventId=event.id, notifyAt=iso(time.time() - 1)))])
    return sale_id


def notifications_of(services: Services, sale_id: str) -> list[dict[str, Any]]:
    return list(services.table.query_all(f"SALE#{sale_id}", "NOTIFICATION#"))


def test_a_sale_is_claimed_once_however_many_beats_tick(services: Services) -> None:
    sale_id = seed(services, 1)
    now = time.time()
    assert sale_id in {s["id"] for s in services.sales.due(now)}
    results = [services.sales.claim(sale_id, now, 60) for _ in range(3)]
    assert results == [True, False, False]
    assert sale_id not in {s["id"] for s in services.sales.due(now)}


def test_generation_resumes_from_its_checkpoint_without_duplicates_or_resets(services: Services) -> None:
    sale_id = seed(services, 23)
    assert services.sales.claim(sale_id, time.time(), 60)

    # A run writes at most two chunks of five, then hands over
    first = generate_sale(sale_id, services)
    assert (first.outcome, first.written) == ("continue", 10)
    assert services.sales.get(sale_id)["cursor"] == "fan009"  # type: ignore[index]

    # Meanwhile the pipeline moves one notification on; and a run that took over the lease wrote part
    # of the next chunk, then crashed before its checkpoint (its lease then expires)
    sent = notifications_of(services, sale_id)[0]
    services.notifications.schedule(sale_id, sent["fanId"], time.time())
    handed_over = services.sales.get(sale_id)["leaseUntil"]  # type: ignore[index]
    assert services.sales.take_lease(sale_id, handed_over, time.time() - 120, 60)
    partial = services.notifications.new_item(
        sale_id=sale_id,
        event_id=sent["eventId"],
        fan_id="fan011",
        phone="+15550000011",
        tz="UTC",
        send_after=time.time(),
        now=time.time(),
    )
    services.table.put_items([{**partial, "status": "scheduled"}])

    # The next runs resume after the checkpoint, skip what exists, and finish
    second = generate_sale(sale_id, services)
    assert second.outcome == "continue" and second.already_present == 1
    third = generate_sale(sale_id, services)
    assert third.outcome == "done"
    again = generate_sale(sale_id, services)
    assert again.outcome == "already-generated"

    items = notifications_of(services, sale_id)
    assert len(items) == 23 == len({i["fanId"] for i in items})
    by_fan = {i["fanId"]: i["status"] for i in items}
    assert by_fan[sent["fanId"]] == "scheduled" and by_fan["fan011"] == "scheduled"  # nothing reset to pending
    assert services.sales.get(sale_id)["generated"] == 23  # type: ignore[index]


def test_a_clean_handover_skips_the_existence_check(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that follow the claim or a clean handover know nothing exists past the cursor: no look-ups."""
    from dmd_tasks.store.notifications import NotificationRecords

    sale_id = seed(services, 12)
    assert services.sales.claim(sale_id, time.time(), 60)
    looked_up: list[int] = []
    original = NotificationRecords.existing_fans
    monkeypatch.setattr(
        NotificationRecords, "existing_fans", lambda self, *a, **k: looked_up.append(1) or original(self, *a, **k)
    )
    assert generate_sale(sale_id, services).outcome == "continue"
    assert generate_sale(sale_id, services).outcome == "done"
    assert looked_up == []
    assert len(notifications_of(services, sale_id)) == 12


def test_a_run_reads_no_demand_page_it_will_not_write(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next page is read ahead while a chunk is written, but not after the run's last chunk."""
    sale_id = seed(services, 23)
    assert services.sales.claim(sale_id, time.time(), 60)
    queries: list[dict[str, Any]] = []
    original = services.table.query
    monkeypatch.setattr(services.table, "query", lambda **kw: queries.append(kw) or original(**kw))
    first = generate_sale(sale_id, services)
    assert (first.outcome, first.chunks) == ("continue", 2)
    demand_reads = [q for q in queries if q.get("KeyConditionExpression", "").startswith("pk = :pk AND begins")]
    assert len(demand_reads) == 2  # two chunks of five, two pages; not a third for the next run


def test_a_run_hands_over_when_its_time_is_up_however_few_chunks_it_wrote(stack) -> None:  # type: ignore[no-untyped-def]
    slow_table = Services(load_settings(generate_chunk_size=5, generate_chunks_per_run=100, generate_run_seconds=0))
    sale_id = seed(slow_table, 12)
    assert slow_table.sales.claim(sale_id, time.time(), 60)
    first = generate_sale(sale_id, slow_table)
    assert (first.outcome, first.written, first.chunks) == ("continue", 5, 1)
    while (result := generate_sale(sale_id, slow_table)).outcome == "continue":
        pass
    assert result.outcome == "done"
    assert len(notifications_of(slow_table, sale_id)) == 12


def test_a_second_generator_cannot_take_a_live_lease(services: Services) -> None:
    sale_id = seed(services, 3)
    now = time.time()
    assert services.sales.claim(sale_id, now, 60)
    lease = services.sales.get(sale_id)["leaseUntil"]  # type: ignore[index]
    assert services.sales.take_lease(sale_id, lease, now, 60) is not None
    # the lease moved on: someone still holding the old value is refused
    assert services.sales.take_lease(sale_id, lease, now, 60) is None


def test_the_scheduler_releases_no_more_than_the_rate_budget_per_tick(services: Services) -> None:
    sale_id = seed(services, 30, rate=4)  # 4/s x 2 s interval = 8 a tick
    assert services.sales.claim(sale_id, time.time(), 60)
    while generate_sale(sale_id, services).outcome == "continue":
        pass
    run_tick(services)
    statuses = [i["status"] for i in notifications_of(services, sale_id)]
    assert statuses.count("scheduled") == 8
    assert statuses.count("pending") == 22


def test_a_receipt_before_our_sent_write_is_kept_until_it_applies(services: Services) -> None:
    sale_id = seed(services, 1)
    assert services.sales.claim(sale_id, time.time(), 60)
    generate_sale(sale_id, services)
    fan = notifications_of(services, sale_id)[0]["fanId"]
    services.notifications.schedule(sale_id, fan, time.time())
    assert services.notifications.claim_for_send(sale_id, fan, time.time(), 60)
    receipt = StatusEvent(
        type="status", message_id="SMabc", status="delivered", timestamp=iso(time.time()), reference=f"{sale_id}:{fan}"
    )
    # the provider was faster than our write: the receipt cannot apply yet
    assert apply_event(services, receipt) == "unresolved"
    assert services.notifications.mark_sent(sale_id, fan, "SMabc", time.time())
    # a receipt for another message id never applies to it
    other = receipt.model_copy(update={"message_id": "SMzzz"})
    assert apply_event(services, other) == "unresolved"
    assert apply_event(services, receipt) == "delivered"
    assert apply_event(services, receipt) == "duplicate"
    assert services.notifications.status_of(sale_id, fan) == "delivered"


def test_the_shared_rate_limit_holds_across_concurrent_callers(services: Services) -> None:
    limiter = SharedRateLimiter(services.redis, f"dmd:test:rate:{uuid.uuid4().hex}", window_seconds=1.0)
    grants: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(6):
            limiter.acquire(10, timeout_seconds=10)
            with lock:
                grants.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants.sort()
    assert len(grants) == 30
    busiest = max(sum(1 for g in grants if start <= g < start + 0.95) for start in grants)
    assert busiest <= 10
    assert grants[-1] - grants[0] >= 1.9  # 30 grants at 10/s need at least two full windows


def _round_trip(store: Any) -> None:
    campaign = Campaign(saleId=f"s{uuid.uuid4().hex[:6]}", eventId="e1", template="{{ short_url }}")
    store.put(campaign)
    assert store.get(campaign.sale_id) == campaign
    assert store.get("missing") is None


def test_embedded_campaign_store_round_trip(services: Services) -> None:
    _round_trip(services.campaigns)


@pytest.mark.skipif(
    not os.environ.get("DMD_TEST_MONGO_URL"), reason="no MongoDB here; set DMD_TEST_MONGO_URL to check the pymongo path"
)
def test_mongodb_campaign_store_round_trip() -> None:
    _round_trip(open_campaign_store(load_settings(mongo_url=os.environ["DMD_TEST_MONGO_URL"])))
