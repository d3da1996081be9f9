"""3. Latency through the chain, with no backlog (one item in flight at a time).

- demand insert → short URL stored: a demand row for a new event goes into the table;
  timed until the event carries its short URL (DynamoDB stream → ``bridge-demand`` →
  ``short-url`` queue → ``worker-short-url`` → Bitly simulator → conditional write).
- ``scheduled`` → ``sent``: a pending notification is moved to ``scheduled`` with the
  scheduler's own conditional write, and its send task published as the scheduler does;
  timed until it is ``sent`` (``send`` queue → ``worker-send`` → SMS simulator →
  conditional write).

The processes run with the project's settings (the local profile), so the figures include
the bridges' idle polling and the workers' SQS polling intervals, as in production.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from bench.harness import Harness, percentile, wait_until
from bench.seed import demand_rows, new_sale

if TYPE_CHECKING:
    from dmd_tasks.infra.settings import Settings
    from dmd_tasks.store.notifications import NotificationRecords
    from dmd_tasks.store.table import DemandTable


def _stats(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "p50_ms": round(1000 * percentile(samples, 50), 1),
        "p95_ms": round(1000 * percentile(samples, 95), 1),
        "max_ms": round(1000 * max(samples), 1),
        "samples_ms": sorted(round(1000 * s, 1) for s in samples),  # the latency CDF (bench/plots.py)
    }


def run(h: Harness, *, samples: int) -> dict[str, Any]:
    from dmd_tasks.store.notifications import NotificationRecords
    from dmd_tasks.store.table import DemandTable

    settings = h.settings
    h.fresh()
    table = DemandTable(settings)
    notifications = NotificationRecords(table, settings.pending_shards)
    procs = ["bridge-demand", "worker-short-url", "worker-send"]
    with h.processes(procs, label="latency") as group:
        h.wait_workers(group, ["short-url", "send"])
        run_id = uuid.uuid4().hex[:6]
        shorten = _shorten_leg(table, run_id, samples)
        send = _send_leg(settings, table, notifications, run_id, samples)
        if group.dead():
            raise RuntimeError(f"processes exited: {group.dead()}")
    return {
        "demand_insert_to_short_url": _stats(shorten),
        "scheduled_to_sent": _stats(send),
        "settings": {
            "bridge_idle_sleep_seconds": settings.bridge_idle_sleep_seconds,
            "sqs_polling_interval_seconds": settings.sqs_polling_interval_seconds,
            "sqs_wait_time_seconds": settings.sqs_wait_time_seconds,
        },
    }


def _shorten_leg(table: DemandTable, run_id: str, samples: int) -> list[float]:
    """Seconds from a demand insert for a new event to its short URL stored, ``samples`` times."""
    from dmd_tasks.domain.entities import Event
    from dmd_tasks.store.events import EventRecords
    from dmd_tasks.store.items import item

    shorten: list[float] = []
    # one warm-up of each leg (first connections, first imports), not counted
    for n in range(samples + 1):
        event = Event(id=f"ev{run_id}{n:03d}", name="Latency", url=f"https://www.ticketmaster.com/e/{run_id}{n}")
        table.put_items([item(event)])
        began = time.perf_counter()
        table.put_items(demand_rows(event.id, 1))
        wait_until(
            lambda: (e := EventRecords(table).get(event.id)) is not None and e.short_url,  # noqa: B023 (called at once)
            60,
            0.005,
            what="short URL stored",
        )
        if n:
            shorten.append(time.perf_counter() - began)
        time.sleep(0.3)
    return shorten


def _send_leg(
    settings: Settings, table: DemandTable, notifications: NotificationRecords, run_id: str, samples: int
) -> list[float]:
    """Seconds from a notification moved to ``scheduled`` to ``sent``, ``samples`` times (after a warm-up)."""
    from dmd_tasks.celery_app import app
    from dmd_tasks.domain.entities import Event
    from dmd_tasks.domain.ids import notification_id
    from dmd_tasks.pipeline.chain import publish_sends
    from dmd_tasks.store.items import item

    send: list[float] = []
    sale_id = f"sale{run_id}"
    event = Event(
        id=f"ev{run_id}send", name="Latency", url="https://www.ticketmaster.com/e/x", shortUrl="https://bit.ly/x"
    )
    table.put_items([item(event)])
    new_sale(settings, sale_id, event.id, rate_per_second=1000.0)
    for n in range(samples + 1):
        fan = f"fan{n:07d}"
        now = time.time()
        table.for_notifications().put_items(
            [
                notifications.new_item(
                    sale_id=sale_id,
                    event_id=event.id,
                    fan_id=fan,
                    phone=f"+1555{n:07d}",
                    tz="UTC",
                    send_after=now,
                    now=now,
                )
            ]
        )
        time.sleep(0.1)
        began = time.perf_counter()
        if not notifications.schedule(sale_id, fan, time.time()):
            raise RuntimeError(f"notification {sale_id}:{fan} could not be scheduled")
        publish_sends(app, settings, [notification_id(sale_id, fan)])  # whoever schedules publishes
        wait_until(
            lambda: notifications.status_of(sale_id, fan) == "sent",  # noqa: B023 (called at once)
            60,
            0.005,
            what="notification sent",
        )
        if n:
            send.append(time.perf_counter() - began)
        time.sleep(0.3)
    return send
