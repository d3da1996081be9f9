"""Stage 3: a due sale becomes one ``pending`` notification per fan.

``claim_due_sales`` (beat, every ``claim_interval_seconds``) moves due sales
``waiting → generating`` with a conditional write, so a second beat or a repeated tick
never claims twice, and enqueues ``generate_notifications``. It also re-enqueues sales
whose generator lease expired (the worker died).

``generate_notifications(sale_id)`` streams the event's demand rows page by page and
writes notifications with BatchWriteItem in chunks of ``generate_chunk_size`` (5,000, as
the original did). After each chunk it checkpoints the last fan id on the sale under a
lease; after ``generate_chunks_per_run`` chunks or ``generate_run_budget_seconds``, whichever
comes first, it hands the rest to a fresh message, so no run nears its time limit (however
slow the table is) and memory does not grow with the sale. A repeated or
resumed run skips fans that already have a notification (BatchGetItem on the first
chunk it writes), so it creates no duplicate and resets no status. Opted-out fans get
no notification; a fan with an invalid phone number gets one that is ``failed`` at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from dmd_tasks import aws
from dmd_tasks.campaigns import Campaign
from dmd_tasks.celery_app import task
from dmd_tasks.errors import PermanentError
from dmd_tasks.metrics import NOTIFICATION_TRANSITIONS
from dmd_tasks.query import warm_event_details
from dmd_tasks.models import PHONE_PATTERN, Event, demand_key, event_key
from dmd_tasks.services import Services, get_services
from dmd_tasks.shorten import shorten_event
from dmd_tasks.store import NotificationRecords, deserialize, iso, serialize

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    sale_id: str
    outcome: str  # done | continue | owned-elsewhere | already-generated | not-claimed
    written: int = 0
    opted_out: int = 0
    invalid_phone: int = 0
    already_present: int = 0
    chunks: int = 0


def demand_pages(services: Services, event_id: str, after_fan: str | None, page_size: int
                 ) -> Iterator[list[dict[str, Any]]]:
    """The event's demand rows after ``after_fan``, one DynamoDB page at a time."""
    client = services.table._client
    kwargs: dict[str, Any] = {
        "TableName": services.table.name, "KeyConditionExpression": "pk = :pk AND begins_with(sk, :d)",
        "ExpressionAttributeValues": {":pk": {"S": event_key(event_id)["pk"]}, ":d": {"S": "DEMAND#"}},
        "Limit": page_size, "ConsistentRead": True,
    }
    if after_fan:
        kwargs["ExclusiveStartKey"] = serialize(demand_key(event_id, after_fan))
    while True:
        response = client.query(**kwargs)
        items = [deserialize(i) for i in response.get("Items", [])]
        if items:
            yield items
        last = response.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last


class Prefetcher:
    """Pages read one ahead on the pool: ``request()`` starts reading the next page (once),
    ``take()`` returns it (reading it now if nobody asked before), None at the end."""

    def __init__(self, pages: Iterator[list[dict[str, Any]]], pool: Executor) -> None:
        self._pages = pages
        self._pool = pool
        self._next: Future[list[dict[str, Any]] | None] | None = None

    def request(self) -> None:
        if self._next is None:
            self._next = self._pool.submit(next, self._pages, None)

    def take(self) -> list[dict[str, Any]] | None:
        self.request()
        assert self._next is not None
        future, self._next = self._next, None
        return future.result()


def build_notifications(rows: list[dict[str, Any]], *, sale_id: str, event_id: str, campaign: Campaign,
                        notifications: NotificationRecords, opted_out: set[str], skip: set[str], now: float,
                        result: GenerateResult) -> list[dict[str, Any]]:
    """Notification items for one chunk of demand rows (pure apart from the given sets)."""
    items: list[dict[str, Any]] = []
    for row in rows:
        fan_id, phone, tz = row.get("fanId"), row.get("phone"), row.get("timezone") or "UTC"
        if not isinstance(fan_id, str):
            continue
        if fan_id in skip:
            result.already_present += 1
            continue
        if phone in opted_out:
            result.opted_out += 1
            continue
        send_after = campaign.window.next_open_ts(now, tz)
        item = notifications.new_item(sale_id=sale_id, event_id=event_id, fan_id=fan_id, phone=str(phone),
                                      tz=str(tz), send_after=send_after, now=now)
        if not isinstance(phone, str) or not PHONE_PATTERN.match(phone):
            result.invalid_phone += 1
            item.update(status="failed", reason="invalid phone number (not E.164)")
            item.pop("gsi1pk")
            item.pop("gsi1sk")
        items.append(item)
    return items


def ensure_short_url(services: Services, event: Event) -> str:
    """The event's short URL, shortening it now (the shortening stage's own logic) if still missing."""
    if event.short_url:
        return event.short_url
    shorten_event(event.id, table=services.table, shortener=services.shortener, redis_client=services.redis,
                  allowed_hosts=services.settings.shorten_allowed_hosts,
                  lock_seconds=services.settings.shorten_lock_seconds)
    refreshed = services.table.get_event(event.id)
    if refreshed is None or not refreshed.short_url:
        raise PermanentError(f"event {event.id} has no short URL after shortening")
    return refreshed.short_url


