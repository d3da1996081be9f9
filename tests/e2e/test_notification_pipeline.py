"""A sale's whole life, end to end with real parts.

moto server, Redis, the Bitly and SMS simulators (the latter emitting delivery statuses
into Kinesis), and the Procfile's processes: both bridges, beat, and a worker per queue.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from datetime import time as clock
from decimal import Decimal
from typing import Any

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import get_settings
from dmd_tasks.ops import dlq as deadletter
from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.progress import count_by_status
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.services import sms_account
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.demand import DemandRecords
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import notification_key
from dmd_tasks.store.notifications import NotificationRecords
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable
from tests.helpers import TaskRuns, unique_phones, wait_until

pytestmark = pytest.mark.e2e

TERMINAL = {"delivered", "undelivered", "failed", "duplicate"}
ALWAYS_OPEN = SendWindow(start=clock(0), end=clock(0))


@pytest.fixture(scope="module")
def pipeline(settings, stack, sim) -> Iterator[ProcessGroup]:
    sim.configure(sms={"status_delay_ms": 100})
    group = ProcessGroup(
        settings.run_dir.resolve() / "logs" / "e2e-pipeline",
        env={
            "DMD_CLAIM_INTERVAL_SECONDS": "1",
            "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
            "DMD_RECONCILE_INTERVAL_SECONDS": "2",
            "DMD_SCHEDULED_STALE_SECONDS": "10",
        },
    )
    group.start(PIPELINE_PROCESSES)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture()
def records(settings):
    table = DemandTable(settings)
    return table.for_notifications(), NotificationRecords(table, settings.pending_shards), SaleRecords(table)


def new_sale(
    settings,
    fans: list[dict[str, Any]],
    *,
    window: SendWindow = ALWAYS_OPEN,
    rate: float = 50.0,
    template: str = "{{ event_name }} on sale now: {{ short_url }}",
    optouts: tuple[str, ...] = (),
    raw_rows: Callable[[str], list[dict[str, Any]]] | None = None,
) -> tuple[str, Event]:
    """A due sale of ``fans`` (and of ``raw_rows(event_id)``: demand items written as they are)."""
    run = uuid.uuid4().hex[:8]
    table = DemandTable(settings)
    event = Event(id=f"ev{run}", name=f"Show {run}", url=f"https://www.ticketmaster.com/e/{run}")
    table.put_items([item(event)])
    table.put_items(item(Demand(eventId=event.id, **fan)) for fan in fans)
    if raw_rows is not None:
        table.put_items(raw_rows(event.id))
    DemandRecords(table).add_optouts(optouts, time.time())
    sale_id = f"sale{run}"
    open_campaign_store(settings).put(
        Campaign(saleId=sale_id, eventId=event.id, template=template, window=window, ratePerSecond=rate)
    )
    table.put_items([item(Sale(id=sale_id, eventId=event.id, notifyAt=iso(time.time())))])
    return sale_id, event


def test_real_world_rows_one_sms_per_phone_and_a_bad_row_stops_nobody(pipeline, records, settings, sim) -> None:
    table, notifications, sales = records
    # Given twelve fans: three share one number written three ways, and three rows are bad (a time
    # zone stored as a number, a phone stored as a list, no fan id at all)
    audience = fans(12)
    shared = audience[0]["phone"]
    audience[5]["phone"] = f"{shared[:2]} {shared[2:5]} {shared[5:8]} {shared[8:]}"
    audience[9]["phone"] = f"{shared}\n"
    bad = {"tznum": f"{shared[:-4]}9001", "phonelist": f"{shared[:-4]}9002", "nofan": f"{shared[:-4]}9003"}

    def bad_rows(event_id: str) -> list[dict[str, Any]]:
        return [
            {**item(Demand(eventId=event_id, fanId="tznum", phone=bad["tznum"])), "timezone": Decimal(5)},
            {**item(Demand(eventId=event_id, fanId="phonelist", phone=shared)), "phone": [bad["phonelist"]]},
            {
                "pk": f"EVENT#{event_id}",
                "sk": "DEMAND#nofan",
                "entity": "DEMAND",
                "eventId": event_id,
                "phone": bad["nofan"],
            },
        ]

    sale_id, _ = new_sale(settings, audience, raw_rows=bad_rows)

    # When the sale runs, every notification ends final and the sale is generated
    counts = wait_until(
        lambda: all_terminal(notifications, sales, sale_id, 14), timeout=120, what="every notification final"
    )

    # Then the shared number got one SMS (the first fan's); the other two are duplicates naming that fan
    assert sim.sms_messages_to(shared) == 1
    assert counts["duplicate"] == 2
    for fan in ("fan5", "fan9"):
        duplicate = table.get(notification_key(sale_id, fan), what="test") or {}
        assert (duplicate["status"], duplicate["duplicateOf"]) == ("duplicate", "fan0")
    # and every other good fan got theirs; the bad rows failed with their reasons, without a call
    provider = sim.sms_sale(sale_id)
    assert provider["accepted"] == provider["recipients"] == 10 and provider["duplicates"] == 0
    for fan, words in (("tznum", "time zone"), ("phonelist", "phone number")):
        failed = table.get(notification_key(sale_id, fan), what="test") or {}
        assert failed["status"] == "failed" and words in failed["reason"], failed
    assert all(sim.sms_messages_to(phone) == 0 for phone in bad.values())


def fans(n: int, tz: str = "UTC", prefix: str | None = None) -> list[dict[str, Any]]:
    """``n`` fans with numbers no other sale of the session uses (the simulator counts SMS per number
    across every sale): a random area code and exchange, unless ``prefix`` fixes them."""
    phones = unique_phones(n) if prefix is None else [f"+1{prefix}{i:0{10 - len(prefix)}d}" for i in range(n)]
    return [{"fanId": f"fan{i}", "phone": phone, "timezone": tz} for i, phone in enumerate(phones)]


def statuses(notifications: NotificationRecords, sale_id: str) -> dict[str, int]:
    return count_by_status(DemandTable(get_settings()), sale_id)


def all_terminal(
    notifications: NotificationRecords, sales: SaleRecords, sale_id: str, expected: int
) -> dict[str, int] | None:
    counts = statuses(notifications, sale_id)
    sale = sales.get(sale_id) or {}
    done = sum(v for k, v in counts.items() if k in TERMINAL)
    return counts if sale.get("status") == "generated" and done == sum(counts.values()) == expected else None


def test_every_fan_gets_one_sms_and_every_notification_ends_terminal(pipeline, records, settings, sim) -> None:
    table, notifications, sales = records
    # Given 40 fans, two of them opted out before the sale and one with a number that is not E.164
    audience = fans(40)
    opted = (audience[3]["phone"], audience[17]["phone"])
    audience[25]["phone"] = "0044-not-e164"
    sale_id, event = new_sale(settings, audience, optouts=opted)

    # When the sale comes due, then every notification ends in a terminal status
    counts = wait_until(
        lambda: all_terminal(notifications, sales, sale_id, 38), timeout=120, what="every notification terminal"
    )
    assert sum(counts.values()) == 38

    # And the provider accepted exactly one SMS per reachable fan, none twice, none to opted-out fans
    provider = sim.sms_sale(sale_id)
    assert provider["duplicates"] == 0
    assert provider["accepted"] == provider["recipients"] == 37
    for phone in opted:
        assert sim.sms_messages_to(phone) == 0
    for fan in audience:
        if fan["phone"] not in opted and fan["phone"].startswith("+"):
            assert sim.sms_messages_to(fan["phone"]) == 1

    # And the invalid number failed with its reason, without a call
    bad = table.get(notification_key(sale_id, "fan25"), what="test") or {}
    assert bad["status"] == "failed" and "invalid phone number" in bad["reason"]

    # And the event got its short URL on the way, and the message carried it
    assert (EventRecords(DemandTable(settings)).get(event.id) or event).short_url

    # And none of the sale's own items (its run, phone claims, notifications) was dead-lettered by
    # the demand bridge: its dead-letter queue holds only what is really unusable
    letters = deadletter.receive(settings, "bridge-demand", max_messages=500)
    assert not [letter for letter in letters if sale_id in json.dumps(letter)]


def test_poison_on_the_status_stream_is_dead_lettered_and_every_receipt_after_it_is_applied(
    pipeline,
    records,
    settings,
    sim,
) -> None:
    """Records no provider would write, put on the status stream as a sale begins: each is in the
    status bridge's DLQ with its reason and position, and every delivery receipt of the sale
    (which follow them on the stream) is applied."""
    _, notifications, sales = records
    kinesis = aws.client("kinesis", settings)
    poison = {
        "nested 5,000 levels deep": b'{"type": "status", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "not JSON": b"\xff\xfe garbage",
        "a JSON array": b"[1, 2, 3]",
        "an event of no known type": b'{"type": "mystery", "message_id": "x"}',
        "a number as the status": b'{"type": "status", "message_id": "SM1", "status": 7, "timestamp": "t"}',
    }
    sequences = {
        kinesis.put_record(StreamName=settings.sms_status_stream_name, Data=data, PartitionKey="poison")[
            "SequenceNumber"
        ]: what
        for what, data in poison.items()
    }
    sale_id, _ = new_sale(settings, fans(12))

    counts = wait_until(
        lambda: all_terminal(notifications, sales, sale_id, 12), timeout=120, what="every receipt applied"
    )
    assert counts.get("sent", 0) == 0 and sim.sms_sale(sale_id)["accepted"] == 12

    def letters() -> dict[str, dict[str, Any]]:
        found = deadletter.receive(settings, "bridge-sms-status", max_messages=200)
        return {
            letter["position"]["sequence"]: letter
            for letter in found
            if (letter.get("position") or {}).get("sequence") in sequences
        }

    mine = wait_until(lambda: (lambda f: f if len(f) == len(sequences) else None)(letters()), timeout=30)
    for sequence, letter in mine.items():
        assert letter["reason"], sequences[sequence]
        assert letter["position"]["shard"].startswith("shardId-")
    assert "nested too deeply" in mine[next(s for s, w in sequences.items() if w.startswith("nested"))]["reason"]


def test_quiet_hours_hold_in_each_fans_time_zone(pipeline, records, settings, sim) -> None:
    _, notifications, _sales = records
    # Given a 09:00-21:00 window, fans in a zone where it is daytime now and fans where it is night
    hour = datetime.now(UTC).hour
    day_offset = next(k for k in range(-12, 13) if 10 <= (hour + k) % 24 <= 19)
    night_offset = next(k for k in range(-12, 13) if (hour + k) % 24 in (1, 2, 3, 4))
    # Etc/GMT zones have inverted signs: Etc/GMT-3 is UTC+3
    day_tz, night_tz = f"Etc/GMT{-day_offset:+d}", f"Etc/GMT{-night_offset:+d}"
    day, night = fans(6, day_tz), fans(6, night_tz)
    for f in night:
        f["fanId"] = "n" + f["fanId"]
    sale_id, _ = new_sale(settings, day + night, window=SendWindow(start=clock(9), end=clock(21)))

    # When the sale runs, then the daytime fans are messaged
    def day_done() -> bool:
        counts = statuses(notifications, sale_id)
        return sum(v for k, v in counts.items() if k in TERMINAL) == 6 and counts.get("pending") == 6

    wait_until(day_done, timeout=90, what="daytime fans terminal, night fans pending")
    ticks = TaskRuns(pipeline.log_dir / "worker-schedule.log", "dmd_tasks.schedule.schedule_notifications")
    wait_until(lambda: ticks.since() >= 3, timeout=30, what="three more scheduler ticks")

    # And the night fans are still pending, not messaged, waiting for 09:00 their time
    assert statuses(notifications, sale_id).get("pending") == 6
    for fan in night:
        assert sim.sms_messages_to(fan["phone"]) == 0
    for fan in day:
        assert sim.sms_messages_to(fan["phone"]) == 1
    pending = notifications.due_pending(sale_id, 0, time.time() + 86_400, 100)
    wake = {datetime.fromtimestamp(int(i["sendAfter"]), tz=UTC).hour for i in pending}
    assert wake == {(9 - night_offset) % 24}


def test_a_template_that_reaches_for_python_internals_never_sends(pipeline, records, settings, sim) -> None:
    _, notifications, sales = records
    # Given a campaign whose template was written around the API (the model refuses it)
    with pytest.raises(ValueError, match="outside a"):
        Campaign(saleId="x", eventId="y", template="{{ event_name.__class__.__init__.__globals__ }}")
    audience = fans(3)
    sale_id, _event = new_sale(settings, audience)
    store = open_campaign_store(settings)
    store._collection.update_one({"_id": sale_id}, {"$set": {"template": "{{ short_url.__class__.__mro__ }}"}})

    # When the sale comes due, then it fails visibly, with the reason, and no SMS leaves
    sale = wait_until(
        lambda: (s := sales.get(sale_id)) and s.get("status") == "failed" and s, timeout=60, what="the sale to fail"
    )
    assert "template" in sale["reason"]
    assert statuses(notifications, sale_id) == {}
    assert sim.sms_sale(sale_id)["accepted"] == 0
    letters = wait_until(
        lambda: [
            d
            for d in deadletter.receive(settings, "generate", max_messages=100)
            if d.get("payload", {}).get("args") == [sale_id]
        ],
        what="a dead letter",
    )
    assert "template" in letters[0]["reason"]


def test_stop_replies_opt_fans_out(pipeline, records, settings, sim) -> None:
    _table, notifications, sales = records
    # Given a provider whose recipients all reply STOP after delivery
    sim.configure(sms={"stop_reply_rate": 1.0})
    try:
        audience = fans(3)
        sale_id, _ = new_sale(settings, audience)
        counts = wait_until(lambda: all_terminal(notifications, sales, sale_id, 3), timeout=90, what="first sale done")
        # Then the numbers of the fans who got the message land on the opt-out list
        wait_until(
            lambda: (
                len(DemandRecords(DemandTable(get_settings())).opted_out([f["phone"] for f in audience]))
                == counts["delivered"]
            ),
            timeout=30,
            what="opt-outs recorded",
        )
    finally:
        sim.configure(sms={"stop_reply_rate": 0.0})
    opted = DemandRecords(DemandTable(get_settings())).opted_out([f["phone"] for f in audience])
    # And a later sale for the same fans sends nothing to those numbers
    second, _ = new_sale(settings, audience)
    # (all may have opted out: then the sale is generated with no notification at all)
    wait_until(
        lambda: all_terminal(notifications, sales, second, 3 - len(opted)) is not None,
        timeout=90,
        what="the second sale done, without notifications for the opted-out fans",
    )
    assert all(sim.sms_messages_to(p) == 1 for p in opted)
    assert sim.sms_sale(second)["accepted"] == 3 - len(opted)


def test_provider_failures_are_retried_within_the_attempt_limit(pipeline, records, settings, sim) -> None:
    table, notifications, sales = records
    # Given a provider failing a third of the calls with 500/503 and rate-limiting above 20/s
    sim.configure(sms={"error_rate": 0.33, "rate_limit_per_second": 20})
    try:
        audience = fans(30)
        sale_id, _ = new_sale(settings, audience, rate=40)
        counts = wait_until(
            lambda: all_terminal(notifications, sales, sale_id, 30),
            timeout=180,
            what="every notification terminal despite failures",
        )
    finally:
        sim.configure(sms={"error_rate": 0.0, "rate_limit_per_second": 0})
    # Then nobody got two messages, and no notification was tried more than three times
    assert sim.sms_sale(sale_id)["duplicates"] == 0
    items = list(table.query_all(f"SALE#{sale_id}", "NOTIFICATION#"))
    assert max(int(i.get("attempts", 0)) for i in items) <= settings.max_send_attempts
    failed = [i for i in items if i["status"] == "failed"]
    # failed by us (the provider never accepted it) after the last attempt, with the reason
    assert all("attempts" in i["reason"] for i in failed if "providerMessageId" not in i)
    assert counts.get("delivered", 0) + counts.get("undelivered", 0) + len(failed) == 30


def test_a_repeated_send_message_sends_nothing_twice(pipeline, records, settings, sim) -> None:
    from dmd_tasks.pipeline.stage4_send import send_notifications

    _, notifications, sales = records
    audience = fans(5)
    sale_id, _ = new_sale(settings, audience)
    wait_until(lambda: all_terminal(notifications, sales, sale_id, 5), timeout=90, what="sale done")
    # When the same send messages arrive again (SQS and streams deliver at least once)
    ids = [f"{sale_id}:{f['fanId']}" for f in audience]
    results = [send_notifications.apply_async((ids,), ignore_result=False) for _ in range(2)]
    outcomes = [r.get(timeout=60) for r in results]
    # Then they find nothing to do, and the provider saw one message per fan
    assert outcomes == [{"skipped": 5}, {"skipped": 5}]
    provider = sim.sms_sale(sale_id)
    assert (provider["accepted"], provider["recipients"], provider["duplicates"]) == (5, 5, 0)


def test_the_metrics_endpoint_shows_the_transitions_of_a_run(pipeline, records, settings) -> None:
    import requests

    from dmd_tasks.ops.stack import free_port, wait_for_port

    _, notifications, sales = records
    port = free_port()
    exporter = ProcessGroup(settings.run_dir.resolve() / "logs" / "e2e-metrics", env={"DMD_METRICS_PORT": str(port)})
    exporter.start(["metrics"])
    try:
        wait_for_port("127.0.0.1", port, timeout=30, what="metrics", process=exporter.processes["metrics"])
        sale_id, _ = new_sale(settings, fans(5))
        wait_until(lambda: all_terminal(notifications, sales, sale_id, 5), timeout=90, what="sale done")
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        exporter.stop()

    def value(line_start: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))

    for source, target in (
        ("none", "pending"),
        ("pending", "scheduled"),
        ("scheduled", "sending"),
        ("sending", "sent"),
        ("sent", "delivered"),
    ):
        assert value(f'dmd_notification_transitions_total{{from_status="{source}",to_status="{target}"}}') >= 4
    assert value('dmd_provider_responses_total{code="202",provider="sms"}') >= 5
    assert value("dmd_send_latency_seconds_count") >= 5
    assert 'dmd_bridge_lag_seconds{bridge="bridge-demand"}' in text
    assert 'dmd_dlq_depth{queue="send"}' in text
    assert value('dmd_tasks_total{state="success",task="dmd_tasks.send.send_notifications"}') >= 1
    # what the board compares: the parts sent against the account's cap, and how late they went
    account = sms_account(settings)
    assert value(f'dmd_sms_parts_sent_total{{provider="{account}"}}') >= 5
    assert value(f'dmd_send_delay_seconds_count{{provider="{account}"}}') >= 5
    assert value(f'dmd_sms_cap_parts_per_second{{provider="{account}"}}') == settings.sms_account_parts_per_second
    assert f'dmd_sms_circuit_state{{provider="{account}"}}' in text
    assert 'dmd_queue_depth{queue="send"}' in text and 'dmd_queue_in_flight{queue="send"}' in text
