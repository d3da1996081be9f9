"""Stage 4: send each scheduled notification as one SMS, exactly once.

Trigger: the stage that moved notifications into ``scheduled`` (the scheduler's tick, a send
going back for a retry, the reconciler) publishes their task here, in batches of
``send_batch_size`` notification ids (``chain.py``; a retry carries SQS DelaySeconds until its
``notBefore``).

Per notification:

1. ``scheduled → sending`` with a conditional write and a lease: only one worker owns it;
   a repeated message finds it no longer ``scheduled`` and does nothing.
2. Render the campaign template with the safe renderer (no access to Python objects).
3. Wait for a slot of the rate limit shared by every send worker (Redis), since Celery's
   ``rate_limit`` is per worker only.
4. Call the SMS provider (``dmd_tasks.clients.providers``) with the notification id: the
   idempotency key of a provider that has one, ``Context`` of one that has none. Before a
   call to a provider without idempotency, the lease holder records that the call started
   (``callStartedAt``); a call whose outcome is unknown (no answer) moves the notification to
   ``unconfirmed``: it waits for the provider's event and is never sent again.
5. ``sending → sent`` with the provider's message id. Retryable failures (429, 5xx,
   timeouts) go back to ``scheduled`` with ``attempts + 1`` and a backoff (or the
   provider's ``Retry-After``); permanent failures and the last attempt end ``failed``
   with the reason.

One send (2-5) is ``send_step`` (check → call → record) and ``send_outcomes`` (what a send the
provider did not accept means). A batch's claims (1) go out together, and so do its sends (2-5), on the process's AWS
thread pool: a batch waits about one provider round trip, not ten, while the shared rate
limit still spaces the calls. Before the sends, the batch's plan (``send_plan``) checks every
message, asks each provider's circuit once and reserves each sale's slots in one request; a
send then makes one Redis round trip of its own, just before its call.

The claim's lease carries a token, and every later write of the send (``sent``, retry,
``failed``) is conditional on it: a worker that overran its lease writes nothing. A worker
that dies between 4 and 5 leaves the notification in ``sending``; when the lease expires
the reconciler (``stage6_reconcile``) takes it back and it is re-sent with the same
idempotency key, so the provider does not send a second SMS; with a provider without
idempotency, a call that had started makes it ``unconfirmed`` instead (at most once). A send that never reached
the provider (no rate-limit slot in time, Redis or AWS down) goes back to ``scheduled``
without spending an attempt.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import Counter
from concurrent.futures import wait as futures_wait
from typing import Any

from celery import Task

from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.ids import split_notification_id
from dmd_tasks.domain.outcomes import SendOutcome
from dmd_tasks.infra import aws
from dmd_tasks.infra.deadline import Deadline
from dmd_tasks.infra.topology import SEND_NOTIFICATIONS
from dmd_tasks.pipeline.chain import publish_due
from dmd_tasks.pipeline.send_plan import plan_batch
from dmd_tasks.pipeline.send_step import send_claimed
from dmd_tasks.pipeline.sent_records import SentRecords
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.keys import fan_of, sale_of

log = logging.getLogger(__name__)


def claim_batch(services: Services, notification_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``scheduled → sending`` for each id, 100 claims to a request (each conditional on its own
    status: only one worker wins a notification); returns the ones this worker now owns."""
    ids = [split_notification_id(nid) for nid in dict.fromkeys(notification_ids)]
    items = services.notifications.claim_many(ids, time.time(), services.settings.send_lease_seconds)
    return [(f"{sale_of(i['pk'])}:{fan_of(i['sk'])}", i) for i in items]


