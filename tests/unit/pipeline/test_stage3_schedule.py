"""Stage 3, scheduling, called directly against moto and Redis: the rate budget of a tick and quiet
hours that closed since generation (expired leases and retiring are the reconciler's: stage 6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from datetime import time as clock
from typing import Any

import pytest

from dmd_tasks.domain.campaigns import SendWindow
from dmd_tasks.infra.deadline import Deadline
from dmd_tasks.pipeline.stage2_generate import generate_sale
from dmd_tasks.pipeline.stage3_schedule import LAST_TICK_KEY, TickResult, run_tick, schedule_sale, tick_span
from dmd_tasks.services import Services
from dmd_tasks.store.table import TRANSACT_MAX_ITEMS

Seed = Callable[..., str]
Notifications = Callable[[Services, str], list[dict[str, Any]]]


def generated(services: Services, seed_sale: Seed, n: int, **kwargs: Any) -> str:
    """A sale of ``n`` fans, claimed and generated to the end (every notification ``pending``)."""
    sale_id = seed_sale(services, n, **kwargs)
    assert services.sales.claim(sale_id, time.time(), 60)
    while generate_sale(sale_id, services).outcome == "continue":
        pass
    return sale_id


def closed_now() -> SendWindow:
    """A one-hour UTC window that opens two hours from now."""
    hour = datetime.now(UTC).hour
    return SendWindow(start=clock((hour + 2) % 24), end=clock((hour + 3) % 24))


def test_the_scheduler_releases_no_more_than_the_rate_budget_per_tick(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    sale_id = generated(services, seed_sale, 30, rate=4)  # 4/s x 2 s interval = 8 a tick
    run_tick(services, sale_ids=[sale_id])
    statuses = [i["status"] for i in sale_notifications(services, sale_id)]
    assert statuses.count("scheduled") == 8
    assert statuses.count("pending") == 22


def test_a_window_closed_since_generation_defers_to_its_next_opening(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given notifications generated while the campaign's window was open
    sale_id = generated(services, seed_sale, 3)
    # When the campaign's window has closed by the time the scheduler takes them
    campaign = services.campaigns.get(sale_id)
    assert campaign is not None
    window = closed_now()
    services.campaigns.put(campaign.model_copy(update={"window": window}))
    now = time.time()
    result = TickResult()
    schedule_sale(services, sale_id, now, 2.0, result)

    # Then none is scheduled: each stays pending until the window opens again
    assert (result.scheduled, result.deferred) == (0, 3)
    items = sale_notifications(services, sale_id)
    assert {i["status"] for i in items} == {"pending"}
    opens = int(window.next_open_ts(now, "UTC"))
    assert opens > now
    assert {i["sendAfter"] for i in items} == {opens}
    # and the index does not offer them again before then
    assert [
        i
        for shard in services.notifications.shards()
        for i in services.notifications.due_pending(sale_id, shard, now, 10)
    ] == []


def capped(services: Services) -> Services:
    """The same services with an account cap of 20 parts a second."""
    return Services(services.settings.model_copy(update={"sms_account_parts_per_second": 20.0}))


def test_sales_share_the_account_cap_a_slow_one_gets_its_rate_a_fast_one_the_rest(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given an account capped at 20 parts a second, a 4/s sale and a 50/s sale, one part a message
    services = capped(services)
    interval = services.settings.schedule_interval_seconds
    slow = generated(services, seed_sale, 30, rate=4)
    fast = generated(services, seed_sale, 80, rate=50)

    # When one tick runs over both
    result = run_tick(services, sale_ids=[fast, slow])

    # Then the slow sale gets its own rate, the fast one what is left of the cap, and no more in all
    def scheduled(sale_id: str) -> int:
        return sum(1 for i in sale_notifications(services, sale_id) if i["status"] == "scheduled")

    assert scheduled(slow) == 4 * interval
    assert scheduled(fast) == (20 - 4) * interval
    assert result.scheduled == 20 * interval


def test_what_a_sale_leaves_unused_goes_to_the_others(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    services = capped(services)
    interval = services.settings.schedule_interval_seconds
    small = generated(services, seed_sale, 2, rate=50)  # asks for much, has two
    big = generated(services, seed_sale, 80, rate=50)
    run_tick(services, sale_ids=[small, big])
    statuses = [i["status"] for i in sale_notifications(services, big)]
    assert statuses.count("scheduled") == 20 * interval - 2


def test_a_pending_notification_past_its_validity_ends_expired(services: Services, seed_sale: Seed) -> None:
    sale_id = generated(services, seed_sale, 2)
    now = time.time()
    later = now + 4 * 3600 + 60  # the campaign's default validity is four hours
    result = TickResult()
    schedule_sale(services, sale_id, later, 2.0, result)
    assert result.expired == 2 and result.scheduled == 0
    items = [
        i
        for shard in services.notifications.shards()
        for i in services.notifications.due_pending(sale_id, shard, later, 10)
    ]
    assert items == []


def test_a_beat_tick_releases_the_time_since_the_last_one_within_half_an_interval_and_a_work_budget(
    services: Services,
) -> None:
    interval = services.settings.schedule_interval_seconds
    budget = services.settings.work_budget_seconds
    assert budget > 2 * interval  # the defaults this test reads: 2 s ticks, a 20 s work budget
    services.redis.delete(LAST_TICK_KEY)
    now = time.time()
    assert tick_span(services, now) == interval  # the first tick: one interval
    assert tick_span(services, now + interval * 1.25) == pytest.approx(interval * 1.25)  # late: the time it missed
    assert tick_span(services, now + interval * 1.3) == interval / 2  # early: at least half an interval
    # after a slow tick that held the lock for 12 s (the ticks in between were skipped): those 12 s
    assert tick_span(services, now + interval * 1.3 + 12) == pytest.approx(12)
    # after a pause (beat down, ticks lost): at most one work budget, not minutes of sends at once
    assert tick_span(services, now + interval * 1.3 + 12 + 300) == budget


def test_a_sale_is_given_its_lead_once_on_top_of_its_share(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given a 4/s sale with plenty due, and a lead of three seconds
    sale_id = generated(services, seed_sale, 60, rate=4)
    interval = services.settings.schedule_interval_seconds

    def scheduled() -> int:
        return sum(1 for i in sale_notifications(services, sale_id) if i["status"] == "scheduled")

    # When two ticks run: the first releases its share and the lead, the second its share only
    run_tick(services, sale_ids=[sale_id], lead_seconds=3)
    assert scheduled() == 4 * interval + 4 * 3
    run_tick(services, sale_ids=[sale_id], lead_seconds=3)
    assert scheduled() == 2 * 4 * interval + 4 * 3


def test_a_tick_slowed_by_its_store_keeps_what_it_moved_and_stops_at_its_deadline(
    services: Services, seed_sale: Seed, sale_notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sale with 250 due (four shards: a round of writes each) at 1000/s within the account's
    # cap, and a table that now takes 400 ms a transaction
    services = Services(services.settings.model_copy(update={"sms_account_parts_per_second": 5000.0}))
    sale_id = generated(services, seed_sale, 250, rate=1000)
    real = services.notifications.schedule_many
    rounds: list[tuple[float, float, float]] = []  # (began, pace then, ended) of each round of writes

    def slow(sale: str, fan_ids: list[str], now: float) -> list[str]:
        began, pace = time.monotonic(), services.write_pace.seconds
        time.sleep(0.4)
        try:
            return real(sale, fan_ids, now)
        finally:
            rounds.append((began, pace, time.monotonic()))

    monkeypatch.setattr(services.notifications, "schedule_many", slow)
    published: list[list[str]] = []

    # When a tick with a one-second budget runs
    deadline = Deadline.after(1.0)
    result = run_tick(services, sale_ids=[sale_id], span=1.0, deadline=deadline, publish=published.append)
    returned = time.monotonic()

    # Then it stopped at its deadline: no round was begun unless a whole round at the pace measured
    # until then fitted before it (the first at the initial pace; after it, each 0.4 s at least),
    # and nothing but the answer came after the last round (or the deadline). Checked against the
    # rule, not the wall clock: the emulator's own time on a loaded machine is not the tick's doing.
    # Ignoring the deadline begins a third round (and more) past it.
    assert 1 <= len(rounds) <= 2, rounds
    for began, pace, _ in rounds:
        assert began + pace <= deadline.at, (began - deadline.at, pace)
    for _, pace, _ in rounds[1:]:
        assert pace >= 0.4, pace
    assert returned - max(rounds[-1][2], deadline.at) < 0.3, returned - deadline.at
    assert result.cut_short and result.left > 0, result
    statuses = {i["fanId"]: i["status"] for i in sale_notifications(services, sale_id)}
    scheduled = sorted(f"{sale_id}:{fan}" for fan, status in statuses.items() if status == "scheduled")
    assert 0 < len(scheduled) == result.scheduled < 250
    assert sorted(nid for batch in published for nid in batch) == scheduled
    # and the next tick sizes its batch from the latency it measured: with time for one round and a
    # half, it takes one round's worth, not all that is due
    pace = services.write_pace.seconds
    assert pace >= 0.4
    again = run_tick(services, sale_ids=[sale_id], span=1.0, deadline=Deadline.after(1.5 * pace))
    assert 0 < again.scheduled <= TRANSACT_MAX_ITEMS and again.cut_short, again


def test_a_write_once_slower_than_the_whole_budget_does_not_stop_the_scheduler(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given a pace measured when the table was throttled: one round took longer than a tick's budget
    services = Services(services.settings.model_copy(update={"sms_account_parts_per_second": 5000.0}))
    sale_id = generated(services, seed_sale, 150, rate=1000)
    services.write_pace.record(30.0)

    # When the next ticks run with a budget of a few seconds, the table fast again
    first = run_tick(services, sale_ids=[sale_id], span=1.0, deadline=Deadline.after(3.0))
    second = run_tick(services, sale_ids=[sale_id], span=1.0, deadline=Deadline.after(3.0))

    # Then each makes one round (which measures the pace again) instead of none for good
    assert first.scheduled == TRANSACT_MAX_ITEMS and first.rounds == 1, first
    assert services.write_pace.seconds < 30.0
    assert second.scheduled == 50, second
    statuses = [i["status"] for i in sale_notifications(services, sale_id)]
    assert statuses.count("scheduled") == 150


def test_a_tick_out_of_time_before_a_sale_leaves_it_to_the_next_tick(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    sale_id = generated(services, seed_sale, 5)
    result = run_tick(services, sale_ids=[sale_id], deadline=Deadline.after(0))
    assert result.sales_not_reached == 1 and result.scheduled == 0 and result.cut_short
    assert {i["status"] for i in sale_notifications(services, sale_id)} == {"pending"}
