"""``dmd demo``: the pipeline as far as it exists, on the local stack, with progress and a summary.

Seeds events and demand rows (several fans per event, so the bridge has duplicates to
fold), runs the Procfile processes, and watches every event get its short URL.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dmd_tasks import deadletter
from dmd_tasks.models import Demand, Event
from dmd_tasks.provision import provision
from dmd_tasks.settings import Settings
from dmd_tasks.stack import ProcessGroup, Stack
from dmd_tasks.store import DemandTable

PROCESSES = ("bridge-demand", "worker-short-url")


def seed(table: DemandTable, run_id: str, events: int, fans: int) -> list[Event]:
    """Write ``events`` events and ``fans`` demand rows spread round-robin over them."""
    created = [Event(id=f"demo-{run_id}-{i}", name=f"Demo event {i}",
                     url=f"https://www.ticketmaster.com/event/{run_id}{i:04d}") for i in range(events)]
    table.put_items(e.to_item() for e in created)
    table.put_items(
        Demand(eventId=created[n % events].id, fanId=f"fan{n:07d}", phone=f"+1555{n:07d}").to_item()
        for n in range(fans)
    )
    return created


def shortened(table: DemandTable, events: list[Event]) -> int:
    return sum(1 for e in events if (found := table.get_event(e.id)) is not None and found.short_url)


def run_demo(settings: Settings, *, events: int, fans: int, timeout_seconds: float, keep_stack: bool,
             as_json: bool) -> dict[str, Any]:
    console = Console(stderr=as_json)
    stack = Stack(settings)
    for line in stack.up():
        console.print(f"[dim]{line}[/dim]")
    provision(settings)
    console.print("[dim]provisioned table, queues (with DLQs) and streams[/dim]")
    sim_url = f"http://{settings.simulator_host}:{settings.simulator_port}"
    before = requests.get(f"{sim_url}/_sim/stats", timeout=5).json()["bitly"]["calls_by_long_url"]
    dead_before = len(deadletter.receive(settings, "bridge-demand", max_messages=1000))

    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "demo")
    group.start(PROCESSES)
    table = DemandTable(settings)
    run_id = uuid.uuid4().hex[:6]
    started = time.monotonic()
    done = 0
    created: list[Event] = []
    try:
        created = seed(table, run_id, events, fans)
        console.print(f"seeded {events} events and {fans} demand rows (run {run_id})")
        with Progress(TextColumn("[bold]short URLs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=as_json) as progress:
            bar = progress.add_task("shorten", total=events)
            while time.monotonic() - started < timeout_seconds:
                done = shortened(table, created)
                progress.update(bar, completed=done)
                if done == events:
                    break
                crashed = group.dead()
                if crashed:
                    raise RuntimeError(f"processes exited: {crashed}; logs in {group.log_dir}")
                time.sleep(0.5)
    finally:
        group.stop()
        elapsed = time.monotonic() - started
        try:
            after = requests.get(f"{sim_url}/_sim/stats", timeout=5).json()["bitly"]["calls_by_long_url"]
            dead = len(deadletter.receive(settings, "bridge-demand", max_messages=1000)) - dead_before
        finally:
            if not keep_stack:
                stack.down()
    summary = {
        "events": events, "demand_rows": fans, "short_urls": done,
        "bitly_calls": sum(after.get(e.url, 0) - before.get(e.url, 0) for e in created),
        "dead_letters": dead, "elapsed_seconds": round(elapsed, 2), "complete": done == events,
    }
    _print(console, summary, as_json)
    return summary


def _print(console: Console, summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(title="dmd demo: demand stream → URL shortening")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    console.print(table)
