"""The ``query`` queue's task: warm the event-details cache with the API's own logic."""

from __future__ import annotations

from typing import Any

from celery import Task

from dmd_tasks.api.errors import InvalidArgument, NotFound, Unavailable
from dmd_tasks.api.event_details import event_details_service
from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra.topology import WARM_EVENT_DETAILS


@task(WARM_EVENT_DETAILS, max_retries=3)
def warm_event_details(self: Task, event_id: str) -> dict[str, Any]:
    """Fill the event-details cache (e.g. when a sale is claimed) with the API's own logic.

    Idempotent: a warm cache is a hit and calls nothing. Not found and invalid ids are
    reported, not retried; Discovery down with no copy to serve is retried (``max_retries``).
    """
    try:
        details = event_details_service().get(event_id)
    except (InvalidArgument, NotFound) as exc:
        return {"event_id": event_id, "warmed": False, "reason": str(exc)}
    except Unavailable as exc:
        raise TransientError(str(exc)) from exc
    return {"event_id": event_id, "warmed": True, "stale": details["stale"]}
