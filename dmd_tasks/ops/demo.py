"""``dmd demo``: a whole sale on the local stack, with live progress per status and a summary.

Seeds an event, its campaign, N demand rows (a few fans opted out beforehand, a few with
a phone number that is not E.164) and a sale due now; runs every pipeline process of the
Procfile; watches each notification go pending → scheduled → sending → sent → delivered
(or undelivered/failed); then reports the statuses and what the SMS provider saw.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import time as clock_time
from typing import Any

import requests
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.infra.settings import Settings
from dmd_tasks.ops.progress import STATUSES, TERMINAL, sale_progress, status_table
from dmd_tasks.ops.provision import provision
from dmd_tasks.ops.stack import ProcessGroup, Stack, port_open, read_procfile
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.demand import DemandRecords
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable

TIMEZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
    "UTC",
]
TEMPLATE = "{{ event_name }}: tickets are on sale now! {{ short_url }} Reply STOP to opt out."
#: Procfile processes that make up the pipeline (not the API or Flower).
PIPELINE_PROCESSES = (
    "bridge-demand",
    "bridge-sms-status",
    "beat",
    "worker-short-url",
    "worker-generate",
    "worker-schedule",
    "worker-send",
    "worker-sms-status",
    "worker-query",
)


def pipeline_processes(settings: Settings) -> tuple[str, ...]:
    """The pipeline's processes for these settings: End User Messaging's events come back through
    the intake queue, so with it ``bridge-sqs`` runs too."""
    with_eum = "eum" in (settings.sms_provider, settings.sms_failover_provider)
    return (*PIPELINE_PROCESSES, "bridge-sqs") if with_eum else PIPELINE_PROCESSES


def seed_sale(settings: Settings, fans: int, rate_per_second: float, run_id: str) -> tuple[str, int]:
    """Write the event, demand, opt-outs, campaign and a sale due now. Returns (sale id, opted-out fans)."""
    table = DemandTable(settings)
    rng = random.Random(run_id)
    event = Event(id=f"ev-{run_id}", name=f"The Demo Tour {run_id}", url=f"https://www.ticketmaster.com/event/{run_id}")
    sale_id = f"sale-{run_id}"
    area = rng.randint(200, 989)
    rows, optouts = [], []
    for n in range(fans):
        phone = f"+1{area}{n:07d}"
        if n % 200 == 199:
            phone = f"555-{n:04d}"  # not E.164: its notification fails with the reason
        elif n % 100 == 42:
            optouts.append(phone)
        rows.append(Demand(eventId=event.id, fanId=f"fan{n:07d}", phone=phone, timezone=rng.choice(TIMEZONES)))
    EventRecords(table).put(event)
    demand = DemandRecords(table)
    demand.put_many(rows)
    demand.add_optouts(optouts, time.time())
    # The demo's window is always open so that it finishes whatever the hour; quiet hours
    # are exercised by the tests.
    open_campaign_store(settings).put(
        Campaign(
            saleId=sale_id,
            eventId=event.id,
            template=TEMPLATE,
            window=SendWindow(start=clock_time(0, 0), end=clock_time(0, 0)),
            ratePerSecond=rate_per_second,
        )
    )
    SaleRecords(table).put(Sale(id=sale_id, eventId=event.id, notifyAt=iso(time.time())))
    return sale_id, len(optouts)


def provider_sale_stats(settings: Settings, sale_id: str) -> dict[str, int]:
    url = f"http://{settings.simulator_host}:{settings.simulator_port}/_sim/sms/sales/{sale_id}"
    return requests.get(url, timeout=5).json()


def run_demo(
    settings: Settings, *, fans: int, rate_per_second: float, timeout_seconds: float, keep_stack: bool, as_json: bool
) -> dict[str, Any]:
    console = Console(stderr=as_json)
    stack = Stack(settings)
    for line in stack.up():
        console.print(f"[dim]{line}[/dim]")
    provision(settings)
    console.print("[dim]provisioned tables, queues (each with a DLQ) and streams[/dim]")
    available = read_procfile()
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "demo")
    run_id = uuid.uuid4().hex[:8]
    try:
        group.start([p for p in pipeline_processes(settings) if p in available])
        if "flower" in available and not port_open(settings.flower_host, settings.flower_port):
            group.start(["flower"])
            console.print(f"Flower: http://{settings.flower_host}:{settings.flower_port} (every worker, every task)")
        console.print(f"started {', '.join(group.processes)} (logs in {group.log_dir})")
        sale_id, opted_out = seed_sale(settings, fans, rate_per_second, run_id)
        started = time.monotonic()
        console.print(
            f"seeded sale {sale_id}: {fans} fans ({opted_out} opted out beforehand), "
            f"rate {rate_per_second:g} SMS/s, due now"
        )
        progress = watch(console, settings, sale_id, fans - opted_out, group, timeout_seconds, as_json)
        elapsed = time.monotonic() - started
        provider = provider_sale_stats(settings, sale_id)
    finally:
        group.stop()
        if not keep_stack:
            stack.down()
    summary = {
        "fans": fans,
        "notifications": progress["notifications"],
        "status": progress["status"],
        "provider_accepted": provider["accepted"],
        "provider_duplicates": provider["duplicates"],
        "elapsed_seconds": round(elapsed, 2),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        table = status_table(progress, f"sale {sale_id}: {fans} fans")
        console.print(table)
        facts = Table(show_header=False)
        facts.add_row("opted out before the sale (no notification)", str(opted_out))
        facts.add_row("SMS accepted by the provider", str(provider["accepted"]))
        facts.add_row("fans who got an SMS twice (provider's count)", str(provider["duplicates"]))
        facts.add_row("elapsed", f"{elapsed:.1f} s")
        facts.add_row("throughput", f"{progress['notifications'] / elapsed:.1f} notifications/s" if elapsed else "-")
        console.print(facts)
    summary["complete"] = (
        all(progress["status"][s] == 0 for s in STATUSES if s not in TERMINAL)
        and progress["notifications"] == fans - opted_out
    )
    return summary


def watch(
    console: Console,
    settings: Settings,
    sale_id: str,
    expected: int,
    group: ProcessGroup,
    timeout_seconds: float,
    quiet: bool,
) -> dict[str, Any]:
    """Poll the sale until every notification is terminal (or the timeout), showing progress."""
    bar = Progress(TextColumn("[bold]terminal"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = bar.add_task("terminal", total=expected)
    deadline = time.monotonic() + timeout_seconds
    progress = sale_progress(settings, sale_id)
    with Live(
        Group(bar, status_table(progress, sale_id)), console=console, transient=quiet, refresh_per_second=4
    ) as live:
        while time.monotonic() < deadline:
            polled = time.monotonic()
            progress = sale_progress(settings, sale_id)
            cost = time.monotonic() - polled
            done = sum(progress["status"][s] for s in TERMINAL)
            bar.update(task, completed=done)
            live.update(Group(bar, status_table(progress, f"sale {sale_id} ({progress['sale_status']})")))
            if progress["sale_status"] == "generated" and done == progress["notifications"] == expected:
                break
            crashed = group.dead()
            if crashed:
                raise RuntimeError(f"processes exited: {crashed}; see their logs in {group.log_dir}")
            # Counting reads every notification: poll no more than a fifth of the time, so the
            # demo's own reads leave the emulator to the pipeline.
            time.sleep(max(1.0, 4 * cost))
    return progress
