"""Stage 2: a due sale becomes one ``pending`` notification per fan.

``claim_due_sales`` (beat, every ``claim_interval_seconds``) moves due sales
``waiting → generating`` with a conditional write, so a second beat or a repeated tick
never claims twice, and enqueues ``generate_notifications``. It also re-enqueues sales
whose generator lease expired (the worker died).

``generate_notifications(sale_id)`` streams the event's demand rows page by page and
writes notifications with BatchWriteItem in chunks of ``generate_chunk_size`` (5,000).
After each chunk it checkpoints the last fan id on the sale under a
lease; after ``generate_chunks_per_run`` chunks or ``generate_run_budget_seconds``, whichever
comes first, it hands the rest to a fresh message, so no run nears its time limit (however
slow the table is) and memory does not grow with the sale. A repeated or
resumed run skips fans that already have a notification (BatchGetItem on the first
chunk it writes), so it creates no duplicate and resets no status.

Every row is checked field by field, and a bad field is that fan's problem, never the
sale's: a number is normalized to E.164 (``dmd_tasks.domain.phones``; the campaign's
``phoneRegion`` or ``DMD_PHONE_DEFAULT_REGION`` reads national formats), and a fan whose
number, time zone or id is unusable gets a notification ``failed`` at once with the reason;
a row with no usable fan id cannot be a notification and becomes a dead letter (its key and
the reason) on the generate queue's dead-letter queue. Opted-out numbers get no
notification. One SMS per phone per sale: the first fan (in demand order) with a number
claims it (a ``PHONE_CLAIM`` item, written with the chunk; a resumed run agrees with the
one that died, whichever of the two writes landed); any other fan of the sale with that number gets a
``duplicate`` notification naming the fan who is messaged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from celery import Task

from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.entities import Event, NotificationStatus, SaleStatus
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.domain.outcomes import GenerateOutcome
from dmd_tasks.infra import aws, logs
from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
from dmd_tasks.infra.metrics import NOTIFICATION_TRANSITIONS, RECONCILER_ACTIONS
from dmd_tasks.infra.topology import CLAIM_DUE_SALES, GENERATE_NOTIFICATIONS, TASK_QUEUES, WARM_EVENT_DETAILS
from dmd_tasks.pipeline.chain import claim_at, tick_now
from dmd_tasks.pipeline.fan_rows import DemandRow, GenerateResult, build_notifications, read_row
from dmd_tasks.pipeline.stage1_shorten import shorten_with
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.codec import iso
from dmd_tasks.store.keys import demand_fan

log = logging.getLogger(__name__)

#: Each chunk of a sale's first run is this many times the one before it, up to a whole chunk: the
#: generator writes faster than a campaign sends (at C = 50/s, 140 fans/s on a busy local stack), so
#: a chunk is ready before the ones before it are sent.
CHUNK_GROWTH = 2.5
#: Where dead letters of unusable demand rows go (the generate queue's dead-letter queue).
GENERATE_QUEUE = TASK_QUEUES[GENERATE_NOTIFICATIONS]


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


def ensure_short_url(services: Services, event: Event) -> str:
    """The event's short URL, shortening it now (the shortening stage's own logic) if still missing."""
    if event.short_url:
        return event.short_url
    shorten_with(services, event.id)
    refreshed = services.events.get(event.id)
    if refreshed is None or not refreshed.short_url:
        raise PermanentError(f"event {event.id} has no short URL after shortening")
    return refreshed.short_url


class SaleRun:
    """One generator run over a sale it holds the lease of: chunks of demand rows become
    notifications, each chunk checkpointed under the lease, until the sale is done or the run
    hands the rest over (after ``generate_chunks_per_run`` chunks or its time budget)."""

    def __init__(
        self,
        services: Services,
        sale: dict[str, Any],
        campaign: Campaign,
        lease: str,
        clock: Callable[[], float],
        first_written: Callable[[], object] | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.sale_id: str = sale["id"]
        self.event_id: str = sale["eventId"]
        self.campaign = campaign
        self.lease: str | None = lease
        self.clock = clock
        self.result = GenerateResult(self.sale_id, GenerateOutcome.DONE)
        self.pool = aws.io_pool(self.settings)  # a chunk's look-ups and writes go out concurrently
        self.started = time.monotonic()
        self.handing_over = False
        # A sale still holding the lease its last run handed over with (or the claim's) has nothing
        # past its cursor; otherwise a run died mid-chunk and the first chunk is checked for what
        # exists. A sale that may have notifications anywhere (re-run, restored after a re-save)
        # is checked on every chunk: a notification is never written over.
        self.check_all = bool(sale.get("checkAll"))
        clean = bool(sale.get("cleanLease")) and sale.get("cleanLease") == sale.get("leaseUntil")
        self.check_existing = self.check_all or not clean
        self.renewed = time.monotonic()
        # One Query per chunk: DynamoDB caps a page at 1 MB anyway (several thousand demand rows),
        # and every Query costs a round trip (moto's costs a pass over the whole table).
        self.first_chunk = sale.get("cursor") is None  # this run begins the sale: its chunks grow (_ramp)
        self.first_written = first_written
        self.pages = Prefetcher(self._pages(sale.get("cursor")), self.pool)

    def _pages(self, cursor: str | None) -> Iterator[list[dict[str, Any]]]:
        """The demand pages to write, one a chunk: a fresh sale's chunks grow from
        ``generate_first_chunk_size`` rows (``_ramp``), every other one is a whole chunk."""
        size = self.settings.generate_chunk_size
        if cursor is None:
            k = 0
            while (limit := self._ramp(k)) < size:
                page = next(self.services.demand.pages(self.event_id, cursor, limit), None)
                if page is None:
                    return
                yield page
                cursor, k = demand_fan(page[-1]["sk"]), k + 1
        yield from self.services.demand.pages(self.event_id, cursor, size)

    def _ramp(self, k: int) -> int:
        """The size of a fresh sale's chunk ``k``: its first SMS waits for a small first chunk only,
        and each chunk is read and checked (the part of its work before anything is written) while
        the ones before it are sent."""
        return min(self.settings.generate_chunk_size, int(self.settings.generate_first_chunk_size * CHUNK_GROWTH**k))

    def _chunk_size(self) -> int:
        if self.first_chunk:  # this run began the sale: its chunks grow
            return self._ramp(self.result.chunks)
        return self.settings.generate_chunk_size

    def write(self) -> GenerateResult:
        chunk: list[dict[str, Any]] = []
        while (page := self.pages.take()) is not None:
            for row in page:
                chunk.append(row)
                if len(chunk) >= self._chunk_size():
                    if not self.flush(chunk):
                        return self._outcome(GenerateOutcome.OWNED_ELSEWHERE)
                    if self.handing_over:
                        return self._outcome(GenerateOutcome.CONTINUE)
                    chunk = []
        if chunk and not self.flush(chunk):
            return self._outcome(GenerateOutcome.OWNED_ELSEWHERE)
        assert self.lease is not None
        if not self.services.sales.finish(self.sale_id, self.lease, self.clock()):
            return self._outcome(GenerateOutcome.OWNED_ELSEWHERE)
        return self.result

    def _outcome(self, outcome: GenerateOutcome) -> GenerateResult:
        self.result.outcome = outcome
        return self.result

    def flush(self, chunk: list[dict[str, Any]]) -> bool:
        """Write one chunk and checkpoint it; False if the lease was lost meanwhile."""
        settings, notifications, result = self.settings, self.services.notifications, self.result
        # Is this the run's last chunk? Decided before writing, so that the next page is read
        # while this chunk is written only when this run will write it.
        self.handing_over = (
            result.chunks + 1 >= settings.generate_chunks_per_run
            or time.monotonic() - self.started >= settings.generate_run_budget_seconds
        )
        if not self.handing_over:
            self.pages.request()
        region = self.campaign.phone_region or settings.phone_default_region
        rows = [read_row(r, region) for r in chunk]
        self.dead_letter([r for r in rows if r.fan_id is None])
        fan_ids = [r.fan_id for r in rows if r.fan_id is not None]
        phones = [r.phone for r in rows if r.phone is not None]
        skip = notifications.existing_fans(self.sale_id, fan_ids, self.pool) if self.check_existing else set()
        opted_out = self.services.demand.opted_out(phones, self.pool)
        owners = notifications.phone_owners(self.sale_id, phones, self.pool)
        if not self.fence():
            return False
        items, claims = build_notifications(
            rows,
            sale_id=self.sale_id,
            event_id=self.event_id,
            campaign=self.campaign,
            notifications=notifications,
            opted_out=opted_out,
            owners=owners,
            skip=skip,
            now=self.clock(),
            result=result,
        )
        # One write for both, in any order: a run that died part-way resumes checking what exists,
        # finds a number claimed by the fan it was about to write (and writes that fan's
        # notification), or a fan written without its claim (and claims the number for it).
        self.services.notifications_table.put_items([*claims, *items], self.pool)
        for status in (NotificationStatus.PENDING, NotificationStatus.FAILED, NotificationStatus.DUPLICATE):
            created = sum(1 for i in items if i["status"] == status)
            if created:
                NOTIFICATION_TRANSITIONS.labels("none", status.value).inc(created)
        result.written += len(items)
        result.chunks += 1
        assert self.lease is not None
        self.lease = self.services.sales.checkpoint(
            self.sale_id,
            self.lease,
            demand_fan(chunk[-1]["sk"]),  # the row's key, whatever its attributes hold
            len(items) + len(skip),
            self.clock(),
            settings.generate_lease_seconds,
            last=self.handing_over,
        )
        self.check_existing = self.check_all
        self.renewed = time.monotonic()
        if self.lease is not None and self.first_chunk and result.chunks == 1 and self.first_written is not None:
            self.first_written()  # the sale's first notifications are there: no wait for beat's next tick
        return self.lease is not None

    def dead_letter(self, rows: list[DemandRow]) -> None:
        """Rows without a usable fan id cannot become a notification: each becomes a dead letter
        with its key and the reason (never its phone number), and the sale goes on."""
        if not rows:
            return
        self.result.unusable_rows += len(rows)
        letters = [
            DeadLetter(
                reason=f"demand row of sale {self.sale_id} not notified: {r.problem}",
                payload={"saleId": self.sale_id, "eventId": self.event_id, "key": r.key},
                correlation_id=logs.correlation_id.get(),
                source=GENERATE_QUEUE,
            )
            for r in rows
        ]
        DeadLetters(self.settings).send_batch(GENERATE_QUEUE, letters)
        log.warning("sale %s: %d demand rows without a usable fanId dead-lettered", self.sale_id, len(rows))

    def fence(self) -> bool:
        """Renew the lease before writing if a third of it has passed since the last renewal, so a
        run writes only while it holds the sale with time to spare (a run that was paused past its
        lease finds it taken and writes nothing). False if the lease was lost."""
        lease_seconds = self.settings.generate_lease_seconds
        if time.monotonic() - self.renewed < lease_seconds / 3:
            return True
        assert self.lease is not None
        self.lease = self.services.sales.take_lease(self.sale_id, self.lease, self.clock(), lease_seconds)
        self.renewed = time.monotonic()
        return self.lease is not None


def generate_sale(
    sale_id: str,
    services: Services,
    clock: Callable[[], float] = time.time,
    first_written: Callable[[], object] | None = None,
) -> GenerateResult:
    """Write the sale's notifications from its checkpoint on, if this run can take its lease;
    ``first_written`` is called once the sale's first chunk is written and checkpointed."""
    sale = services.sales.get(sale_id)
    if sale is None:
        raise PermanentError(f"sale {sale_id} not found")
    if sale["status"] == SaleStatus.GENERATED:
        return GenerateResult(sale_id, GenerateOutcome.ALREADY_GENERATED)
    if sale["status"] != SaleStatus.GENERATING:
        return GenerateResult(sale_id, GenerateOutcome.NOT_CLAIMED)
    lease = services.sales.take_lease(
        sale_id, sale.get("leaseUntil"), clock(), services.settings.generate_lease_seconds
    )
    if lease is None:
        return GenerateResult(sale_id, GenerateOutcome.OWNED_ELSEWHERE)
    campaign = services.campaigns.get(sale_id)  # InvalidCampaign (permanent) if it no longer validates
    if campaign is None:
        raise PermanentError(f"sale {sale_id} has no campaign")
    event = services.events.get(sale["eventId"])
    if event is None:
        raise PermanentError(f"event {sale['eventId']} of sale {sale_id} not found")
    ensure_short_url(services, event)
    return SaleRun(services, sale, campaign, lease, clock, first_written).write()


