"""The fault suite: real sales through the real pipeline while doing damage.

Every scenario runs a sale on the local stack with all pipeline processes, damages
something for real (SIGKILL, a failing provider, replayed streams), and checks the
outcome from the data and from the SMS simulator's own counters: every notification
terminal, nobody messaged twice, nothing lost. Each prints its figures:

    [chaos] send-worker-kills {"notifications": 120, "terminal": 120, "duplicates": 0, "lost": 0, "kills": 6, ...}

``make test`` runs it small; ``make chaos`` runs it at size (DMD_CHAOS_FANS, DMD_CHAOS_KILLS).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import time as clock
from typing import Any

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.infra import aws, topology
from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.progress import count_by_status
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.table import DemandTable
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

FANS = int(os.environ.get("DMD_CHAOS_FANS", "120"))
KILLS = int(os.environ.get("DMD_CHAOS_KILLS", "5"))
TERMINAL = ("delivered", "undelivered", "failed")
#: Short leases, sweeps and visibility so that damage heals within the test's patience.
CHAOS_ENV = {
    "DMD_CLAIM_INTERVAL_SECONDS": "1",
    "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
    "DMD_SEND_LEASE_SECONDS": "4",
    "DMD_LEASE_SWEEP_INTERVAL_SECONDS": "1",
    "DMD_SMS_TIMEOUT_SECONDS": "1",
    "DMD_RETRY_BACKOFF_MAX_SECONDS": "5",
    "DMD_SEND_RETRY_BASE_SECONDS": "1",
    "DMD_TASK_SOFT_TIME_LIMIT_SECONDS": "15",
    "DMD_TASK_TIME_LIMIT_SECONDS": "20",
    "DMD_VISIBILITY_TIMEOUT_SECONDS": "30",
}


@pytest.fixture(scope="module", autouse=True)
def short_visibility(settings, stack) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """A killed worker's unacknowledged messages come back after 30 s instead of minutes."""
    sqs = aws.client("sqs", settings)
    urls = [topology.queue_url(settings, q) for q in ("send", "sms-status", "generate", "schedule")]
    for url in urls:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "30"})
    yield
    for url in urls:
        sqs.set_queue_attributes(
            QueueUrl=url, Attributes={"VisibilityTimeout": str(settings.visibility_timeout_seconds)}
        )


@pytest.fixture()
def pipeline(settings, sim) -> Iterator[ProcessGroup]:  # type: ignore[no-untyped-def]
    sim.configure(sms={"status_delay_ms": 100})
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / f"chaos-{uuid.uuid4().hex[:6]}", env=CHAOS_ENV)
    group.start(PIPELINE_PROCESSES)
    try:
        yield group
    finally:
        group.stop()
        sim.configure(
            sms={
                "error_rate": 0,
                "throttle_rate": 0,
                "timeout_rate": 0,
                "duplicate_status_rate": 0.05,
                "out_of_order_rate": 0.05,
            }
        )


def start_sale(settings, fans: int, rate: float) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex[:8]
    table = DemandTable(settings)
    event = Event(id=f"chaos{run}", name="Chaos Tour", url=f"https://www.ticketmaster.com/e/{run}")
    area = int(run[:4], 16) % 800 + 200
    phones = [f"+1{area}{n:07d}" for n in range(fans)]
    table.put_items([item(event)])
    table.put_items(item(Demand(eventId=event.id, fanId=f"f{n:06d}", phone=phones[n])) for n in range(fans))
    sale_id = f"chaos{run}"
    open_campaign_store(settings).put(
        Campaign(
            saleId=sale_id,
            eventId=event.id,
            template="{{ short_url }}",
            window=SendWindow(start=clock(0), end=clock(0)),
            ratePerSecond=rate,
        )
    )
    table.put_items([item(Sale(id=sale_id, eventId=event.id, notifyAt=iso(time.time())))])
    return sale_id, phones


