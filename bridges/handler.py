"""One record handler for every bridge: plan a page of records, publish the tasks, dead-letter
the records that cannot be routed, count each outcome.

The plan is the pipeline's (``dmd_tasks.pipeline.routing``); the handler does the I/O. A page
is handed back (raise) only when publishing fails, so the reader reads it again from its
checkpoint; every task it becomes is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Sequence
from dataclasses import replace
from typing import Any

from cachetools import TTLCache

from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.metrics import BRIDGE_RECORDS
from dmd_tasks.infra.topology import TaskCall
from dmd_tasks.pipeline.records import jsonable
from dmd_tasks.pipeline.routing import BatchPlan, dead_letter

log = logging.getLogger(__name__)

#: Plans one page: (records, routes published recently) → what to publish and dead-letter.
Planner = Callable[[Sequence[dict[str, Any]], Container[tuple[str, str]]], BatchPlan]


class RecordHandler:
    """Handles one page of records for the bridge ``name``."""

    def __init__(
        self,
        name: str,
        plan: Planner,
        publisher: BatchPublisher,
        dead_letters: DeadLetters,
        dedupe_seconds: float = 0.0,
        wake: Callable[[str], object] | None = None,
    ) -> None:
        """``wake``: called when a page holds a sale written as waiting (beat's claim rests while
        it finds nothing to claim: ``dmd_tasks.infra.wake``)."""
        self.name = name
        self._wake = wake
        self._plan = plan
        self._publisher = publisher
        self._dead_letters = dead_letters
        # A popular event's demand rows span many pages: enqueue its shortening once, not once
        # a page. (Only a hint: after a restart one more task per event is harmless.)
        self._recent: TTLCache[tuple[str, str], bool] | None = (
            TTLCache(maxsize=200_000, ttl=dedupe_seconds) if dedupe_seconds > 0 else None
        )

    def __call__(self, records: Sequence[dict[str, Any]], shard_id: str) -> None:
        plan = self._plan_page(records)
        for task_name, calls in plan.calls.items():

            def refused(call: TaskCall, reason: str, task_name: str = task_name) -> None:
                """A task message SQS would not take: its records' letter, and the page goes on."""
                plan.dead_letters.append(
                    DeadLetter(
                        reason=reason,
                        payload={"task": task_name, "args": jsonable(call.args), "kwargs": jsonable(call.kwargs)},
                        correlation_id=call.headers.get(CORRELATION_HEADER),
                        source=self.name,
                    )
                )

            self._publisher.publish(task_name, calls, on_refused=refused)
        if plan.sales_waiting and self._wake is not None:
            self._wake("sale written")
        if self._recent is not None:
            for key in plan.keys:
                self._recent[key] = True
        if plan.dead_letters:
            letters = [replace(d, position={**(d.position or {}), "shard": shard_id}) for d in plan.dead_letters]
            self._dead_letters.send_batch(self.name, letters)
            for letter in plan.dead_letters:
                log.warning("shard %s: record dead-lettered: %s", shard_id, letter.reason)
        self._count(plan)
        log.info(
            "shard %s: %d records -> %d tasks (%d duplicates, %d ignored, %d removed, %d dead letters)",
            shard_id,
            len(records),
            plan.messages,
            plan.duplicates,
            plan.ignored,
            plan.removed,
            len(plan.dead_letters),
        )

    def _plan_page(self, records: Sequence[dict[str, Any]]) -> BatchPlan:
        """The page's plan. The planner dead-letters a record that raises; should planning the page
        raise all the same (a defect), each record is planned alone and the one that raises is
        dead-lettered with the reason, so the page still goes through."""
        recent = self._recent if self._recent is not None else ()
        try:
            return self._plan(records, recent)
        except Exception:
            log.exception("%s: planning a page of %d records failed; planning them one by one", self.name, len(records))
        plan = BatchPlan()
        for record in records:
            try:
                plan.merge(self._plan([record], recent))
            except Exception as exc:
                plan.dead_letters.append(dead_letter(record, exc, self.name))
        return plan

    def _count(self, plan: BatchPlan) -> None:
        for outcome, count in (
            ("enqueued", plan.routed),
            ("duplicate", plan.duplicates),
            ("ignored", plan.ignored),
            ("removed", plan.removed - plan.ttl_expired),
            ("ttl-expired", plan.ttl_expired),
            ("dead-lettered", len(plan.dead_letters)),
        ):
            BRIDGE_RECORDS.labels(self.name, outcome).inc(count)  # zero too: every series exists