@task(GENERATE_NOTIFICATIONS, max_retries=5)
def generate_notifications(self: Task, sale_id: str) -> dict[str, Any]:
    """Write a sale's notifications (see the module docstring: trigger, idempotency, retries).

    Transient errors are retried by Celery from the last checkpoint.
    """
    services = get_services()
    try:
        # its first chunk written, a due sale's first scheduling tick goes at once (a tick that
        # finds another running is skipped; the sale's lead is given by whichever runs first)
        result = generate_sale(sale_id, services, first_written=lambda: tick_now(self.app, services.settings))
    except PermanentError as exc:
        # A sale that cannot be generated (no campaign, invalid template, no event) stops
        # here, visibly, instead of being restarted every lease period.
        if services.sales.fail(sale_id, str(exc), time.time()):
            log.error("sale %s failed: %s", sale_id, exc)
        raise
    log.info(
        "sale %s: %s (%d written, %d opted out, %d invalid rows, %d duplicate numbers, %d dead-lettered rows, "
        "%d already present)",
        sale_id,
        result.outcome,
        result.written,
        result.opted_out,
        result.invalid_rows,
        result.duplicates,
        result.unusable_rows,
        result.already_present,
    )
    if result.outcome is GenerateOutcome.CONTINUE:
        generate_notifications.apply_async((sale_id,))
    return {"sale_id": sale_id, "outcome": result.outcome, "written": result.written}


