"""Stage 3: ``pending → scheduled``, time-gated and within the provider's rate budget.

Trigger: beat, every ``schedule_interval_seconds``. One tick at a time across all beats
and workers (a Redis lock; a tick that finds it held does nothing).

The account's cap (``DMD_SMS_ACCOUNT_PARTS_PER_SECOND``, message parts per second) is
shared by every active sale, max-min fairly (``run_tick``): a campaign's rate is a ceiling
within it, a slow campaign gets its own rate and a fast one the rest. Per active sale, the
tick queries the sparse pending index (``gsi1``, never a scan) for notifications whose
send-after time has come, at most its share of the time since the last tick, and moves
them in transactions of up to 100 conditional writes (each applied only if still pending),
publishing the send tasks of what each moved (``chain.py``). A notification whose fan is in
quiet hours now (the window may have closed since generation) gets its send-after moved to
the next opening instead, and one
past its validity (``expiresAt``) ends ``failed`` ("expired"). What is stuck after that
(expired send leases, lost send messages, sales with nothing left in flight) is the
reconciler's (``stage6_reconcile``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.entities import NotificationStatus
from dmd_tasks.domain.ids import notification_id
from dmd_tasks.infra.deadline import Deadline
from dmd_tasks.infra.metrics import WORK_CUT_SHORT
from dmd_tasks.infra.topology import SCHEDULE_NOTIFICATIONS
from dmd_tasks.pipeline.chain import publish_sends
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.table import TRANSACT_MAX_ITEMS

log = logging.getLogger(__name__)

PENDING = NotificationStatus.PENDING.value

#: Redis key of the lock that lets one scheduling tick run at a time, everywhere.
TICK_LOCK_KEY = "dmd:lock:schedule-tick"
#: Redis key of when the last beat tick ran (epoch seconds): the next one releases the time since.
LAST_TICK_KEY = "dmd:schedule:last-tick"
#: Redis key that says a sale was given its lead (``schedule_lead_seconds``) already.
LEAD_KEY = "dmd:schedule:lead:{sale_id}"


#: What a tick gives the ids of each batch of notifications it moved into ``scheduled``.
Publish = Callable[[list[str]], object]


@dataclass
class TickResult:
    scheduled: int = 0
    deferred: int = 0
    lost_race: int = 0
    expired: int = 0
    #: due notifications the tick found but did not move before its deadline (the next tick's)
    left: int = 0
    #: active sales the tick did not reach before its deadline
    sales_not_reached: int = 0
    #: the deadline limited the tick: it left work it would otherwise have done to the next tick
    cut_short: bool = False
    #: active sales the tick found
    sales: int = 0
    #: rounds of writes the tick began
    rounds: int = 0


@dataclass
class SaleShare:
    """One active sale in a tick: what its campaign asks for and what the tick gave it (parts per second)."""

    sale_id: str
    campaign: Campaign
    parts: int  # the parts one of its messages takes (estimated from its template)
    given: float = 0.0
    full: bool = False  # it used all it was given: it may take more

    @property
    def wants(self) -> float:
        return self.campaign.rate_per_second * self.parts


def message_budget(parts_per_second: float, parts: int, interval_seconds: float) -> int:
    """Messages a sale may be given this tick; the fraction goes by chance, so it holds on average
    (a 0.5/s campaign on a 1 s tick gets one message every other tick)."""
    exact = parts_per_second / max(parts, 1) * interval_seconds
    whole = int(exact)
    return whole + (1 if random.random() < exact - whole else 0)


def schedule_sale(
    services: Services,
    sale_id: str,
    now: float,
    interval_seconds: float,
    result: TickResult,
    budget: int | None = None,
    deadline: Deadline | None = None,
    publish: Publish | None = None,
) -> int:
    """Schedule at most ``budget`` due notifications of the sale (default: its campaign's rate for
    one interval) before ``deadline``, publishing their send tasks (``publish``); returns how many
    it moved."""
    campaign = services.campaigns.get(sale_id)
    if campaign is None:
        log.error("sale %s is active but has no campaign; nothing scheduled", sale_id)
        return 0
    if budget is None:
        budget = max(1, int(campaign.rate_per_second * interval_seconds))
    deadline = deadline or Deadline.after(services.settings.work_budget_seconds)
    return _schedule(services, sale_id, campaign, now, interval_seconds, budget, result, deadline, publish)


def _schedule(
    services: Services,
    sale_id: str,
    campaign: Campaign,
    now: float,
    interval_seconds: float,
    budget: int,
    result: TickResult,
    deadline: Deadline,
    publish: Publish | None = None,
) -> int:
    """Move up to ``budget`` due notifications, shard by shard, taking no more than fits before
    ``deadline`` at the write latency measured so far (``Services.write_pace``)."""
    notifications = services.notifications
    shards = list(notifications.shards())
    start = int(now / max(interval_seconds, 0.001)) % len(shards)  # rotate which shard goes first
    moved_in_all = 0
    for shard in shards[start:] + shards[:start]:
        if budget <= 0:
            break
        fits = services.write_pace.fits(deadline, TRANSACT_MAX_ITEMS)
        if fits <= 0 and _first_round(result, deadline):
            fits = TRANSACT_MAX_ITEMS
        if fits <= 0:
            result.cut_short = True  # this shard's due notifications (if any) are the next tick's
            break
        due = notifications.due_pending(sale_id, shard, now, min(budget, fits))
        if fits < budget and len(due) == fits:
            result.cut_short = True  # there may be more due than the time left let the tick take
        expired = [i for i in due if i.get("expiresAt") is not None and now >= float(i["expiresAt"])]
        for item in expired:  # too late to be useful: final, with the reason
            result.expired += notifications.mark_failed(
                sale_id,
                item["fanId"],
                f"expired: not sent within its validity ({campaign.validity_seconds}s from its first chance)",
                source=PENDING,
            )
        gone = {i["fanId"] for i in expired}
        live = [i for i in due if i["fanId"] not in gone]
        ready = [i["fanId"] for i in live if campaign.window.is_open_at(now, i.get("timezone"))]
        quiet = [i for i in live if not campaign.window.is_open_at(now, i.get("timezone"))]
        for item in quiet:  # the window closed since generation: wait for it to open again
            opens = campaign.window.next_open_ts(now, item.get("timezone"))
            result.deferred += notifications.defer(sale_id, item["fanId"], opens)
        moved = _move_scheduled(services, sale_id, ready, now, deadline, result, publish)
        budget -= moved
        moved_in_all += moved
    return moved_in_all


def _move_scheduled(
    services: Services,
    sale_id: str,
    fan_ids: list[str],
    now: float,
    deadline: Deadline,
    result: TickResult,
    publish: Publish | None,
) -> int:
    """``pending → scheduled`` for ``fan_ids``, in rounds of one transaction of up to 100
    conditional writes, each round counted and its send tasks published as it ends (``publish``),
    none begun that would end past ``deadline`` at the measured pace (what is left is counted in
    ``result.left``). Returns how many moved."""
    notifications = services.notifications
    moved_in_all = 0
    for start in range(0, len(fan_ids), TRANSACT_MAX_ITEMS):
        # this round would end past the deadline (unless it is the tick's first: see _first_round)
        if deadline.remaining < services.write_pace.seconds and not _first_round(result, deadline):
            result.left += len(fan_ids) - start
            result.cut_short = True
            break
        result.rounds += 1
        began, chunk = time.monotonic(), fan_ids[start : start + TRANSACT_MAX_ITEMS]
        moved = notifications.schedule_many(sale_id, chunk, now)
        services.write_pace.record(time.monotonic() - began)
        result.scheduled += len(moved)
        result.lost_race += len(chunk) - len(moved)
        moved_in_all += len(moved)
        if publish is not None and moved:
            publish([notification_id(sale_id, fan_id) for fan_id in moved])
    return moved_in_all


def _first_round(result: TickResult, deadline: Deadline) -> bool:
    """A tick with time left begins one round of writes whatever the pace says: that round measures
    the pace again. Without it, a write once slower than the whole budget (a moment of throttling)
    left a pace no round ever fitted, so none was made to measure it again: the scheduler stopped
    for good (seen in the chaos suite: every tick "a write takes 6794 ms" for minutes). The budget
    is a third of the soft time limit, so one round past it still ends in time."""
    return result.rounds == 0 and not deadline.passed


def active_shares(services: Services, sale_ids: list[str]) -> list[SaleShare]:
    shares: list[SaleShare] = []
    for sale_id in sale_ids:
        try:
            campaign = services.campaigns.get(sale_id)
        except Exception:
            log.exception("sale %s: its campaign cannot be read; nothing scheduled", sale_id)
            continue
        if campaign is None:
            log.error("sale %s is active but has no campaign; nothing scheduled", sale_id)
            continue
        try:
            parts = campaign.estimated_segments().parts
        except Exception:  # an invalid template fails at send, with the reason
            parts = 1
        shares.append(SaleShare(sale_id, campaign, parts))
    return shares


def tick_span(services: Services, now: float) -> float:
    """Seconds of budget a beat tick releases: the time since the last tick (recorded here), within
    half an interval and two intervals, or the work budget of a tick if longer. Beat's interval
    drifts (each run is timed from the last one's actual start) and a tick can be late, lost, or
    skipped while a slow one held the lock; a budget of one fixed interval per tick would leave
    that time unused, and the sends below the cap. The cap on the span keeps a beat that was down
    for minutes from releasing minutes of sends at once."""
    interval = services.settings.schedule_interval_seconds
    try:
        previous = services.redis.set(LAST_TICK_KEY, repr(now), get=True, ex=max(60, int(interval * 10)))
    except Exception:  # Redis is where the tick's lock lives too: without it, one interval
        return interval
    try:
        elapsed = now - float(previous) if previous is not None else interval
    except ValueError:
        elapsed = interval
    return min(max(elapsed, interval / 2), max(2 * interval, services.settings.work_budget_seconds))


def run_tick(
    services: Services,
    now: float | None = None,
    sale_ids: list[str] | None = None,
    span: float | None = None,
    lead_seconds: float = 0.0,
    deadline: Deadline | None = None,
    publish: Publish | None = None,
) -> TickResult:
    """One tick over the active sales (or ``sale_ids``), sharing the account's cap between them,
    for ``span`` seconds of budget (default: one interval); a sale's first tick also gets
    ``lead_seconds`` of its share, once (beat: ``schedule_lead_seconds``). No work is begun after
    ``deadline`` (default: the settings' work budget from now): what is left is the next tick's.
    ``publish`` is given the ids of each batch moved (their send tasks: ``chain.publish_sends``).

    The cap (message parts per second) is shared max-min fairly: sales in order of what their
    campaigns ask, each given at most its campaign's rate and at most an equal split of what
    is left; what a sale leaves unused (nothing due, a lost race) goes to those that used all
    they were given, in a second pass. The send path meters the same cap in Redis, so the
    provider never sees more, whatever the scheduler released.
    """
    now = time.time() if now is None else now
    interval = services.settings.schedule_interval_seconds
    span = interval if span is None else span
    deadline = deadline or Deadline.after(services.settings.work_budget_seconds)
    result = TickResult()
    active = services.sales.active() if sale_ids is None else sale_ids
    result.sales = len(active)
    shares = sorted(active_shares(services, active), key=lambda s: s.wants)
    # the account's cap; with two providers, the caps of those taking traffic now
    remaining = services.sms_router.capacity()
    for n, share in enumerate(shares):
        if deadline.passed:
            result.sales_not_reached = len(shares) - n
            result.cut_short = True
            return result
        give = min(share.wants, remaining / (len(shares) - n))
        lead = _lead_budget(services, share, give, lead_seconds)
        used = _tick_sale(services, share, give, now, interval, span, result, deadline, publish, lead)
        remaining = max(0.0, remaining - used)
    for share in shares:  # what others left: to the sales that used all of theirs
        if remaining <= 0 or deadline.passed:
            break
        if share.full and share.wants > share.given:
            more = min(share.wants - share.given, remaining)
            used = _tick_sale(services, share, more, now, interval, span, result, deadline, publish)
            remaining = max(0.0, remaining - used)
    return result


def _lead_budget(services: Services, share: SaleShare, give: float, lead_seconds: float) -> int:
    """Messages of the sale's lead, until a tick has used it all (0 after, or with Redis unreachable)."""
    if lead_seconds <= 0 or give <= 0:
        return 0
    try:
        given = services.redis.exists(LEAD_KEY.format(sale_id=share.sale_id))
    except Exception:
        return 0
    return 0 if given else message_budget(give, share.parts, lead_seconds)


def _tick_sale(
    services: Services,
    share: SaleShare,
    give: float,
    now: float,
    interval: float,
    span: float,
    result: TickResult,
    deadline: Deadline,
    publish: Publish | None,
    lead: int = 0,
) -> float:
    """Schedule up to ``give`` parts per second of one sale over ``span`` seconds (and ``lead``
    messages more); returns the parts per second it used (the lead not counted)."""
    budget = message_budget(give, share.parts, span)
    if budget + lead <= 0:
        share.full = True
        return 0.0
    try:
        moved = _schedule(
            services, share.sale_id, share.campaign, now, interval, budget + lead, result, deadline, publish
        )
    except SoftTimeLimitExceeded:
        raise  # the whole tick is out of time: nothing more to begin
    except Exception:
        log.exception("scheduling sale %s failed; the next tick tries again", share.sale_id)
        return 0.0
    used = min(moved, budget) * share.parts / span
    share.given += used
    share.full = moved >= budget + lead
    if lead and share.full:  # the lead is out: the sends are that far ahead of the sender now
        try:
            services.redis.set(LEAD_KEY.format(sale_id=share.sale_id), "1", ex=86_400)
        except Exception:
            log.warning("sale %s: its lead could not be recorded; the next tick gives it again", share.sale_id)
    return used


@task(SCHEDULE_NOTIFICATIONS, max_retries=0, dead_letters=False)
def schedule_notifications(self: Task) -> dict[str, int]:
    """Beat: one scheduling tick (see the module docstring). Overlapping ticks are skipped, not queued."""
    services = get_services()
    lock = services.redis.lock(TICK_LOCK_KEY, timeout=max(30, int(self.soft_time_limit or 60)), blocking=False)
    if not lock.acquire():
        return {"skipped": 1}
    try:
        epoch = services.wake.epoch()  # before looking: a sale claimed after this wakes the next tick
        now = time.time()
        result = run_tick(
            services,
            now=now,
            span=tick_span(services, now),
            lead_seconds=services.settings.schedule_lead_seconds,
            publish=lambda ids: publish_sends(self.app, services.settings, ids),
        )
    finally:
        try:
            lock.release()
        except Exception:  # expired: the next tick simply takes it
            log.warning("schedule tick lock expired before release")
    if not result.sales:  # no active sale: no tick needed until one is claimed
        services.wake.rest(SCHEDULE_NOTIFICATIONS, now + services.settings.beat_idle_tick_seconds, epoch, now)
    if result.cut_short:
        WORK_CUT_SHORT.labels(SCHEDULE_NOTIFICATIONS).inc()
        log.warning(
            "schedule tick stopped at its time budget (%.0fs; a write takes %.0f ms now): %s",
            services.settings.work_budget_seconds,
            services.write_pace.seconds * 1000,
            result,
        )
    elif result.scheduled or result.deferred:
        log.info("schedule tick: %s", result)
    return vars(result)
