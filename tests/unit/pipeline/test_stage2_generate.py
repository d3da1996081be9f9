"""Stage 2, generation, called directly against moto, Redis and the Bitly simulator (no workers).

These cover what is hard to provoke through the whole pipeline: a generator that stops
mid-sale and resumes, a second beat claiming the same sale, a run that hands over on time,
a sale the product saves again after (or while) it ran, an operator's rerun.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.pipeline import stage2_generate
from dmd_tasks.pipeline.stage2_generate import claim_due_sales, generate_sale
from dmd_tasks.services import Services
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import sale_run_key

Seed = Callable[..., str]
Notifications = Callable[[Services, str], list[dict[str, Any]]]


def test_a_sale_is_claimed_once_however_many_beats_tick(services: Services, seed_sale: Seed) -> None:
    sale_id = seed_sale(services, 1)
    now = time.time()
    assert sale_id in {s["id"] for s in services.sales.due(now)}
    results = [services.sales.claim(sale_id, now, 60) for _ in range(3)]
    assert results == ["claimed", None, None]
    assert sale_id not in {s["id"] for s in services.sales.due(now)}


def test_generation_resumes_from_its_checkpoint_without_duplicates_or_resets(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    sale_id = seed_sale(services, 23)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"

    # A run writes at most two chunks of five, then hands over
    first = generate_sale(sale_id, services)
    assert (first.outcome, first.written) == ("continue", 10)
    assert services.sales.get(sale_id)["cursor"] == "fan009"  # type: ignore[index]

    # Meanwhile the pipeline moves one notification on; and a run that took over the lease wrote part
    # of the next chunk, then crashed before its checkpoint (its lease then expires)
    sent = sale_notifications(services, sale_id)[0]
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
    services.notifications_table.put_items([{**partial, "status": "scheduled"}])

    # The next runs resume after the checkpoint, skip what exists, and finish
    second = generate_sale(sale_id, services)
    assert second.outcome == "continue" and second.already_present == 1
    third = generate_sale(sale_id, services)
    assert third.outcome == "done"
    again = generate_sale(sale_id, services)
    assert again.outcome == "already-generated"

    items = sale_notifications(services, sale_id)
    assert len(items) == 23 == len({i["fanId"] for i in items})
    by_fan = {i["fanId"]: i["status"] for i in items}
    assert by_fan[sent["fanId"]] == "scheduled" and by_fan["fan011"] == "scheduled"  # nothing reset to pending
    assert services.sales.get(sale_id)["generated"] == 23  # type: ignore[index]


def test_a_clean_handover_skips_the_existence_check(
    services: Services, seed_sale: Seed, sale_notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs that follow the claim or a clean handover know nothing exists past the cursor: no look-ups."""
    from dmd_tasks.store.notifications import NotificationRecords

    sale_id = seed_sale(services, 12)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    looked_up: list[int] = []
    original = NotificationRecords.existing_fans
    monkeypatch.setattr(
        NotificationRecords,
        "existing_fans",
        lambda self, *a, **k: looked_up.append(1) or original(self, *a, **k),  # type: ignore[func-returns-value]
    )
    assert generate_sale(sale_id, services).outcome == "continue"
    assert generate_sale(sale_id, services).outcome == "done"
    assert looked_up == []
    assert len(sale_notifications(services, sale_id)) == 12