@task(SEND_NOTIFICATIONS, max_retries=3)
def send_notifications(
    self: Task,
    notification_ids: list[str],
    trace_context: dict[str, str] | None = None,
) -> dict[str, int]:
    """Send a batch of scheduled notifications (see the module docstring).

    Each notification's outcome is its own; one bad id never sinks the rest. Errors outside
    a single send (the store unreachable) are retried by Celery; every step is idempotent.
    """
    services = get_services()
    # The claim is the batch's new work; what it claimed is sent until two work budgets (two
    # thirds of the soft time limit) from now, the last third left for the records. Giving a
    # claimed notification back costs a write, a publish and a claim again: when a slow store
    # made the claim eat the first budget, sending was cheaper than giving back, and giving
    # back fed the store's slowness (the chaos suite's frozen worker: every batch of the other
    # worker out of time after its claim, 500 give-backs, the reconciler starved).
    deadline = Deadline.after(2 * services.settings.work_budget_seconds)
    outcomes: Counter[str] = Counter()
    valid = _valid_ids(notification_ids, outcomes)
    owned = claim_batch(services, valid)
    outcomes[SendOutcome.SKIPPED] += len(valid) - len(owned)  # not scheduled any more: sent, failed, or owned elsewhere
    again: list[tuple[str, float]] = []  # back to scheduled: their send tasks are published below
    # what the provider accepted, and what goes back to scheduled: written together
    records = SentRecords(services.notifications)
    traces = trace_context if isinstance(trace_context, dict) else {}
    first_error = _send_owned(services, owned, traces, deadline, again, records, outcomes)
    records.flush()
    if owned:  # provider calls were made: their receipts are on their way to the status stream
        services.status_doorbell.ring()
    if records.lost:  # their write found the lease gone: counted as sent above, lost in fact
        outcomes[SendOutcome.SENT] -= records.lost
        outcomes[SendOutcome.LEASE_LOST] += records.lost
    # those that went back to scheduled (a not-attempted send, a retry): their tasks, each held
    # back until it is due (a publish lost here is the reconciler's, as a stale scheduled one)
    publish_due(self.app, services.settings, again)
    if first_error is not None:
        log.warning("send batch: %s", dict(outcomes))
        raise first_error
    return dict(outcomes)


def _valid_ids(notification_ids: Any, outcomes: Counter[str]) -> list[str]:
    """The batch's well-formed ids (once each is the claim's business); the others counted."""
    valid: list[str] = []
    for nid in notification_ids if isinstance(notification_ids, list) else []:
        try:
            split_notification_id(nid)
            valid.append(nid)
        except ValueError:
            outcomes[SendOutcome.INVALID_ID] += 1
            log.warning("send batch carried an invalid notification id")
    return valid


def _send_owned(
    services: Services,
    owned: list[tuple[str, dict[str, Any]]],
    traces: dict[str, str],
    deadline: Deadline,
    again: list[tuple[str, float]],
    records: SentRecords,
    outcomes: Counter[str],
) -> BaseException | None:
    """Send what the batch owns, together: the sends are independent and mostly wait on the
    provider (the shared rate limit still spaces them), each in a copy of this task's context
    (its correlation id in the logs). Counts each outcome; returns the first error a send raised
    (a dependency failed after the claim: the lease expires, the reconciler resends)."""
    opted_out = services.demand.opted_out([item["phone"] for _, item in owned]) if owned else set()
    plan = plan_batch(services, owned, opted_out)
    pool = aws.io_pool(services.settings)
    futures = [
        pool.submit(
            contextvars.copy_context().run,
            send_claimed,
            services,
            nid,
            item,
            opted_out,
            traces.get(nid),
            deadline,
            again,
            records,
            plan.planned.get(nid),
        )
        for nid, item in owned
    ]
    try:
        while futures_wait(futures, timeout=0.1).not_done:
            records.flush(due_only=True)  # no send finished for a while: what waits is written anyway
    finally:
        plan.close()  # the batch's successes told to the circuits
    first_error: BaseException | None = None
    for future in futures:
        try:
            outcomes[future.result()] += 1
        except Exception as exc:
            outcomes[SendOutcome.ERROR] += 1
            first_error = first_error or exc
    return first_error
