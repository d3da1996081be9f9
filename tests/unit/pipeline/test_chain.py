"""The chain without the echo: a stage that moves notifications into ``scheduled`` publishes their
send tasks (``dmd_tasks.pipeline.chain``), batched, held back until due, on the send queue."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dmd_tasks.celery_app import app
from dmd_tasks.infra import logs, topology
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.topology import MAX_DELAY_SECONDS, SEND_NOTIFICATIONS
from dmd_tasks.pipeline import chain
from dmd_tasks.pipeline.chain import publish_due, publish_sends, send_calls
from tests.queues import Queues


def test_send_calls_carry_at_most_a_batch_of_ids_each_with_the_correlation_id() -> None:
    ids = [f"s1:f{n}" for n in range(23)]
    token = logs.correlation_id.set("tick-1")
    try:
        calls = send_calls(ids, batch_size=10)
    finally:
        logs.correlation_id.reset(token)
    assert [len(c.args[0]) for c in calls] == [10, 10, 3]
    assert [i for c in calls for i in c.args[0]] == ids
    assert {c.headers[CORRELATION_HEADER] for c in calls} == {"tick-1"}
    assert {c.delay_seconds for c in calls} == {0}


def test_sqs_holds_a_send_back_at_most_fifteen_minutes() -> None:
    assert send_calls(["s1:f1"], 10, delay_seconds=2000)[0].delay_seconds == MAX_DELAY_SECONDS
    assert send_calls(["s1:f1"], 10, delay_seconds=-5)[0].delay_seconds == 0


def test_retries_are_published_together_per_delay_each_held_back_until_due(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[tuple[list[str], int]] = []

    def record(_app: Any, _settings: Any, ids: list[str], delay_seconds: int = 0) -> int:
        published.append((list(ids), delay_seconds))
        return 1

    monkeypatch.setattr(chain, "publish_sends", record)
    now = 1000.0
    publish_due(None, None, [("s:a", 1000.0), ("s:b", 1029.2), ("s:c", 1030.0), ("s:d", 990.0)], now=now)  # type: ignore[arg-type]
    # rounded up: a retry never comes back before the time it was given (a Retry-After)
    assert published == [(["s:a", "s:d"], 0), (["s:b", "s:c"], 30)]


@pytest.mark.stack
def test_published_sends_are_task_messages_on_the_send_queue(settings, stack, queues: Queues) -> None:
    marker = uuid.uuid4().hex[:10]
    ids = [f"s{marker}:f{n}" for n in range(3)]
    assert publish_sends(app, settings, ids) == 1  # one message of three ids (send_batch_size 10)
    tasks = queues.take_tasks(topology.queue_url(settings, "send"), marker)
    assert [(t.name, t.args) for t in tasks] == [(SEND_NOTIFICATIONS, [ids])]
    assert publish_sends(app, settings, []) == 0