def test_a_run_reads_no_demand_page_it_will_not_write(
    services: Services, seed_sale: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next page is read ahead while a chunk is written, but not after the run's last chunk."""
    sale_id = seed_sale(services, 23)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    queries: list[dict[str, Any]] = []
    original = services.table.query
    monkeypatch.setattr(services.table, "query", lambda **kw: queries.append(kw) or original(**kw))  # type: ignore[func-returns-value]
    first = generate_sale(sale_id, services)
    assert (first.outcome, first.chunks) == ("continue", 2)
    demand_reads = [q for q in queries if q.get("KeyConditionExpression", "").startswith("pk = :pk AND begins")]
    assert len(demand_reads) == 2  # two chunks of five, two pages; not a third for the next run


def claimed_sale(
    seed_sale: Seed, monkeypatch: pytest.MonkeyPatch, fans: int, **settings: Any
) -> tuple[Services, str, list[int]]:
    """A claimed sale of ``fans`` under these settings, and the ``Limit`` of every Query made after."""
    services = Services(load_settings(**settings))
    sale_id = seed_sale(services, fans)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    limits: list[int] = []
    original = services.table.query
    monkeypatch.setattr(services.table, "query", lambda **kw: limits.append(kw.get("Limit", 0)) or original(**kw))  # type: ignore[func-returns-value]
    return services, sale_id, limits


def test_a_sales_first_chunk_is_small_and_its_chunks_grow_to_whole_ones_so_sending_begins_while_the_rest_is_written(
    stack, seed_sale: Seed, sale_notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    ramp, sale_id, limits = claimed_sale(
        seed_sale, monkeypatch, 60, generate_chunk_size=20, generate_chunks_per_run=4, generate_first_chunk_size=2
    )
    first = generate_sale(sale_id, ramp)
    # 2, then 2.5 times the one before (5, 12), then whole chunks of 20: one demand page each
    assert (first.outcome, first.written, first.chunks) == ("continue", 2 + 5 + 12 + 20, 4)
    assert limits == [2, 5, 12, 20]  # the run hands over after four chunks: no page read for a fifth
    assert ramp.sales.get(sale_id)["cursor"] == "fan038"  # type: ignore[index]
    limits.clear()
    second = generate_sale(sale_id, ramp)  # from the cursor: whole chunks (20, and the last 1)
    assert (second.outcome, second.written, second.chunks) == ("done", 21, 2)
    assert limits[0] == 20
    items = sale_notifications(ramp, sale_id)
    assert len(items) == 60 == len({i["fanId"] for i in items})


def test_a_sales_first_chunk_once_written_asks_for_a_scheduling_tick_and_no_later_chunk_does(
    stack, seed_sale: Seed, sale_notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    ramp, sale_id, _ = claimed_sale(
        seed_sale, monkeypatch, 12, generate_chunk_size=5, generate_chunks_per_run=2, generate_first_chunk_size=2
    )
    written_when_called: list[int] = []

    def first_written() -> None:
        written_when_called.append(len(sale_notifications(ramp, sale_id)))

    assert generate_sale(sale_id, ramp, first_written=first_written).outcome == "continue"
    # once, with the first chunk (two fans) written: not again for the chunk of five after it
    assert written_when_called == [2]
    # the run that resumes from the cursor writes no first chunk
    assert generate_sale(sale_id, ramp, first_written=first_written).outcome == "done"
    assert written_when_called == [2]


def test_a_run_hands_over_when_its_time_is_up_however_few_chunks_it_wrote(
    stack, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    slow_table = Services(load_settings(generate_chunk_size=5, generate_chunks_per_run=100, generate_run_seconds=0))
    sale_id = seed_sale(slow_table, 12)
    assert slow_table.sales.claim(sale_id, time.time(), 60) == "claimed"
    first = generate_sale(sale_id, slow_table)
    assert (first.outcome, first.written, first.chunks) == ("continue", 5, 1)
    while (result := generate_sale(sale_id, slow_table)).outcome == "continue":
        pass
    assert result.outcome == "done"
    assert len(sale_notifications(slow_table, sale_id)) == 12


def test_a_second_generator_cannot_take_a_live_lease(services: Services, seed_sale: Seed) -> None:
    sale_id = seed_sale(services, 3)
    now = time.time()
    assert services.sales.claim(sale_id, now, 60) == "claimed"
    lease = services.sales.get(sale_id)["leaseUntil"]  # type: ignore[index]
    assert services.sales.take_lease(sale_id, lease, now, 60) is not None
    # the lease moved on: someone still holding the old value is refused
    assert services.sales.take_lease(sale_id, lease, now, 60) is None


def test_a_sale_nobody_claimed_is_not_generated(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    sale_id = seed_sale(services, 3)  # still waiting: beat has not claimed it
    assert generate_sale(sale_id, services).outcome == "not-claimed"
    assert sale_notifications(services, sale_id) == []


def test_a_missing_sale_or_campaign_is_a_permanent_error(services: Services, seed_sale: Seed) -> None:
    with pytest.raises(PermanentError, match="not found"):
        generate_sale(f"nosuch{uuid.uuid4().hex[:8]}", services)

    # Given a claimed sale whose campaign is not in the campaign store
    orphan = f"orphan{uuid.uuid4().hex[:8]}"
    services.table.put_items([item(Sale(id=orphan, eventId="ev-none", notifyAt=iso(time.time() - 1)))])
    assert services.sales.claim(orphan, time.time(), 60) == "claimed"
    with pytest.raises(PermanentError, match="no campaign"):
        generate_sale(orphan, services)


def test_opted_out_fans_get_nothing_and_invalid_phones_fail_at_birth(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given a sale of three fans, one of whom said STOP, and a fourth registered with a bad number
    sale_id = seed_sale(services, 3)
    event_id = services.sales.get(sale_id)["eventId"]  # type: ignore[index]
    fans = [row for page in services.demand.pages(event_id, None, 100) for row in page]
    services.demand.add_optout(fans[0]["phone"], time.time())
    services.table.put_items([item(Demand(eventId=event_id, fanId="fan999", phone="555-0100"))])
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"

    # When the generator runs to the end
    while (result := generate_sale(sale_id, services)).outcome == "continue":
        pass

    # Then the opted-out fan has no notification, and the bad number's is failed with the reason
    assert result.outcome == "done"
    by_fan = {i["fanId"]: i for i in sale_notifications(services, sale_id)}
    assert fans[0]["fanId"] not in by_fan
    assert {by_fan[f["fanId"]]["status"] for f in fans[1:]} == {"pending"}
    assert by_fan["fan999"]["status"] == "failed"
    assert "no country code" in by_fan["fan999"]["reason"]
    assert "gsi1pk" not in by_fan["fan999"]  # never found by the scheduler


def test_an_event_without_a_short_url_is_shortened_before_generating(services: Services, seed_sale: Seed, sim) -> None:
    # Given a claimed sale whose event was never shortened
    sale_id = seed_sale(services, 2)
    event_id = services.sales.get(sale_id)["eventId"]  # type: ignore[index]
    long_url = f"https://www.ticketmaster.com/e/{uuid.uuid4().hex}"
    services.table.put_items([item(Event(id=event_id, name="Show", url=long_url))])
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"

    # When it is generated
    assert generate_sale(sale_id, services).outcome == "done"

    # Then the event got its short URL, from one shortener call
    short_url = services.events.get(event_id).short_url  # type: ignore[union-attr]
    assert short_url is not None and short_url.startswith("https://bit.ly/")
    assert sim.bitly_calls(long_url) == 1


# --- a sale saved again by the product, and an operator's rerun -----------------------------------


def generate_to_the_end(services: Services, sale_id: str) -> tuple[int, int]:
    """Run the generator until the sale is done; returns (notifications written, already present)."""
    written = present = 0
    while True:
        result = generate_sale(sale_id, services)
        written, present = written + result.written, present + result.already_present
        if result.outcome != "continue":
            assert result.outcome == "done"
            return written, present


def move_on(services: Services, sale_id: str, scheduled: list[str], sent: list[str]) -> None:
    """What the pipeline does meanwhile: schedules some notifications, sends others."""
    now = time.time()
    notifications = services.notifications
    for fan_id in scheduled + sent:
        assert notifications.schedule(sale_id, fan_id, now)
    for fan_id in sent:
        claim = notifications.claim_for_send(sale_id, fan_id, now, 60)
        assert claim is not None
        assert notifications.mark_sent(sale_id, fan_id, f"SM{uuid.uuid4().hex}", now, lease_token=claim["leaseToken"])


def written_again_as_waiting(services: Services, sale_id: str) -> None:
    """The product saves the sale again (its SALE item is replaced by a waiting one, due now)."""
    stored = services.sales.get(sale_id)
    assert stored is not None
    services.sales.put(Sale(id=sale_id, eventId=stored["eventId"], notifyAt=iso(time.time() - 1)))


def event_of(services: Services, sale_id: str) -> str:
    stored = services.sales.get(sale_id)
    assert stored is not None
    return str(stored["eventId"])


def restored_count() -> float:
    return REGISTRY.get_sample_value("dmd_reconciler_actions_total", {"action": "sale_restored"}) or 0.0


def test_a_generated_sale_written_again_as_waiting_is_restored_and_not_generated_again(
    services: Services, seed_sale: Seed, sale_notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sale generated to the end, whose notifications the pipeline has moved on
    sale_id = seed_sale(services, 6)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    assert generate_to_the_end(services, sale_id) == (6, 0)
    move_on(services, sale_id, scheduled=["fan000"], sent=["fan001"])
    before = {i["fanId"]: i for i in sale_notifications(services, sale_id)}

    # When the product saves the sale again as waiting, and beat's claim tick finds it due
    written_again_as_waiting(services, sale_id)
    enqueued: list[Any] = []
    monkeypatch.setattr(stage2_generate, "get_services", lambda: services)
    # (the tick sees this sale only: the session's table holds other tests' due and stalled sales)
    monkeypatch.setattr(services.sales, "due_ahead", lambda now, ahead: ([services.sales.get(sale_id)], None))
    monkeypatch.setattr(services.sales, "stalled_ahead", lambda now, ahead: ([], None))
    monkeypatch.setattr(stage2_generate.generate_notifications, "apply_async", lambda *a, **k: enqueued.append(a))
    restored_before = restored_count()
    outcome = claim_due_sales.run()

    # Then it is restored to its run's outcome: not claimed, no generation enqueued, counted
    assert (outcome["claimed"], outcome["restored"], outcome["restarted"]) == (0, 1, 0)
    assert enqueued == []
    assert restored_count() == restored_before + 1
    stored = services.sales.get(sale_id)
    assert stored is not None and stored["status"] == "generated"
    assert sale_id in services.sales.active()
    # And a generation message that arrives anyway writes nothing: no notification changed
    assert generate_sale(sale_id, services).outcome == "already-generated"
    after = {i["fanId"]: i for i in sale_notifications(services, sale_id)}
    assert after == before
    assert (after["fan000"]["status"], after["fan001"]["status"], after["fan002"]["status"]) == (
        "scheduled",
        "sent",
        "pending",
    )
    run = services.table.get(sale_run_key(sale_id), what="test read of a run")
    assert run is not None and run["runs"] == 1


def test_a_sale_written_again_during_generation_resumes_writing_only_missing_fans(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given a run that wrote two chunks (fan000-fan009) and handed over, notifications the pipeline
    # moved on, and one written past the cursor by a run that then died (fan017, already scheduled)
    sale_id = seed_sale(services, 23)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    first = generate_sale(sale_id, services)
    assert (first.outcome, first.written) == ("continue", 10)
    old_lease = services.sales.get(sale_id)["leaseUntil"]  # type: ignore[index]
    move_on(services, sale_id, scheduled=["fan000"], sent=["fan001"])
    now = time.time()
    ahead = services.notifications.new_item(
        sale_id=sale_id,
        event_id=event_of(services, sale_id),
        fan_id="fan017",
        phone="+15550000017",
        tz="UTC",
        send_after=now,
        now=now,
    )
    services.notifications_table.put_items([ahead])
    assert services.notifications.schedule(sale_id, "fan017", time.time())
    before = {i["fanId"]: i for i in sale_notifications(services, sale_id)}
    assert len(before) == 11

    # When the product saves the sale again as waiting before its generation ended
    written_again_as_waiting(services, sale_id)
    assert services.sales.claim(sale_id, time.time(), 60) == "restored"

    # Then it is a stalled generation that checks every fan, and the old run's lease is gone
    stored = services.sales.get(sale_id)
    assert stored is not None
    assert (stored["status"], stored.get("checkAll")) == ("generating", True)
    assert sale_id in {s["id"] for s in services.sales.stalled(time.time())}
    assert services.sales.checkpoint(sale_id, old_lease, "fan014", 5, time.time(), 60) is None
    # And the resumed generation writes only the fans that had no notification
    assert generate_to_the_end(services, sale_id) == (12, 11)
    after = {i["fanId"]: i for i in sale_notifications(services, sale_id)}
    assert len(after) == 23
    assert {fan: after[fan] for fan in before} == before  # none reset, none written over
    assert (after["fan000"]["status"], after["fan001"]["status"], after["fan017"]["status"]) == (
        "scheduled",
        "sent",
        "scheduled",
    )
    assert {after[f]["status"] for f in after if f not in before} == {"pending"}
    stored = services.sales.get(sale_id)
    assert stored is not None and (stored["status"], stored["generated"]) == ("generated", 23)


def test_a_rerun_gives_notifications_to_fans_added_since_and_leaves_the_others(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given a sale generated to the end, whose notifications the pipeline has moved on
    sale_id = seed_sale(services, 3)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    assert generate_to_the_end(services, sale_id) == (3, 0)
    move_on(services, sale_id, scheduled=["fan000"], sent=["fan001"])
    before = {i["fanId"]: i for i in sale_notifications(services, sale_id)}
    # and two fans who registered since
    event_id = event_of(services, sale_id)
    services.table.put_items(
        item(Demand(eventId=event_id, fanId=fan, phone=f"+1666{int(uuid.uuid4().hex[:7], 16) % 10**7:07d}"))
        for fan in ("fan100", "fan101")
    )

    # When an operator re-runs it and beat claims it
    assert services.sales.rerun(sale_id, time.time())
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    stored = services.sales.get(sale_id)
    assert stored is not None and (stored["status"], stored.get("checkAll")) == ("generating", True)

    # Then the new fans get a notification and the others are left as they were
    assert generate_to_the_end(services, sale_id) == (2, 3)
    after = {i["fanId"]: i for i in sale_notifications(services, sale_id)}
    assert set(after) == {"fan000", "fan001", "fan002", "fan100", "fan101"}
    assert {fan: after[fan] for fan in before} == before
    assert (after["fan100"]["status"], after["fan101"]["status"]) == ("pending", "pending")
