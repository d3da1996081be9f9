"""A task that does nothing, on the ``query`` queue: the broker's own ceiling (``bench.broker``).

Workers load it with ``-I bench.noop``; it goes through the project's base task, signals
and worker settings like every real task, so only the work itself is missing.
"""

from __future__ import annotations

from celery import Task

from dmd_tasks.celery_app.base import task


@task("bench.noop.noop", queue="query", max_retries=0)
def noop(self: Task) -> None:
    return None
