"""The bridge routes notifications entering ``scheduled`` to the sender, batched, delayed for retries."""

from __future__ import annotations

from typing import Any

import pytest

from bridges.changes import SEND_TASK, ChangeRecord, plan_batch, route
from dmd_tasks.errors import InvalidRecord


def change(seq: int, new: dict[str, Any] | None, old: dict[str, Any] | None, name: str = "MODIFY") -> ChangeRecord:
    return ChangeRecord(event_id=f"e{seq}", event_name=name, sequence_number=str(seq), new=new, old=old)


def notification(fan: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"entity": "NOTIFICATION", "id": f"sale1:{fan}", "status": status, "attempts": 0, **extra}


def test_only_the_transition_into_scheduled_is_routed() -> None:
    target = route(change(1, notification("f1", "scheduled"), notification("f1", "pending")), now=1000)
    assert target is not None and target.task == SEND_TASK and target.item == "sale1:f1"
    assert target.delay_seconds == 0
    # staying scheduled, or any other transition, is not routed again
    assert route(change(2, notification("f1", "scheduled"), notification("f1", "scheduled")), now=1000) is None
    assert route(change(3, notification("f1", "sending"), notification("f1", "scheduled")), now=1000) is None
    assert route(change(4, notification("f1", "pending"), None, "INSERT"), now=1000) is None


def test_a_retry_is_held_back_until_not_before() -> None:
    retry = notification("f1", "scheduled", attempts=1, notBefore=1030)
    target = route(change(1, retry, notification("f1", "sending", attempts=0)), now=1000)
    assert target is not None and target.delay_seconds == 30
    assert target.key == "sale1:f1#1"


def test_invalid_notification_id_is_a_dead_letter() -> None:
    bad = {"entity": "NOTIFICATION", "id": "no-colon", "status": "scheduled"}
    with pytest.raises(InvalidRecord, match="valid 'id'"):
        route(change(1, bad, {"entity": "NOTIFICATION", "status": "pending"}))


def test_send_routes_are_packed_into_batches_per_delay() -> None:
    changes = [change(i, notification(f"f{i}", "scheduled"), notification(f"f{i}", "pending")) for i in range(23)]
    changes.append(change(99, notification("f1", "scheduled"), notification("f1", "pending")))  # duplicate
    changes.append(change(100, notification("r", "scheduled", attempts=1, notBefore=2000),
                          notification("r", "sending")))
    plan = plan_batch(changes, lambda c: c, routes=lambda c: route(c, now=1000), batch_sizes={SEND_TASK: 10})
    calls = plan.calls[SEND_TASK]
    assert [len(c.args[0]) for c in calls] == [10, 10, 3, 1]
    assert [c.delay_seconds for c in calls] == [0, 0, 0, 900]  # SQS holds a message at most 15 minutes
    assert plan.duplicates == 1