def counts(settings, sale_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return count_by_status(DemandTable(settings), sale_id)


def all_terminal(settings, sale_id: str, expected: int) -> dict[str, int] | None:  # type: ignore[no-untyped-def]
    c = counts(settings, sale_id)
    return c if sum(c.get(s, 0) for s in TERMINAL) == expected == sum(c.values()) else None


def figures(settings, sim, sale_id: str, expected: int, kills: int, **extra: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    c = counts(settings, sale_id)
    terminal = sum(c.get(s, 0) for s in TERMINAL)
    provider = sim.sms_sale(sale_id)
    items = list(DemandTable(settings).query_all(f"SALE#{sale_id}", "NOTIFICATION#"))
    return {
        "notifications": sum(c.values()),
        "terminal": terminal,
        "duplicates": provider["duplicates"],
        "lost": expected - terminal,
        "kills": kills,
        "provider_accepted": provider["accepted"],
        "max_attempts": max((int(i.get("attempts", 0)) for i in items), default=0),
        "status": c,
        **extra,
    }


def report(name: str, result: dict[str, Any]) -> None:
    print(f"[chaos] {name} {json.dumps(result, sort_keys=True)}", flush=True)


class Killer(threading.Thread):
    """SIGKILLs the named processes in turn every ``every`` seconds, restarting each at once."""

    def __init__(self, group: ProcessGroup, names: list[str], every: float, kills: int) -> None:
        super().__init__(daemon=True)
        self.group, self.names, self.every, self.target = group, names, every, kills
        self.kills = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every) and self.kills < self.target:
            name = self.names[self.kills % len(self.names)]
            self.group.kill(name, signal.SIGKILL)
            self.group.start_one(name)
            self.kills += 1


def assert_healthy(result: dict[str, Any], settings) -> None:  # type: ignore[no-untyped-def]
    assert result["lost"] == 0, result
    assert result["duplicates"] == 0, result
    assert result["terminal"] == result["notifications"], result
    assert result["max_attempts"] <= settings.max_send_attempts, result


def test_send_workers_killed_during_a_sale(pipeline, settings, sim) -> None:  # type: ignore[no-untyped-def]
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: counts(settings, sale_id).get("sent", 0) + counts(settings, sale_id).get("delivered", 0) > 0,
        timeout=60,
        what="sending to begin",
    )
    killer = Killer(pipeline, ["worker-send"], every=1.2, kills=KILLS)
    killer.start()
    killer.join(timeout=KILLS * 1.2 + 30)
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    result = figures(settings, sim, sale_id, FANS, killer.kills)
    report("send-worker-kills", result)
    assert killer.kills >= KILLS
    assert_healthy(result, settings)


def test_provider_failing_a_fifth_of_calls(pipeline, settings, sim) -> None:  # type: ignore[no-untyped-def]
    before = sim.stats()["sms"].get("retry_after_violations", 0)
    # 20% of calls fail: 500/503, 429 with Retry-After: 2, and timeouts after the provider accepted
    sim.configure(
        sms={
            "error_rate": 0.07,
            "throttle_rate": 0.07,
            "throttle_retry_after": 2,
            "timeout_rate": 0.06,
            "timeout_ms": 1500,
        }
    )
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    stats = sim.stats()["sms"]
    result = figures(
        settings,
        sim,
        sale_id,
        FANS,
        0,
        responses_429=stats.get("responses_429", 0),
        timeouts=stats.get("responses_timeouts", 0),
        retry_after_violations=stats.get("retry_after_violations", 0) - before,
    )
    report("provider-faults", result)
    assert_healthy(result, settings)
    assert result["retry_after_violations"] == 0, "a retry came back sooner than the provider's Retry-After"
    assert result["responses_429"] > 0 and result["timeouts"] > 0


def test_bridges_killed_mid_stream(pipeline, settings, sim) -> None:  # type: ignore[no-untyped-def]
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    killer = Killer(pipeline, ["bridge-demand", "bridge-sms-status"], every=1.0, kills=max(KILLS, 6))
    killer.start()
    killer.join(timeout=60)
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    result = figures(settings, sim, sale_id, FANS, killer.kills)
    report("bridge-kills", result)
    assert killer.kills >= KILLS
    assert_healthy(result, settings)


def _checkpoint(settings, consumer: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    items = aws.client("dynamodb", settings).scan(TableName=settings.checkpoint_table_name)["Items"]
    mine = [
        i
        for i in items
        if i["stream"]["S"].startswith(f"{consumer}|")
        and (consumer != "bridge-demand" or f":table/{settings.table_name}/" in i["stream"]["S"])
    ]
    return max(mine, key=lambda i: int(i.get("sequence", {}).get("S", "0"))) if mine else None


def test_duplicated_and_out_of_order_records_have_no_second_effect(pipeline, settings, sim) -> None:  # type: ignore[no-untyped-def]
    sim.configure(sms={"duplicate_status_rate": 0.5, "out_of_order_rate": 0.5})
    demand_before = _checkpoint(settings, "bridge-demand")
    status_before = _checkpoint(settings, "bridge-sms-status")
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    first = figures(settings, sim, sale_id, FANS, 0)

    # Replay both streams over the whole sale: rewind the checkpoints and restart the bridges
    ddb = aws.client("dynamodb", settings)
    replayed_log = pipeline.log_dir / "bridge-demand.log"
    offset = replayed_log.stat().st_size
    for name, before in (("bridge-demand", demand_before), ("bridge-sms-status", status_before)):
        pipeline.kill(name, signal.SIGTERM)
        if before is not None:
            ddb.put_item(TableName=settings.checkpoint_table_name, Item=before)
        else:
            current = _checkpoint(settings, name)
            if current is not None:
                ddb.delete_item(
                    TableName=settings.checkpoint_table_name,
                    Key={"stream": current["stream"], "shard": current["shard"]},
                )
        pipeline.start_one(name)
    wait_until(lambda: "records ->" in replayed_log.read_text()[offset:], what="the demand bridge to replay")
    time.sleep(8)  # the replayed records are routed and their tasks run
    second = figures(settings, sim, sale_id, FANS, 0)
    report("duplicates-and-replays", {**second, "status_before_replay": first["status"]})
    assert_healthy(second, settings)
    assert second["status"] == first["status"]
    assert second["provider_accepted"] == first["provider_accepted"]
