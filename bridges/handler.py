"""One record handler for every bridge: plan a page of records, publish the tasks, dead-letter
the records that cannot be routed, count each outcome.

The plan is the pipeline's (``dmd_tasks.pipeline.routing``); the handler does the I/O. A page
is handed back (raise) only when publishing fails, so the reader reads it again from its
checkpoint; every task it becomes is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Sequence
from typing import Any

from cachetools import TTLCache

from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra.deadletters import DeadLetters
from dmd_tasks.infra.metrics import BRIDGE_RECORDS
from dmd_tasks.pipeline.routing import BatchPlan

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
    ) -> None:
        self.name = name
        self._plan = plan
        self._publisher = publisher
        self._dead_letters = dead_letters
        # A popular event's demand rows span many pages: enqueue its shortening once, not once
        # a page. (Only a hint: after a restart one more task per event is harmless.)
        self._recent: TTLCache[tuple[str, str], bool] | None = (
            TTLCache(maxsize=200_000, ttl=dedupe_seconds) if dedupe_seconds > 0 else None
        )

    def __call__(self, records: Sequence[dict[str, Any]], shard_id: str) -> None:
        plan = self._plan(records, self._recent if self._recent is not None else ())
        for task_name, calls in plan.calls.items():
            self._publisher.publish(task_name, calls)
        if self._recent is not None:
            for key in plan.keys:
                self._recent[key] = True
        if plan.dead_letters:
            self._dead_letters.send_batch(self.name, plan.dead_letters)
            for letter in plan.dead_letters:
                log.warning("shard %s: record dead-lettered: %s", shard_id, letter.reason)
        self._count(plan)
        log.info(
            "shard %s: %d records -> %d tasks (%d duplicates, %d ignored, %d dead letters)",
            shard_id,
            len(records),
            plan.messages,
            plan.duplicates,
            plan.ignored,
            len(plan.dead_letters),
        )

    def _count(self, plan: BatchPlan) -> None:
        for outcome, count in (
            ("enqueued", plan.routed),
            ("duplicate", plan.duplicates),
            ("ignored", plan.ignored),
            ("dead-lettered", len(plan.dead_letters)),
        ):
            BRIDGE_RECORDS.labels(self.name, outcome).inc(count)  # zero too: every series exists
