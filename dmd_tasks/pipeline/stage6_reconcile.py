"""Stage 6: the reconciler owns every notification still in flight, so none stays there.

Trigger: beat, every ``reconcile_interval_seconds``. It visits every sale on the active
list (a sale leaves it only when the reconciler itself retires it) and, with index
queries only (never a scan), moves forward what sits too long in a state dmd owns:

- ``sending`` past its lease (the worker died, or was paused past its lease): back to
  ``scheduled`` with one more attempt, conditional on the lease token it saw, so a live
  owner's write and this one cannot both win, and its send task published; on the last
  attempt ``failed``.
  With a provider without idempotency (``callStartedAt`` recorded: the call may have sent
  the SMS), ``unconfirmed`` instead: never sent again.
- ``unconfirmed`` with no provider event within ``unconfirmed_window_seconds``: ``unknown``
  (final; the operator's figures say how many fans may not have been reached). Looked at every
  minute (or a quarter of the window), not every pass: each look is an index query per shard.
- ``scheduled`` and not claimed ``scheduled_stale_seconds`` after it was due (its send
  message was lost: dead-lettered, purged, refused by the bridge): the send is published
  again, at most ``max_republishes`` times, then ``failed``; a notification whose id can
  never be routed (an invalid fan id) ``failed`` at once.
- ``pending`` ``pending_deadline_seconds`` after its send-after time: ``failed``.
- a sale that is generated (or failed) with nothing in flight at two looks a reconcile
  interval apart is retired from the active list.

Every move is a conditional write: two reconcilers at once (two beats during a
hand-over) change each notification once. What it did is counted in
``dmd_reconciler_actions_total{action}``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.entities import NotificationStatus, SaleStatus
from dmd_tasks.domain.ids import is_valid_id, notification_id
from dmd_tasks.domain.providers import capabilities_of
from dmd_tasks.infra.deadline import Deadline, Gate
from dmd_tasks.infra.metrics import RECONCILER_ACTIONS, WORK_CUT_SHORT
from dmd_tasks.infra.topology import RECONCILE
from dmd_tasks.pipeline.chain import publish_sends
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.notifications.reconciling import TakeBack

log = logging.getLogger(__name__)

PENDING = NotificationStatus.PENDING.value
SCHEDULED = NotificationStatus.SCHEDULED.value
SENDING = NotificationStatus.SENDING.value
ENDED = (SaleStatus.GENERATED.value, SaleStatus.FAILED.value)


class Reconciler:
    """One pass over one sale. ``republish`` collects the notification ids to send again."""

    def __init__(self, services: Services, now: float, *, unconfirmed: bool = True) -> None:
        #: whether this pass looks at unconfirmed sends (``unconfirmed_due``: not every pass)
        self.check_unconfirmed = unconfirmed
        self.services = services
        self.settings = services.settings
        self.notifications = services.notifications
        self.now = now
        self.actions: Counter[str] = Counter()
        self.republish: list[str] = []

    def _count(self, action: str, done: bool | int = True) -> None:
        if done:
            self.actions[action] += int(done)
            RECONCILER_ACTIONS.labels(action).inc(int(done))

    def sale(self, sale_id: str) -> None:
        for shard in self.notifications.shards():
            self.expired_leases(sale_id, shard)
            if self.check_unconfirmed:
                self.unconfirmed_over(sale_id, shard)
            self.stale_scheduled(sale_id, shard)
            self.late_pending(sale_id, shard)
        self.maybe_retire(sale_id)

    def expired_leases(self, sale_id: str, shard: int) -> None:
        backs: list[TakeBack] = []
        for item in self.notifications.expired_leases(sale_id, shard, self.now):
            fan_id, token = item["fanId"], item.get("leaseToken")
            attempts = int(item.get("attempts", 0)) + 1  # the call may have reached the provider
            if "callStartedAt" in item and not capabilities_of(item.get("provider")).idempotent:
                # the call to a provider that cannot deduplicate had started: never sent again
                started = float(item["callStartedAt"])
                done = self.notifications.mark_unconfirmed(
                    sale_id,
                    fan_id,
                    started + self.settings.unconfirmed_window_seconds,
                    f"send lease expired during the call to {item.get('provider')}: the SMS may have gone",
                    lease_token=token,
                    expired_by=self.now,
                )
                self._count("unconfirmed_lease_expired", done)
            elif attempts >= self.settings.max_send_attempts:
                done = self.notifications.mark_failed(
                    sale_id,
                    fan_id,
                    "send lease expired on the last attempt",
                    source=SENDING,
                    attempts=attempts,
                    lease_token=token,
                )
                self._count("failed_lease_expired", done)
            else:
                # a call that had started at one provider is repeated there (with two providers:
                # the other could send a second SMS)
                called = item.get("provider") if "callStartedAt" in item else None
                backs.append(TakeBack(fan_id, token, attempts, str(called) if called else None))
        if backs:  # back in scheduled, together (a frozen worker's leases expire together)
            taken = self.notifications.take_back_many(
                sale_id, backs, self.now, "send lease expired; sent again with the same idempotency key"
            )
            self._count("lease_taken_back", len(taken))
            # their send tasks are this pass's to publish
            self.republish.extend(notification_id(sale_id, fan_id) for fan_id in taken)

    def unconfirmed_over(self, sale_id: str, shard: int) -> None:
        window = self.settings.unconfirmed_window_seconds
        for item in self.notifications.unconfirmed_due(sale_id, shard, self.now):
            done = self.notifications.mark_unknown(
                sale_id,
                item["fanId"],
                f"no answer and no provider event within {window:.0f}s of the call: whether the SMS "
                "reached the fan is unknown (it was not sent again)",
                item["gsi1sk"],
            )
            self._count("unknown_no_event", done)
            if done:
                log.warning("notification %s ended unknown: no provider event", notification_id(sale_id, item["fanId"]))

    def stale_scheduled(self, sale_id: str, shard: int) -> None:
        before = self.now - self.settings.scheduled_stale_seconds
        for item in self.notifications.stale_scheduled(sale_id, shard, before):
            fan_id = item["fanId"]
            times = int(item.get("republished", 0))
            if not is_valid_id(fan_id) or not is_valid_id(sale_id):
                done = self.notifications.mark_failed(
                    sale_id, fan_id, "its id cannot be routed to the sender (invalid fan id)", source=SCHEDULED
                )
                self._count("failed_invalid_id", done)
            elif times >= self.settings.max_republishes:
                done = self.notifications.mark_failed(
                    sale_id, fan_id, f"its send message was lost {times} times; not sent", source=SCHEDULED
                )
                self._count("failed_lost_message", done)
            elif self.notifications.republish_mark(sale_id, fan_id, item["gsi1sk"], self.now, times + 1):
                self.republish.append(notification_id(sale_id, fan_id))
                self._count("republished")

    def late_pending(self, sale_id: str, shard: int) -> None:
        deadline = self.settings.pending_deadline_seconds
        for item in self.notifications.stale_pending(sale_id, shard, self.now - deadline):
            done = self.notifications.mark_failed(
                sale_id, item["fanId"], f"not scheduled within {deadline:.0f}s of its send time", source=PENDING
            )
            self._count("failed_pending_deadline", done)

    def maybe_retire(self, sale_id: str) -> None:
        sale = self.services.sales.get(sale_id)
        if sale is None or sale.get("status") not in ENDED:
            return
        if self.notifications.any_in_flight(sale_id):
            if sale.get("quietSince") is not None:
                self.services.sales.clear_quiet(sale_id)
            return
        quiet_since = sale.get("quietSince")
        if quiet_since is None or self.now - float(quiet_since) < self.settings.reconcile_interval_seconds / 2:
            if quiet_since is None:
                self.services.sales.note_quiet(sale_id, self.now)
            return
        if self.services.sales.retire(sale_id, int(quiet_since)):
            self._count("sale_retired")
            log.info("sale %s retired: none of its notifications is in flight", sale_id)


#: The longest gap between two looks at the unconfirmed sends (their wait is long: an hour by
#: default); each look is an index query per sale and shard, which the other passes save.
UNCONFIRMED_CHECK_SECONDS = 60.0


def unconfirmed_due(settings: Any, gate: Gate, now: float) -> bool:
    """Whether this pass looks at the unconfirmed sends: every UNCONFIRMED_CHECK_SECONDS (or a
    quarter of the window, if shorter), so a send waits at most that much past its window."""
    return gate.due(now, min(UNCONFIRMED_CHECK_SECONDS, settings.unconfirmed_window_seconds / 4))


def reconcile(
    services: Services,
    publish: Callable[[list[str]], object],
    now: float | None = None,
    deadline: Deadline | None = None,
) -> dict[str, int]:
    """One pass over every active sale, or those it reaches before ``deadline`` (default: the
    settings' work budget from now; the sales are taken in a random order, so none waits for ever
    behind the others); ``publish`` is given the ids back in ``scheduled`` (their send tasks:
    ``chain.publish_sends``). Returns what it did, by action, and how many sales it left."""
    now = time.time() if now is None else now
    deadline = deadline or Deadline.after(services.settings.work_budget_seconds)
    reconciler = Reconciler(
        services, now, unconfirmed=unconfirmed_due(services.settings, services.unconfirmed_gate, now)
    )
    active = services.sales.active()
    random.shuffle(active)
    sales = 0
    for sale_id in active:
        if deadline.passed:
            break
        sales += 1
        try:
            reconciler.sale(sale_id)
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            log.exception("reconciling sale %s failed; the next pass tries again", sale_id)
    if reconciler.republish:
        publish(reconciler.republish)
    if reconciler.actions:
        log.warning("reconciler: %s", dict(reconciler.actions))
    left = len(active) - sales
    if left:
        WORK_CUT_SHORT.labels(RECONCILE).inc()
        log.warning(
            "reconciler pass stopped at its time budget: %d of %d sales left to the next pass", left, len(active)
        )
    return {"sales": sales, **reconciler.actions, **({"sales_left": left} if left else {})}


@task(RECONCILE, max_retries=0, dead_letters=False)
def reconcile_sales(self: Task) -> dict[str, int]:
    """Beat: one reconciler pass (see the module docstring)."""
    services = get_services()
    epoch = services.wake.epoch()  # before looking: a sale claimed after this wakes the next pass
    now = time.time()
    done = reconcile(services, lambda ids: publish_sends(self.app, services.settings, ids), now)
    if not done["sales"] and not done.get("sales_left"):  # no active sale: nothing to look after
        services.wake.rest(RECONCILE, now + services.settings.beat_idle_tick_seconds, epoch, now)
    return done
