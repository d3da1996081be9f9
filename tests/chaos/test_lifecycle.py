"""Faults of the notification lifecycle: a sale re-saved by the product, a send worker frozen past
its leases while another takes over, send messages lost, the reconciler's worker killed while
sales are retired. Each prints its figures (final, duplicates, lost, healed by the reconciler)."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from dmd_tasks.domain.entities import Sale
from dmd_tasks.infra import aws, topology
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import sale_key, sale_run_key
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable
from tests.chaos.scenario import (
    CHAOS_ENV,
    FANS,
    Killer,
    all_terminal,
    assert_healthy,
    caught_up,
    counts,
    demand_stream_end,
    figures,
    report,
    start_sale,
)
from tests.helpers import TaskRuns, wait_until

pytestmark = pytest.mark.chaos

LEASE_SECONDS = int(CHAOS_ENV["DMD_SEND_LEASE_SECONDS"])
STALE_SECONDS = float(CHAOS_ENV["DMD_SCHEDULED_STALE_SECONDS"])


def sale_item(settings, sale_id: str) -> dict[str, Any]:
    return DemandTable(settings).get(sale_key(sale_id), what="test: sale") or {}


def run_item(settings, sale_id: str) -> dict[str, Any]:
    return DemandTable(settings).get(sale_run_key(sale_id), what="test: run") or {}


def rewrite_as_waiting(settings, sale_id: str) -> None:
    """What a product does when it saves the sale again: the whole SALE item replaced, ``waiting``."""
    DemandTable(settings).put_items([item(Sale(id=sale_id, eventId=sale_id, notifyAt=iso(time.time())))])


def notification_items(settings, sale_id: str) -> list[dict[str, Any]]:
    return list(DemandTable(settings).for_notifications().query_all(f"SALE#{sale_id}", "NOTIFICATION#"))


def healed(settings, sale_id: str) -> dict[str, int]:
    """What the reconciler did to this sale's notifications, read from the notifications."""
    items = notification_items(settings, sale_id)
    return {
        "republished": sum(1 for i in items if int(i.get("republished", 0)) > 0),
        "taken_back": sum(1 for i in items if "send lease expired" in str(i.get("lastError", ""))),
    }


def wait_all_final(settings, sale_id: str, timeout: float = 300) -> None:
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=timeout, interval=1, what="every notification final"
    )


def sending_begun(settings, sale_id: str) -> bool:
    c = counts(settings, sale_id)
    return c.get("sent", 0) + c.get("delivered", 0) > 0


def freeze_mid_send(pipeline: ProcessGroup, settings, sale_id: str) -> dict[str, dict[str, Any]]:
    """SIGSTOP the send worker at a moment it holds notifications in ``sending`` (it is the only
    send worker: whatever is ``sending`` once it is frozen is its own); thaw and try again if not.
    Returns those notifications as they were at the freeze, by sort key."""
    for _ in range(30):
        wait_until(
            lambda: counts(settings, sale_id).get("sending", 0) > 0, timeout=60, interval=0.05, what="a send in flight"
        )
        pipeline.signal("worker-send", signal.SIGSTOP)
        time.sleep(0.5)  # a claim or a call the worker had begun reaches the table and the provider
        held = {i["sk"]: i for i in notification_items(settings, sale_id) if i["status"] == "sending"}
        if held:
            return held
        pipeline.signal("worker-send", signal.SIGCONT)
    raise AssertionError("never caught the send worker with a send in flight")


def leases_taken_back(settings, sale_id: str, held: dict[str, dict[str, Any]]) -> bool:
    """Every lease the frozen worker held is gone: its notification moved on under another lease, or
    out of ``sending`` (the reconciler's take-back, then the other worker's send)."""
    now = {i["sk"]: i for i in notification_items(settings, sale_id)}
    return all(
        now[sk]["status"] != "sending" or now[sk].get("leaseToken") != item["leaseToken"] for sk, item in held.items()
    )


