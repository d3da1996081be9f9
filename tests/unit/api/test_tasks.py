"""The query queue's task body, run in this process against Redis and the Discovery simulator."""

from __future__ import annotations

import uuid

import redis

from dmd_tasks.api.tasks import warm_event_details
from simulators.faults import Faults


def calls(sim, event_id: str) -> int:
    return int(sim.stats()["discovery"]["calls_by_event"].get(event_id, 0))


def new_id() -> str:
    return f"wm{uuid.uuid4().hex[:10]}"


def test_warming_fills_the_cache_once(stack, sim) -> None:
    event_id = new_id()
    assert warm_event_details.run(event_id) == {"event_id": event_id, "warmed": True, "stale": False}
    # a warm cache is a hit: nothing more is called
    assert warm_event_details.run(event_id) == {"event_id": event_id, "warmed": True, "stale": False}
    assert calls(sim, event_id) == 1


def test_an_unknown_event_is_reported_and_not_retried(stack, sim) -> None:
    event_id = f"missing{uuid.uuid4().hex[:8]}"
    result = warm_event_details.apply(args=(event_id,))
    assert result.successful()
    assert result.result == {"event_id": event_id, "warmed": False, "reason": f"event {event_id} not found"}
    assert calls(sim, event_id) == 1


def test_a_malformed_id_is_reported_without_a_call(stack, sim) -> None:
    before = sim.stats()["discovery"]["calls"]
    result = warm_event_details.apply(args=("../x",))
    assert result.successful()
    assert result.result["warmed"] is False and "eventId must be" in result.result["reason"]  # type: ignore[index]
    assert sim.stats()["discovery"]["calls"] == before


def test_an_event_discovery_cannot_serve_now_is_warmed_from_the_stale_copy(settings, stack, sim) -> None:
    event_id = new_id()
    warm_event_details.run(event_id)
    redis.Redis.from_url(settings.redis_url).delete(f"dmd:event:{event_id}")  # the 24 h copy expired
    sim.configure(discovery={"error_rate": 1.0})
    try:
        assert warm_event_details.run(event_id) == {"event_id": event_id, "warmed": True, "stale": True}
    finally:
        sim.configure(discovery=Faults().public())


def test_an_upstream_outage_with_no_copy_is_retried(stack, sim) -> None:
    event_id = new_id()
    sim.configure(discovery={"error_rate": 1.0})
    try:
        warm_event_details.apply(args=(event_id,))
    finally:
        sim.configure(discovery=Faults().public())
    assert calls(sim, event_id) > 1
