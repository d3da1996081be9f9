"""Stage 3: ``pending → scheduled``, time-gated and within the provider's rate budget.

Trigger: beat, every ``schedule_interval_seconds``. One tick at a time across all beats
and workers (a Redis lock; a tick that finds it held does nothing).

Per active sale, the tick queries the sparse pending index (``gsi1``, never a scan) for
notifications whose send-after time has come, at most ``rate × interval`` of them, and
moves each with a conditional write. A notification whose fan is in quiet hours now
(the window may have closed since generation) gets its send-after moved to the next
opening instead. What is stuck after that (expired send leases, lost send messages, sales
with nothing left in flight) is the reconciler's (``stage6_reconcile``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery import Task

from dmd_tasks.celery_app.base import task
from dmd_tasks.infra import aws
from dmd_tasks.pipeline.routing import SCHEDULE_NOTIFICATIONS
from dmd_tasks.services import Services, get_services

log = logging.getLogger(__name__)

#: Redis key of the lock that lets one scheduling tick run at a time, everywhere.
TICK_LOCK_KEY = "dmd:lock:schedule-tick"


@dataclass
class TickResult:
    scheduled: int = 0
    deferred: int = 0
    lost_race: int = 0


def schedule_sale(services: Services, sale_id: str, now: float, interval_seconds: float, result: TickResult) -> int:
    """Schedule what the budget allows; returns how many due notifications the index held."""
    campaign = services.campaigns.get(sale_id)
    if campaign is None:
        log.error("sale %s is active but has no campaign; nothing scheduled", sale_id)
        return 0
    notifications = services.notifications
    budget = max(1, int(campaign.rate_per_second * interval_seconds))
    shards = list(notifications.shards())
    start = int(now / max(interval_seconds, 0.001)) % len(shards)  # rotate which shard goes first
    found = 0
    for shard in shards[start:] + shards[:start]:
        if budget <= 0:
            break
        due = notifications.due_pending(sale_id, shard, now, budget)
        found += len(due)
        ready = [i["fanId"] for i in due if campaign.window.is_open_at(now, i.get("timezone"))]
        quiet = [i for i in due if not campaign.window.is_open_at(now, i.get("timezone"))]
        for item in quiet:  # the window closed since generation: wait for it to open again
            opens = campaign.window.next_open_ts(now, item.get("timezone"))
            result.deferred += notifications.defer(sale_id, item["fanId"], opens)
        # Conditional writes are independent: issue them in parallel (the client is thread-safe).
        pool = aws.io_pool(services.settings)
        moved = list(pool.map(lambda fan_id: notifications.schedule(sale_id, fan_id, now), ready))
        result.scheduled += sum(moved)
        result.lost_race += len(moved) - sum(moved)
        budget -= sum(moved)
    return found


def run_tick(services: Services, now: float | None = None) -> TickResult:
    now = time.time() if now is None else now
    interval = services.settings.schedule_interval_seconds
    result = TickResult()
    for sale_id in services.sales.active():
        try:
            schedule_sale(services, sale_id, now, interval, result)
        except Exception:
            log.exception("scheduling sale %s failed; the next tick tries again", sale_id)
    return result


@task(SCHEDULE_NOTIFICATIONS, max_retries=0, dead_letters=False)
def schedule_notifications(self: Task) -> dict[str, int]:
    """Beat: one scheduling tick (see the module docstring). Overlapping ticks are skipped, not queued."""
    services = get_services()
    lock = services.redis.lock(TICK_LOCK_KEY, timeout=max(30, int(self.soft_time_limit or 60)), blocking=False)
    if not lock.acquire():
        return {"skipped": 1}
    try:
        result = run_tick(services)
    finally:
        try:
            lock.release()
        except Exception:  # expired: the next tick simply takes it
            log.warning("schedule tick lock expired before release")
    if result.scheduled or result.deferred:
        log.info("schedule tick: %s", result)
    return vars(result)
