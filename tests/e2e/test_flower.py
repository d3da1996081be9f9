"""Flower and celery inspect on an SQS broker: events and remote control over Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import requests

from dmd_tasks.domain.entities import Demand, Event
from dmd_tasks.ops.stack import ProcessGroup, free_port, wait_for_port
from dmd_tasks.store.items import item
from dmd_tasks.store.table import DemandTable
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flower(settings, stack, sim) -> Iterator[str]:
    port = free_port()
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "e2e-flower", env={"DMD_FLOWER_PORT": str(port)})
    group.start(["worker-short-url", "bridge-demand", "flower"])
    try:
        wait_for_port("127.0.0.1", port, timeout=60, what="flower", process=group.processes["flower"])
        yield f"http://127.0.0.1:{port}"
    finally:
        group.stop()


def test_flower_sees_the_worker_and_a_task_lifecycle(flower: str, settings) -> None:
    # Given a worker on the SQS queue short-url, which Flower lists
    workers = wait_until(
        lambda: requests.get(f"{flower}/api/workers?refresh=1", timeout=30).json(),
        timeout=60,
        what="flower to list the worker",
    )
    name = next(w for w in workers if w.startswith("short-url@"))
    assert "short-url" in [q["name"] for q in workers[name]["active_queues"]]

    # When a demand row makes the bridge enqueue a shortening task
    run = uuid.uuid4().hex[:8]
    table = DemandTable(settings)
    event = Event(id=f"fl{run}", name="Flower", url=f"https://www.ticketmaster.com/e/{run}")
    table.put_items([item(event)])
    table.put_items([item(Demand(eventId=event.id, fanId="f1", phone="+15550001234"))])

    # Then Flower shows the task's whole life: sent, received, started, succeeded, with its runtime
    def task_seen() -> dict | None:
        tasks = requests.get(
            f"{flower}/api/tasks", params={"taskname": "dmd_tasks.shorten.shorten_event_url"}, timeout=10
        ).json()
        done = [t for t in tasks.values() if event.id in (t.get("args") or "") and t.get("state") == "SUCCESS"]
        return done[0] if done else None

    task = wait_until(task_seen, timeout=60, what="the task in Flower")
    assert task["worker"] == name
    assert task["sent"] and task["received"] and task["started"] and task["succeeded"]
    assert task["runtime"] > 0
    assert task["result"] == "'shortened'"


def test_celery_inspect_answers_through_redis(flower: str) -> None:
    env = dict(os.environ)
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dmd_tasks.celery_app", "inspect", "ping", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "pong" in ping.stdout, ping.stdout + ping.stderr
    queues = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dmd_tasks.celery_app", "inspect", "active_queues", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "short-url" in queues.stdout
    stats = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dmd_tasks.celery_app", "inspect", "stats", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert '"transport": "sqs"' in stats.stdout or "'transport': 'sqs'" in stats.stdout, stats.stdout[:500]