def generate_sale(sale_id: str, services: Services, clock: Callable[[], float] = time.time) -> GenerateResult:
    settings = services.settings
    sale = services.sales.get(sale_id)
    if sale is None:
        raise PermanentError(f"sale {sale_id} not found")
    if sale["status"] == "generated":
        return GenerateResult(sale_id, "already-generated")
    if sale["status"] != "generating":
        return GenerateResult(sale_id, "not-claimed")
    lease = services.sales.take_lease(sale_id, sale.get("leaseUntil"), clock(), settings.generate_lease_seconds)
    if lease is None:
        return GenerateResult(sale_id, "owned-elsewhere")
    campaign = services.campaigns.get(sale_id)  # InvalidCampaign (permanent) if it no longer validates
    if campaign is None:
        raise PermanentError(f"sale {sale_id} has no campaign")
    event_id = sale["eventId"]
    event = services.table.get_event(event_id)
    if event is None:
        raise PermanentError(f"event {event_id} of sale {sale_id} not found")
    ensure_short_url(services, event)

    result = GenerateResult(sale_id, "done")
    notifications = services.notifications
    pool = aws.io_pool(settings)  # a chunk's look-ups and writes go out concurrently
    started = time.monotonic()
    handing_over = False
    cursor: str | None = sale.get("cursor")
    chunk: list[dict[str, Any]] = []
    # A sale still holding the lease its last run handed over with (or the claim's) has nothing
    # past its cursor; otherwise a run died mid-chunk and the first chunk is checked for what exists.
    check_existing = not (sale.get("cleanLease") and sale.get("cleanLease") == sale.get("leaseUntil"))

    def flush() -> bool:
        nonlocal lease, check_existing, chunk, handing_over
        # Is this the run's last chunk? Decided before writing, so that the next page is read
        # while this chunk is written only when this run will write it.
        handing_over = (result.chunks + 1 >= settings.generate_chunks_per_run
                        or time.monotonic() - started >= settings.generate_run_budget_seconds)
        if not handing_over:
            pages.request()
        fan_ids = [r["fanId"] for r in chunk if isinstance(r.get("fanId"), str)]
        skip = notifications.existing_fans(sale_id, fan_ids, pool) if check_existing else set()
        opted_out = notifications.opted_out([r["phone"] for r in chunk if isinstance(r.get("phone"), str)], pool)
        items = build_notifications(chunk, sale_id=sale_id, event_id=event_id, campaign=campaign,
                                    notifications=notifications, opted_out=opted_out, skip=skip, now=clock(),
                                    result=result)
        services.table.put_items(items, pool)
        for status in ("pending", "failed"):
            created = sum(1 for i in items if i["status"] == status)
            if created:
                NOTIFICATION_TRANSITIONS.labels("none", status).inc(created)
        result.written += len(items)
        result.chunks += 1
        lease = services.sales.checkpoint(sale_id, lease, chunk[-1]["fanId"], len(items) + len(skip), clock(),
                                          settings.generate_lease_seconds, last=handing_over)
        check_existing = False
        chunk = []
        return lease is not None

    # One Query per chunk: DynamoDB caps a page at 1 MB anyway (several thousand demand rows),
    # and every Query costs a round trip (moto's costs a pass over the whole table).
    pages = Prefetcher(demand_pages(services, event_id, cursor, settings.generate_chunk_size), pool)
    while (page := pages.take()) is not None:
        for row in page:
            chunk.append(row)
            if len(chunk) >= settings.generate_chunk_size:
                if not flush():
                    result.outcome = "owned-elsewhere"
                    return result
                if handing_over:
                    result.outcome = "continue"
                    return result
    if chunk and not flush():
        result.outcome = "owned-elsewhere"
        return result
    assert lease is not None
    if not services.sales.finish(sale_id, lease, clock()):
        result.outcome = "owned-elsewhere"
    return result


@task(queue="generate", max_retries=5)
def generate_notifications(self, sale_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Write a sale's notifications (see the module docstring: trigger, idempotency, retries).

    Transient errors are retried by Celery from the last checkpoint.
    """
    services = get_services()
    try:
        result = generate_sale(sale_id, services)
    except PermanentError as exc:
        # A sale that cannot be generated (no campaign, invalid template, no event) stops
        # here, visibly, instead of being restarted every lease period.
        if services.sales.fail(sale_id, str(exc), time.time()):
            log.error("sale %s failed: %s", sale_id, exc)
        raise
    log.info("sale %s: %s (%d written, %d opted out, %d invalid phones, %d already present)", sale_id,
             result.outcome, result.written, result.opted_out, result.invalid_phone, result.already_present)
    if result.outcome == "continue":
        generate_notifications.apply_async((sale_id,))
    return {"sale_id": sale_id, "outcome": result.outcome, "written": result.written}


@task(queue="generate", max_retries=0)
def claim_due_sales(self) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Beat: claim due sales once each and start their generation; restart stalled generations."""
    services = get_services()
    now = time.time()
    claimed = restarted = 0
    for sale in services.sales.due(now):
        if services.sales.claim(sale["id"], now, services.settings.generate_lease_seconds):
            generate_notifications.apply_async((sale["id"],))
            # the API will be asked about this event while fans open their links: warm its cache
            warm_event_details.apply_async((sale["eventId"],))
            claimed += 1
            log.info("sale %s claimed (notify at %s)", sale["id"], sale.get("notifyAt"))
    for sale in services.sales.stalled(now):
        # the run takes the expired lease with a conditional write; duplicates are no-ops
        generate_notifications.apply_async((sale["id"],))
        restarted += 1
        log.warning("sale %s: generator lease expired at %s; resuming from its checkpoint", sale["id"],
                    sale.get("leaseUntil"))
    return {"claimed": claimed, "restarted": restarted, "at": iso(now)}  # type: ignore[dict-item]