def test_a_sale_written_again_as_waiting_is_never_generated_again(pipeline, settings, sim) -> None:
    # Given a sale being sent, re-saved by the product in the middle of it
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(lambda: sending_begun(settings, sale_id), timeout=60, what="sending to begin")
    rewrite_as_waiting(settings, sale_id)
    wait_all_final(settings, sale_id)
    wait_until(lambda: sale_item(settings, sale_id).get("status") == "generated", timeout=60, what="generated")
    first = figures(settings, sim, sale_id, FANS, 0)
    before = {i["fanId"]: (i["status"], int(i.get("attempts", 0))) for i in notification_items(settings, sale_id)}

    # When it is saved again once it has ended
    claims = TaskRuns(pipeline.log_dir / "worker-generate.log", "dmd_tasks.generate.claim_due_sales")
    schedules = TaskRuns(pipeline.log_dir / "worker-schedule.log", "dmd_tasks.schedule.schedule_notifications")
    rewrite_as_waiting(settings, sale_id)
    wait_until(lambda: sale_item(settings, sale_id).get("status") != "waiting", timeout=30, what="the re-save seen")
    # several claim and schedule ticks have run since
    wait_until(lambda: claims.since() >= 3 and schedules.since() >= 3, timeout=60, what="three ticks of each")

    # Then it was restored, not run again: nothing changed, nobody was messaged twice
    second = figures(settings, sim, sale_id, FANS, 0)
    after = {i["fanId"]: (i["status"], int(i.get("attempts", 0))) for i in notification_items(settings, sale_id)}
    report(
        "sale-rewritten",
        {
            **second,
            "runs": int(run_item(settings, sale_id).get("runs", 0)),
            "changed": len(set(before.items()) ^ set(after.items())),
        },
    )
    assert_healthy(second, settings)
    assert sale_item(settings, sale_id)["status"] == "generated"
    assert int(run_item(settings, sale_id)["runs"]) == 1
    assert after == before
    assert second["provider_accepted"] == first["provider_accepted"] == FANS


#: What the sender logs when a write of its own is refused because its lease is gone: after the
#: provider call (the fenced ``sent``), or before it (the lease nearly over, or lost).
REFUSED = (
    "changed before it was marked sent",
    "send lease nearly over before the provider call",
    "send lease lost before the provider call",
)


def test_a_send_worker_frozen_past_its_leases_writes_nothing_stale(pipeline: ProcessGroup, settings, sim) -> None:
    # Given a sale being sent by one send worker, through a provider that answers in 300 ms
    sim.configure(sms={"latency_ms": 300})
    sale_id, _ = start_sale(settings, FANS, rate=max(5.0, FANS / 20))
    wait_until(lambda: sending_begun(settings, sale_id), timeout=60, what="sending to begin")

    # When that worker freezes mid-send (a paused VM) past its leases, another worker takes over
    # what the reconciler takes back, and the frozen one wakes up and finishes what it was doing
    sender_log = pipeline.log_dir / "worker-send.log"
    held = freeze_mid_send(pipeline, settings, sale_id)
    log_at_freeze = sender_log.stat().st_size
    # a call in flight: the provider has the message of a notification still ``sending``
    in_flight = sum(1 for item in held.values() if sim.sms_messages_to(item["phone"]) > 0)
    sim.configure(sms={"latency_ms": 0})
    pipeline.start_one("worker-send", instance="worker-send-2", extra_args=["-n", "send2@%h"])
    wait_until(
        lambda: leases_taken_back(settings, sale_id, held),
        timeout=LEASE_SECONDS * 3,
        interval=0.5,
        what="the frozen worker's leases taken back",
    )
    pipeline.signal("worker-send", signal.SIGCONT)
    wait_all_final(settings, sale_id)
    # the woken worker's writes are all in its log once it has finished its tasks: a warm shutdown
    # (SIGTERM to the main process only; its pool's children finish what they hold first)
    frozen = pipeline.processes["worker-send"]
    frozen.send_signal(signal.SIGTERM)
    frozen.wait(timeout=60)

    # Then every notification is final once, and the frozen worker's late writes changed nothing
    # (the sender's own words when its fenced write finds the lease gone, after or before its call)
    woke = sender_log.read_text()[log_at_freeze:]
    stale = sum(woke.count(words) for words in REFUSED)
    result = figures(
        settings,
        sim,
        sale_id,
        FANS,
        0,
        held_at_freeze=len(held),
        calls_in_flight_at_freeze=in_flight,
        stale_writes_refused=stale,
        **healed(settings, sale_id),
    )
    report("send-worker-frozen", result)
    assert_healthy(result, settings)
    assert result["taken_back"] > 0, "the freeze left no lease to take back: the scenario did not happen"
    # a call the freeze caught in flight ends in a fenced write the woken worker finds refused
    assert stale >= in_flight, result


