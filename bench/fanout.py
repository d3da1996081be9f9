"""1. Fan-out: one sale for N fans, written by the generate worker, against a bare BatchWriteItem loop.

Side by side in one run, interleaved: a bare boto3 loop writing pre-serialized
notification items (25 a call, the DynamoDB ceiling of this endpoint for one writer),
and the project's ``generate_notifications`` writing a sale of N fans (reading demand
pages, opt-out look-ups, chunk checkpoints and all). The worker is the
Procfile's ``worker-generate``; its peak RSS (VmHWM of the pool process) is read at N/10
and at N, each on a fresh worker.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.harness import Harness, summary, wait_until
from bench.seed import claim_sale, new_sale, sale_status, seed_event

WORKER = "worker-generate"


def raw_batch_write(settings: Any, count: int) -> float:
    """Seconds a bare boto3 loop takes to write ``count`` notification-shaped items (25 a call)."""
    from dmd_tasks.infra import aws
    from dmd_tasks.store.codec import serialize
    from dmd_tasks.store.notifications import NotificationRecords
    from dmd_tasks.store.table import DemandTable

    client = aws.client("dynamodb", settings)
    records = NotificationRecords(DemandTable(settings), settings.pending_shards)
    sale = f"raw{uuid.uuid4().hex[:8]}"
    now = time.time()
    requests = [
        {
            "PutRequest": {
                "Item": serialize(
                    records.new_item(
                        sale_id=sale,
                        event_id="raw",
                        fan_id=f"fan{n:07d}",
                        phone=f"+1555{n:07d}",
                        tz="UTC",
                        send_after=now,
                        now=now,
                    )
                )
            }
        }
        for n in range(count)
    ]
    started = time.perf_counter()
    for start in range(0, count, 25):
        pending = requests[start : start + 25]
        while pending:
            response = client.batch_write_item(RequestItems={settings.table_name: pending})
            pending = response.get("UnprocessedItems", {}).get(settings.table_name, [])
    return time.perf_counter() - started


def generate_once(settings: Any, event_id: str, timeout: float) -> float:
    """Seconds from enqueueing a claimed sale's generation to the sale being ``generated``."""
    from dmd_tasks.pipeline.stage2_generate import generate_notifications

    sale_id = f"sale{uuid.uuid4().hex[:8]}"
    new_sale(settings, sale_id, event_id, rate_per_second=1.0)
    claim_sale(settings, sale_id)
    started = time.perf_counter()
    generate_notifications.apply_async((sale_id,))
    status = wait_until(
        lambda: (s := sale_status(settings, sale_id)) in ("generated", "failed") and s,
        timeout,
        interval=0.2,
        what=f"sale {sale_id} generated",
    )
    elapsed = time.perf_counter() - started
    if status != "generated":
        raise RuntimeError(f"sale {sale_id} ended {status}; see the generate worker's log")
    return elapsed


def run(h: Harness, *, fans: int, runs: int, raw_items: int, raw_runs: int = 3) -> dict[str, Any]:
    settings = h.settings
    h.fresh()
    small = max(1, fans // 10)
    h.say(f"fan-out: seeding {fans:,} + {small:,} demand rows")
    seed_seconds = seed_event(settings, "evbig", fans) + seed_event(settings, "evsmall", small, area=556)
    timeout = 60 + fans / 200  # far beyond the slowest run seen

    # Peak RSS at N/10, on a fresh worker.
    with h.processes([WORKER], label="fanout-small") as group:
        h.wait_workers(group, ["generate"])
        idle_rss = h.usage(group).peak_rss_bytes[WORKER]
        small_seconds = generate_once(settings, "evsmall", timeout)
        small_rss = h.usage(group).peak_rss_bytes[WORKER]
    h.say(f"fan-out: N/10 = {small:,} in {small_seconds:.1f}s, peak RSS {small_rss / 2**20:.0f} MiB")

    raw_rates: list[float] = []
    gen_rates: list[float] = []
    with h.processes([WORKER], label="fanout") as group:
        h.wait_workers(group, ["generate"])
        # interleaved: the bare loop before, between and after the sales
        for step in range(max(runs, raw_runs)):
            if step < raw_runs:
                raw_rates.append(raw_items / raw_batch_write(settings, raw_items))
                h.say(f"fan-out: bare BatchWriteItem {raw_rates[-1]:,.0f} items/s")
            if step < runs:
                gen_rates.append(fans / generate_once(settings, "evbig", timeout))
                h.say(f"fan-out run {step + 1}/{runs}: generate {gen_rates[-1]:,.0f} notifications/s")
        big_rss = h.usage(group).peak_rss_bytes[WORKER]
    return {
        "fans": fans,
        "runs": runs,
        "raw_runs": raw_runs,
        "raw_items_per_run": raw_items,
        "seed_rows_per_second": round((fans + small) / seed_seconds),
        "generate_notifications_per_second": summary(gen_rates, 1),
        "raw_batch_write_items_per_second": summary(raw_rates, 1),
        "ratio_to_raw": round(summary(gen_rates)["median"] / summary(raw_rates)["median"], 3),
        "worker_rss_mib": {
            "idle": round(idle_rss / 2**20, 1),
            "at_n_over_10": round(small_rss / 2**20, 1),
            "at_n": round(big_rss / 2**20, 1),
        },
        "n_over_10_seconds": round(small_seconds, 2),
        "n_over_10_notifications_per_second": round(small / small_seconds, 1),
    }
