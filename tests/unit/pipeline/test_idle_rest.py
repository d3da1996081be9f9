"""Beat's tasks rest when they find no work (dmd_tasks.infra.wake), and wake the others when they
make some: the claim, the scheduler's tick and the reconciler's pass against the session's stack
(the sales each sees are pinned: the session's table holds other tests' sales)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from dmd_tasks.infra.topology import CLAIM_DUE_SALES, RECONCILE, SCHEDULE_NOTIFICATIONS
from dmd_tasks.infra.wake import REST_KEY
from dmd_tasks.pipeline import stage2_generate, stage3_schedule, stage6_reconcile
from dmd_tasks.pipeline.chain import CLAIM_AT_KEY
from dmd_tasks.services import Services


@pytest.fixture()
def claims_at(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The claim runs a claim tick arranged for later (``send_task``'s options), not published."""
    arranged: list[dict[str, Any]] = []

    def send_task(name: str, *args: Any, **options: Any) -> None:
        assert name == CLAIM_DUE_SALES
        arranged.append(options)

    monkeypatch.setattr(stage2_generate.claim_due_sales.app, "send_task", send_task)
    return arranged


@pytest.fixture()
def idle(services: Services, monkeypatch: pytest.MonkeyPatch, claims_at: list[dict[str, Any]]) -> Services:
    for module in (stage2_generate, stage3_schedule, stage6_reconcile):
        monkeypatch.setattr(module, "get_services", lambda: services)
    services.redis.delete(*(REST_KEY.format(task=t) for t in (CLAIM_DUE_SALES, SCHEDULE_NOTIFICATIONS, RECONCILE)))
    return services


def rest_until(services: Services, task: str) -> float | None:
    value = services.redis.get(REST_KEY.format(task=task))
    return float(value.decode().partition("|")[0]) if value else None  # type: ignore[union-attr]


def test_a_claim_that_finds_nothing_rests_until_the_soonest_sale(
    idle: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    soon = time.time() + 7
    monkeypatch.setattr(idle.sales, "due_ahead", lambda now, ahead: ([], soon))
    monkeypatch.setattr(idle.sales, "stalled_ahead", lambda now, ahead: ([], None))
    stage2_generate.claim_due_sales.run()
    assert rest_until(idle, CLAIM_DUE_SALES) == soon
    assert CLAIM_DUE_SALES in idle.wake.resting([CLAIM_DUE_SALES], time.time())
    # nothing soon: it rests for the idle tick
    monkeypatch.setattr(idle.sales, "due_ahead", lambda now, ahead: ([], None))
    began = time.time()
    stage2_generate.claim_due_sales.run()
    until = rest_until(idle, CLAIM_DUE_SALES)
    assert (
        until is not None
        and began + idle.settings.beat_idle_tick_seconds
        <= until
        <= time.time() + idle.settings.beat_idle_tick_seconds + 1
    )


def test_a_claim_that_sees_a_sale_coming_arranges_one_claim_at_its_notify_time(
    idle: Services, monkeypatch: pytest.MonkeyPatch, claims_at: list[dict[str, Any]]
) -> None:
    soon = round(time.time() + 7, 3)
    idle.redis.delete(CLAIM_AT_KEY.format(at=f"{soon:.3f}"))
    monkeypatch.setattr(idle.sales, "due_ahead", lambda now, ahead: ([], soon))
    monkeypatch.setattr(idle.sales, "stalled_ahead", lambda now, ahead: ([], None))
    began = time.time()
    for _ in range(3):  # beat's ticks until the rest, and any woken ones: one claim arranged in all
        stage2_generate.claim_due_sales.run()
    assert len(claims_at) == 1
    assert claims_at[0]["eta"] == datetime.fromtimestamp(soon, UTC)
    # dropped if its worker cannot run it within a few claim intervals of the notify time
    interval = idle.settings.claim_interval_seconds
    assert soon - began + 4 * interval < claims_at[0]["expires"] <= soon - began + 5 * interval
    # another sale's notify time gets its own
    later = soon + 1
    idle.redis.delete(CLAIM_AT_KEY.format(at=f"{later:.3f}"))
    monkeypatch.setattr(idle.sales, "due_ahead", lambda now, ahead: ([], later))
    stage2_generate.claim_due_sales.run()
    assert [c["eta"] for c in claims_at] == [datetime.fromtimestamp(t, UTC) for t in (soon, later)]


def test_a_claim_that_claims_wakes_the_scheduler_and_the_reconciler(
    idle: Services, seed_sale: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale_id = seed_sale(idle, 2)
    now = time.time()
    epoch = idle.wake.epoch()
    idle.wake.rest(SCHEDULE_NOTIFICATIONS, now + 30, epoch, now)
    idle.wake.rest(RECONCILE, now + 30, epoch, now)
    monkeypatch.setattr(idle.sales, "due_ahead", lambda now, ahead: ([idle.sales.get(sale_id)], None))
    monkeypatch.setattr(idle.sales, "stalled_ahead", lambda now, ahead: ([], None))
    monkeypatch.setattr(stage2_generate.generate_notifications, "apply_async", lambda *a, **k: None)
    monkeypatch.setattr(stage2_generate.claim_due_sales.app, "send_task", lambda *a, **k: None)
    assert stage2_generate.claim_due_sales.run()["claimed"] == 1
    assert idle.wake.resting([SCHEDULE_NOTIFICATIONS, RECONCILE, CLAIM_DUE_SALES], time.time()) == set()


def test_a_claim_with_a_sale_due_or_stalled_does_not_rest(idle: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idle.sales, "due_ahead", lambda now, ahead: ([], None))
    monkeypatch.setattr(idle.sales, "stalled_ahead", lambda now, ahead: ([{"id": "gone", "leaseUntil": "x"}], None))
    monkeypatch.setattr(stage2_generate.generate_notifications, "apply_async", lambda *a, **k: None)
    stage2_generate.claim_due_sales.run()
    assert rest_until(idle, CLAIM_DUE_SALES) is None


@pytest.mark.parametrize(
    ("module", "task_name", "task"),
    [
        (stage3_schedule, SCHEDULE_NOTIFICATIONS, "schedule_notifications"),
        (stage6_reconcile, RECONCILE, "reconcile_sales"),
    ],
)
def test_the_tick_and_the_pass_rest_while_no_sale_is_active(
    idle: Services, seed_sale: Any, monkeypatch: pytest.MonkeyPatch, module: Any, task_name: str, task: str
) -> None:
    monkeypatch.setattr(idle.sales, "active", lambda: [])
    getattr(module, task).run()
    assert task_name in idle.wake.resting([task_name], time.time())
    # with an active sale, it does not rest
    idle.redis.delete(REST_KEY.format(task=task_name))
    sale_id = seed_sale(idle, 1)
    monkeypatch.setattr(idle.sales, "active", lambda: [sale_id])
    getattr(module, task).run()
    assert rest_until(idle, task_name) is None