def test_the_reconciler_resends_scheduled_notifications_whose_message_was_lost(
    pipeline: ProcessGroup,
    settings,
    sim,
) -> None:
    # Given a sale whose send messages pile up while no send worker runs
    pipeline.kill("worker-send", signal.SIGTERM)
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(lambda: counts(settings, sale_id).get("scheduled", 0) == FANS, timeout=120, what="all scheduled")
    # the demand bridge has routed every change so far: each notification's send message is queued
    end = demand_stream_end(settings)
    wait_until(lambda: caught_up(settings, "bridge-demand", end), timeout=60, what="the bridge to route them all")

    # When every send message is lost (purged) and the send worker comes back
    sqs = aws.client("sqs", settings)
    sqs.purge_queue(QueueUrl=topology.queue_url(settings, "send"))
    pipeline.start_one("worker-send")
    wait_all_final(settings, sale_id, timeout=STALE_SECONDS * 3 + 240)

    # Then the reconciler published them again and each fan got one SMS
    result = figures(settings, sim, sale_id, FANS, 0, **healed(settings, sale_id))
    report("send-messages-lost", result)
    assert_healthy(result, settings)
    assert result["republished"] > 0
    assert result["provider_accepted"] == FANS


def test_the_reconciler_killed_while_sales_are_retired_retires_each_once_final(
    pipeline: ProcessGroup,
    settings,
    sim,
) -> None:
    # Given sales coming to their end while the worker that runs the reconciler is killed again and again
    sales = [start_sale(settings, FANS // 2, rate=max(10.0, FANS / 10))[0] for _ in range(2)]
    records = SaleRecords(DemandTable(settings))
    killer = Killer(pipeline, ["worker-schedule"], every=1.5, kills=12)
    killer.start()
    for sale_id in sales:
        wait_until(lambda s=sale_id: all_terminal(settings, s, FANS // 2), timeout=300, interval=1, what="final")  # type: ignore[misc]
    killer.join(timeout=60)

    # Then each sale leaves the active list, and only once all its notifications are final
    # moto answers each index query by scanning the whole table: at make-chaos size one reconciler pass
    # over two sales took about 15 s, and retiring takes two passes after the kills stop
    wait_until(lambda: not set(sales) & set(records.active()), timeout=180, what="the sales retired")
    results = [figures(settings, sim, s, FANS // 2, killer.kills) for s in sales]
    report(
        "retire-under-kills",
        {
            "kills": killer.kills,
            "sales": len(sales),
            "final": sum(r["terminal"] for r in results),
            "duplicates": sum(r["duplicates"] for r in results),
            "lost": sum(r["lost"] for r in results),
        },
    )
    for sale_id, result in zip(sales, results, strict=True):
        assert_healthy(result, settings)
        assert sale_item(settings, sale_id)["status"] == "generated"
        assert "retiredAt" in sale_item(settings, sale_id)
