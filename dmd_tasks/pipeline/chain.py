"""The chain without the echo: the stage that moves notifications into ``scheduled`` publishes
their send tasks itself, for exactly the rows it moved.

A notification's own writes are not routed back through the table's stream (the demand bridge
leaves them alone): the scheduler's tick, a send that goes back to ``scheduled`` for a retry and
the reconciler's take-back each publish ``send_notifications`` for what they moved, in batches
(``send_batch_size`` ids a task, ten tasks to a SendMessageBatch). A retry's task is held back
by SQS until its ``notBefore`` (at most 15 minutes). A process that dies between its write and
its publish leaves ``scheduled`` notifications without a message: the reconciler publishes
them again once they are ``scheduled_stale_seconds`` past due (``stage6_reconcile``).

A sale's start is not left to beat's grid of ticks either: the claim tick that sees a sale
coming publishes a claim for its notify time (``claim_at``), and the generator, its first chunk
written, publishes a scheduling tick (``tick_now``); before, each waited up to an interval for
beat's next tick. Both are beat's own tasks, safe to run twice; if either cannot be published,
beat's ticks do the same a moment later.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from dmd_tasks.infra import logs
from dmd_tasks.infra.dependencies import describe
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.topology import (
    CLAIM_DUE_SALES,
    MAX_DELAY_SECONDS,
    SCHEDULE_NOTIFICATIONS,
    SEND_NOTIFICATIONS,
    TaskCall,
)

#: Redis key that says a claim run at this notify time is published (``claim_at``).
CLAIM_AT_KEY = "dmd:claim:at:{at}"

_publishers: dict[int, Any] = {}
log = logging.getLogger(__name__)


def _publisher(app: Any, settings: Settings) -> Any:
    """This process's batch publisher (made where it is used: it must not cross a fork)."""
    from dmd_tasks.celery_app.publish import BatchPublisher

    publisher = _publishers.get(os.getpid())
    if publisher is None:
        publisher = _publishers[os.getpid()] = BatchPublisher(app, settings)
    return publisher


def send_calls(notification_ids: Sequence[str], batch_size: int, delay_seconds: int = 0) -> list[TaskCall]:
    """``send_notifications`` calls of at most ``batch_size`` ids each, with this task's correlation
    id and the current trace (the send continues it)."""
    from dmd_tasks.infra import tracing

    headers = {CORRELATION_HEADER: logs.correlation_id.get()}
    traceparent = tracing.current_traceparent()
    return [
        TaskCall(
            args=(list(notification_ids[start : start + batch_size]),),
            headers=headers,
            delay_seconds=min(MAX_DELAY_SECONDS, max(0, delay_seconds)),
            traceparent=traceparent,
        )
        for start in range(0, len(notification_ids), max(1, batch_size))
    ]


def publish_sends(app: Any, settings: Settings, notification_ids: Sequence[str], delay_seconds: int = 0) -> int:
    """Publish the send tasks of ``notification_ids`` (just moved into ``scheduled``); returns the
    messages sent."""
    if not notification_ids:
        return 0
    calls = send_calls(notification_ids, settings.send_batch_size, delay_seconds)
    return int(_publisher(app, settings).publish(SEND_NOTIFICATIONS, calls))


def publish_due(app: Any, settings: Settings, due: Iterable[tuple[str, float]], now: float | None = None) -> int:
    """Publish the send tasks of notifications moved back into ``scheduled``, each held back until
    it is due (``(notification id, due at)``: a retry's ``notBefore``); one batch per delay."""
    now = time.time() if now is None else now
    by_delay: dict[int, list[str]] = defaultdict(list)
    for nid, due_at in due:
        by_delay[math.ceil(max(0.0, due_at - now))].append(nid)
    return sum(publish_sends(app, settings, ids, delay) for delay, ids in sorted(by_delay.items()))


def tick_now(app: Any, settings: Settings) -> None:
    """A scheduling tick now, as beat sends it (dropped if it cannot run within a few intervals)."""
    try:
        app.send_task(SCHEDULE_NOTIFICATIONS, expires=settings.schedule_interval_seconds * 5)
    except Exception as exc:
        log.warning("scheduling tick not sent (%s); beat's next tick does the same", describe(exc))


def claim_at(app: Any, settings: Settings, client: redis.Redis, at: float, now: float) -> None:
    """A claim run at ``at``, the notify time of the next sale due, once per notify time (the
    first tick that sees it publishes it): the sale is claimed at its time, not at beat's first
    tick after it. Not beyond the longest wait a task may be given (SQS would deliver it again)."""
    if at - now > settings.max_countdown_seconds:
        return
    expires = at - now + 5 * settings.claim_interval_seconds
    try:
        if client.set(CLAIM_AT_KEY.format(at=f"{at:.3f}"), "1", nx=True, ex=int(expires) + 1):
            app.send_task(CLAIM_DUE_SALES, eta=datetime.fromtimestamp(at, UTC), expires=expires)
    except Exception as exc:
        log.warning("claim at the next notify time not arranged (%s); beat's ticks claim the sale", describe(exc))
