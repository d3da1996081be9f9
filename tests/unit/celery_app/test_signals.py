"""Signal handlers of every dmd worker: the correlation id stamped on each published message, the
task's log context set for its run and cleared after, and the task counters.

Tasks run in-process with ``apply()`` (the same signals a worker sends); a failing run writes
its dead letter to the session's moto queues.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from celery import Task, signals

from dmd_tasks.celery_app.base import task
from dmd_tasks.domain.errors import PermanentError, TransientError
from dmd_tasks.infra import logs
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.metrics import TASKS

SEEN: dict[str, dict[str, Any]] = {}
ATTEMPTS: dict[str, int] = {}


@task("tests.celery_app.signals.observe", queue="query")
def observe(self: Task, key: str) -> str:
    SEEN[key] = {"correlation_id": logs.correlation_id.get(), "task_context": logs.task_context.get()}
    return key


@task("tests.celery_app.signals.broken", queue="query")
def broken(self: Task, key: str) -> None:
    raise PermanentError(f"broken {key}")


@task("tests.celery_app.signals.flaky", queue="query", max_retries=2)
def flaky(self: Task, key: str) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        raise TransientError("once")
    return key


def count(name: str, state: str) -> float:
    return float(TASKS.labels(name, state)._value.get())


def publish_headers(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the before_task_publish handlers make of a message's headers (no message is sent)."""
    signals.before_task_publish.send(sender="tests.celery_app.signals.observe", headers=headers, body=None)
    return headers


# --- correlation ids on publish -------------------------------------------------------------------------


def test_a_published_message_gets_the_correlation_id_of_the_current_record_or_task() -> None:
    token = logs.correlation_id.set("corr-current")
    try:
        headers = publish_headers({"task": "t"})
    finally:
        logs.correlation_id.reset(token)
    assert headers is not None and headers[CORRELATION_HEADER] == "corr-current"


def test_a_message_published_outside_any_context_gets_a_new_correlation_id() -> None:
    first, second = publish_headers({"task": "t"}), publish_headers({"task": "t"})
    assert first is not None and second is not None
    assert first[CORRELATION_HEADER] and second[CORRELATION_HEADER]
    assert first[CORRELATION_HEADER] != second[CORRELATION_HEADER]


def test_a_correlation_id_already_on_the_message_is_kept() -> None:
    token = logs.correlation_id.set("corr-current")
    try:
        headers = publish_headers({"task": "t", CORRELATION_HEADER: "corr-of-the-record"})
    finally:
        logs.correlation_id.reset(token)
    assert headers is not None and headers[CORRELATION_HEADER] == "corr-of-the-record"


def test_a_publish_without_headers_is_left_alone() -> None:
    assert publish_headers(None) is None


# --- the task's context -----------------------------------------------------------------------------------


def test_a_task_run_carries_the_messages_correlation_id_and_its_name_and_id_then_clears_them() -> None:
    key = uuid.uuid4().hex
    # Given a request as a worker builds it from a message carrying the correlation header
    observe.push_request(id=f"id-{key}", **{CORRELATION_HEADER: f"corr-{key}"})
    try:
        signals.task_prerun.send(sender=observe, task_id=f"id-{key}", task=observe, args=(key,), kwargs={})
        inside = (logs.correlation_id.get(), logs.task_context.get())
        signals.task_postrun.send(sender=observe, task_id=f"id-{key}", task=observe, args=(key,), kwargs={})
    finally:
        observe.pop_request()

    assert inside == (f"corr-{key}", {"task_name": "tests.celery_app.signals.observe", "task_id": f"id-{key}"})
    assert (logs.correlation_id.get(), logs.task_context.get()) == (None, None)


def test_a_task_run_without_a_correlation_id_uses_its_task_id() -> None:
    key = uuid.uuid4().hex
    result = observe.apply(args=(key,), task_id=f"task-{key}")

    assert result.get() == key
    assert SEEN[key] == {
        "correlation_id": f"task-{key}",
        "task_context": {"task_name": "tests.celery_app.signals.observe", "task_id": f"task-{key}"},
    }
    assert logs.correlation_id.get() is None and logs.task_context.get() is None


def test_a_log_line_inside_a_task_names_the_task(caplog: pytest.LogCaptureFixture) -> None:
    key = uuid.uuid4().hex
    caplog.handler.addFilter(logs.ContextFilter())
    observe.push_request(id=f"id-{key}")
    try:
        signals.task_prerun.send(sender=observe, task_id=f"id-{key}", task=observe, args=(), kwargs={})
        logging.getLogger("tests.signals").warning("inside %s", key)
        signals.task_postrun.send(sender=observe, task_id=f"id-{key}", task=observe, args=(), kwargs={})
    finally:
        observe.pop_request()
    (record,) = [r for r in caplog.records if r.getMessage() == f"inside {key}"]
    assert record.task_id == f"id-{key}"  # type: ignore[attr-defined]
    assert record.task_name == "tests.celery_app.signals.observe"  # type: ignore[attr-defined]
    assert record.correlation_id == f"id-{key}"  # type: ignore[attr-defined]


# --- task counters ------------------------------------------------------------------------------------------


def test_a_success_is_counted_under_the_tasks_name() -> None:
    before = (count(observe.name, "success"), count(observe.name, "failure"))

    observe.apply(args=(uuid.uuid4().hex,))

    assert (count(observe.name, "success"), count(observe.name, "failure")) == (before[0] + 1, before[1])


def test_a_failure_is_counted_under_the_tasks_name(stack: Any) -> None:
    before = (count(broken.name, "success"), count(broken.name, "failure"))

    assert broken.apply(args=(uuid.uuid4().hex,)).state == "FAILURE"

    assert (count(broken.name, "success"), count(broken.name, "failure")) == (before[0], before[1] + 1)


def test_a_retry_is_counted_and_then_the_success(stack: Any) -> None:
    before = (count(flaky.name, "retry"), count(flaky.name, "success"), count(flaky.name, "failure"))

    assert flaky.apply(args=(uuid.uuid4().hex,)).state == "SUCCESS"

    after = (count(flaky.name, "retry"), count(flaky.name, "success"), count(flaky.name, "failure"))
    assert after == (before[0] + 1, before[1] + 1, before[2])


# --- before the fork ------------------------------------------------------------------------------------


def test_a_worker_loads_what_its_childrens_first_tasks_import_before_it_forks(tmp_path: Any) -> None:
    # Given a fresh process, as a worker's parent is before its pool forks
    script = (
        "import sys\n"
        "from dmd_tasks.celery_app import app, signals\n"
        "wanted = ('celery.backends.redis', 'montydb.storage.sqlite', 'montydb.types._nobson')\n"
        "print(sorted(m for m in wanted if m in sys.modules))\n"
        "signals.signals.worker_init.send(sender=type('Worker', (), {'app': app})())\n"
        "print(sorted(m for m in wanted if m in sys.modules))\n"
    )
    env = {**os.environ, "DMD_RUN_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()[-2:]
    # Then the result backend's module and the campaign store's driver were not loaded before it and are after
    assert before == "[]"
    assert after == "['celery.backends.redis', 'montydb.storage.sqlite', 'montydb.types._nobson']"