@task(CLAIM_DUE_SALES, max_retries=0, dead_letters=False)
def claim_due_sales(self: Task) -> dict[str, Any]:
    """Beat: claim due sales once each and start their generation; restart stalled generations."""
    services = get_services()
    epoch = services.wake.epoch()  # before looking: work made after this wakes the next tick
    now = time.time()
    idle = services.settings.beat_idle_tick_seconds
    claimed = restarted = restored = 0
    due, next_due = services.sales.due_ahead(now, idle)
    stalled, next_stall = services.sales.stalled_ahead(now, idle)
    for sale in due:
        if "notifyAtError" in sale:
            if services.sales.refuse(sale["id"], sale["notifyAtError"], now):
                log.error("sale %s failed: %s", sale["id"], sale["notifyAtError"])
            continue
        try:
            outcome = services.sales.claim(sale["id"], now, services.settings.generate_lease_seconds)
        except Exception:  # one sale's trouble must not hold back the sales due after it
            log.exception("claiming sale %s failed; the next tick tries again", sale["id"])
            continue
        if outcome == "claimed":
            generate_notifications.apply_async((sale["id"],))
            # the API will be asked about this event while fans open their links: warm its cache
            self.app.send_task(WARM_EVENT_DETAILS, args=(sale["eventId"],))
            claimed += 1
            log.info("sale %s claimed (notify at %s)", sale["id"], sale.get("notifyAt"))
        elif outcome == "restored":
            restored += 1
            RECONCILER_ACTIONS.labels("sale_restored").inc()
            log.warning(
                "sale %s was written again as waiting after it ran: restored to its run's state, not generated "
                "again (an operator re-runs a sale with `dmd sales rerun`)",
                sale["id"],
            )
    for sale in stalled:
        # the run takes the expired lease with a conditional write; duplicates are no-ops
        generate_notifications.apply_async((sale["id"],))
        restarted += 1
        log.warning(
            "sale %s: generator lease expired at %s; resuming from its checkpoint", sale["id"], sale.get("leaseUntil")
        )
    if next_due is not None:
        claim_at(self.app, services.settings, services.redis, next_due, now)
    if claimed or restored:  # active sales now: the scheduler and the reconciler have work
        services.wake.wake("sale claimed")
    elif not due and not stalled:  # nothing to claim until the soonest notify time or lease end
        services.wake.rest(CLAIM_DUE_SALES, min(t for t in (now + idle, next_due, next_stall) if t), epoch, now)
    return {"claimed": claimed, "restarted": restarted, "restored": restored, "at": iso(now)}
