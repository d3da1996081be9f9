"""What the fault scenarios share: the pipeline's settings under damage, a sale to damage, and
the figures every scenario prints and checks (final, duplicates, lost)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from datetime import time as clock
from typing import Any

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import TERMINAL_STATUSES, Demand, Event, Sale
from dmd_tasks.infra import aws
from dmd_tasks.ops.progress import count_by_status
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.table import DemandTable
from tests.helpers import unique_phones

FANS = int(os.environ.get("DMD_CHAOS_FANS", "120"))
KILLS = int(os.environ.get("DMD_CHAOS_KILLS", "5"))
TERMINAL = tuple(s.value for s in TERMINAL_STATUSES)
#: Short leases, sweeps and visibility so that damage heals within the test's patience.
CHAOS_ENV = {
    "DMD_CLAIM_INTERVAL_SECONDS": "1",
    "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
    # a lease must outlast rate wait + provider timeout + time limit (2 + 1 + 20): 25 s
    "DMD_SEND_LEASE_SECONDS": "25",
    "DMD_SEND_RATE_WAIT_SECONDS": "2",
    "DMD_RECONCILE_INTERVAL_SECONDS": "1",
    # an idle beat entry looks again within 5 s (the default is a minute): the scenarios that wait
    # for ticks after a sale has ended get them
    "DMD_BEAT_IDLE_TICK_SECONDS": "5",
    "DMD_SCHEDULED_STALE_SECONDS": "20",
    "DMD_SMS_TIMEOUT_SECONDS": "1",
    "DMD_RETRY_BACKOFF_MAX_SECONDS": "5",
    "DMD_SEND_RETRY_BASE_SECONDS": "1",
    "DMD_TASK_SOFT_TIME_LIMIT_SECONDS": "15",
    "DMD_TASK_TIME_LIMIT_SECONDS": "20",
    "DMD_VISIBILITY_TIMEOUT_SECONDS": "30",
    # a killed bridge's shards are taken over within 5 s (+ 2.5 s for the next take)
    "DMD_BRIDGE_LEASE_FAILOVER_SECONDS": "5",
}


def start_sale(settings, fans: int, rate: float) -> tuple[str, list[str]]:
    run = uuid.uuid4().hex[:8]
    table = DemandTable(settings)
    event = Event(id=f"chaos{run}", name="Chaos Tour", url=f"https://www.ticketmaster.com/e/{run}")
    phones = unique_phones(fans)
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


def counts(settings, sale_id: str) -> dict[str, int]:
    return count_by_status(DemandTable(settings), sale_id)


def all_terminal(settings, sale_id: str, expected: int) -> dict[str, int] | None:
    c = counts(settings, sale_id)
    return c if sum(c.get(s, 0) for s in TERMINAL) == expected == sum(c.values()) else None


def figures(settings, sim, sale_id: str, expected: int, kills: int, **extra: Any) -> dict[str, Any]:
    c = counts(settings, sale_id)
    terminal = sum(c.get(s, 0) for s in TERMINAL)
    provider = sim.sms_sale(sale_id)
    items = list(DemandTable(settings).for_notifications().query_all(f"SALE#{sale_id}", "NOTIFICATION#"))
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


#: Every figure line this process printed, in order: ``tests/chaos/conftest.py`` attaches each
#: scenario's lines to its test report, so that they reach the run's summary from any xdist worker.
REPORTED: list[str] = []


def bridge_positions(settings, consumer: str) -> dict[str, int]:
    """A bridge's checkpointed sequence number by shard (bridge-demand: the demand table's stream)."""
    items = aws.client("dynamodb", settings).scan(TableName=settings.checkpoint_table_name)["Items"]
    return {
        i["shard"]["S"]: int(i.get("sequence", {}).get("S", "0"))
        for i in items
        if i["stream"]["S"].startswith(f"{consumer}|")
        and (consumer != "bridge-demand" or f":table/{settings.table_name}/" in i["stream"]["S"])
    }


def caught_up(settings, consumer: str, target: dict[str, int]) -> bool:
    """The bridge's checkpoint is at or past ``target`` on every shard of it."""
    now = bridge_positions(settings, consumer)
    return all(now.get(shard, 0) >= sequence for shard, sequence in target.items())


def demand_stream_end(settings) -> dict[str, int]:
    """The sequence number of the last record on each shard of the demand table's stream so far
    (read from its start: the chaos suite's moto is emptied before each scenario)."""
    arn = aws.client("dynamodb", settings).describe_table(TableName=settings.table_name)["Table"]["LatestStreamArn"]
    streams = aws.client("dynamodbstreams", settings)
    ends: dict[str, int] = {}
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break
            ends[shard["ShardId"]] = int(page["Records"][-1]["dynamodb"]["SequenceNumber"])
            iterator = page.get("NextShardIterator")
    return ends


def report(name: str, result: dict[str, Any]) -> None:
    line = f"[chaos] {name} {json.dumps(result, sort_keys=True)}"
    REPORTED.append(line)
    print(line, flush=True)


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


def assert_healthy(result: dict[str, Any], settings) -> None:
    assert result["lost"] == 0, result
    assert result["duplicates"] == 0, result
    assert result["terminal"] == result["notifications"], result
    assert result["max_attempts"] <= settings.max_send_attempts, result
