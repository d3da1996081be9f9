"""The base task and ``task()``: registration on a known queue, retries bounded by what SQS can hold
back, countdowns refused past that bound, and dead letters for tasks that fail for good.

Tasks of these tests are registered under names of their own (outside the routing table) on the
global app. Dead letters and retried messages go to the session's moto queues; the worker test
runs a real Celery worker in a thread, as tests/e2e/test_tracing.py does.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Task, signals
from celery.exceptions import Retry, SoftTimeLimitExceeded

from dmd_tasks.celery_app import app
from dmd_tasks.celery_app.base import DmdTask, check_countdown, task
from dmd_tasks.domain.errors import PermanentError, TransientError
from dmd_tasks.infra import aws, logs, topology
from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS
from dmd_tasks.infra.settings import Settings, UnsafeConfiguration
from dmd_tasks.infra.sqs import make_visible
from tests.helpers import wait_until, worker_on

CALLS: dict[str, int] = {}


@task("tests.celery_app.base.echo", queue="query")
def echo(self: Task, value: Any) -> Any:
    return value


@task("tests.celery_app.base.permanent", queue="schedule")
def fail_permanently(self: Task, marker: str, **kwargs: Any) -> None:
    CALLS[marker] = CALLS.get(marker, 0) + 1
    raise PermanentError(f"no such thing {marker}")


@task("tests.celery_app.base.transient", queue="schedule", max_retries=1)
def fail_transiently(self: Task, marker: str) -> None:
    CALLS[marker] = CALLS.get(marker, 0) + 1
    raise TransientError(f"try later {marker}")


@pytest.fixture()
def publishes() -> Iterator[list[dict[str, Any]]]:
    """Every task message published while the test runs (the after_task_publish signal)."""
    seen: list[dict[str, Any]] = []

    def record(sender: Any = None, headers: Any = None, routing_key: Any = None, **_: Any) -> None:
        seen.append({"task": sender, "headers": dict(headers or {}), "routing_key": routing_key})

    signals.after_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        signals.after_task_publish.disconnect(record)


def take(
    settings: Settings,
    url: str,
    wanted: Callable[[dict[str, Any]], bool],
    timeout: float = 30,
    decode: Callable[[str], dict[str, Any]] = json.loads,
) -> dict[str, Any]:
    """Receive from ``url`` until a message whose decoded body satisfies ``wanted``; delete that one,
    give the others back at once; return its decoded body."""
    sqs = aws.client("sqs", settings)
    found: list[dict[str, Any]] = []

    def look() -> bool:
        others: list[str] = []
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
            try:
                body = decode(message["Body"])
            except ValueError:
                body = {}
            if not found and body and wanted(body):
                found.append(body)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            else:
                others.append(message["ReceiptHandle"])
        make_visible(sqs, url, others)
        return bool(found)

    wait_until(look, timeout=timeout, interval=0.2, what=f"a matching message on {url}")
    return found[0]


def task_envelope(sqs_body: str) -> dict[str, Any]:
    """The kombu envelope of a Celery message as SQS holds it (base64 of JSON)."""
    return json.loads(base64.b64decode(sqs_body))


# --- task() --------------------------------------------------------------------------------------------


def test_a_name_outside_the_routing_table_without_a_queue_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'tests\.celery_app\.base\.nowhere': no queue"):
        task("tests.celery_app.base.nowhere")


def test_an_unknown_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown one \\('nowhere'\\)"):
        task("tests.celery_app.base.elsewhere", queue="nowhere")


def test_a_task_outside_the_routing_table_has_the_dmd_defaults() -> None:
    assert "tests.celery_app.base.echo" not in topology.TASK_QUEUES
    registered = app.tasks["tests.celery_app.base.echo"]
    assert isinstance(registered, DmdTask)
    assert registered.autoretry_for == (TransientError, SoftTimeLimitExceeded, *DEPENDENCY_ERRORS)  # type: ignore[attr-defined]
    assert registered.dont_autoretry_for == (PermanentError,)  # type: ignore[attr-defined]
    assert registered.retry_backoff is True and registered.retry_jitter is True  # type: ignore[attr-defined]
    # bound: the task gets itself as first argument
    assert echo.apply(args=("x",)).get() == "x"


def test_a_task_outside_the_routing_table_is_published_to_the_queue_it_names(
    settings: Settings, stack: Any, publishes: list[dict[str, Any]]
) -> None:
    sent = echo.apply_async(args=("where",))

    assert [(p["task"], p["routing_key"]) for p in publishes] == [("tests.celery_app.base.echo", "query")]
    body = take(
        settings,
        topology.queue_url(settings, "query"),
        lambda b: b["headers"].get("id") == sent.id,
        decode=task_envelope,
    )
    assert body["headers"]["task"] == "tests.celery_app.base.echo"


def test_routed_tasks_take_their_queue_from_the_routing_table_not_an_option() -> None:
    app.loader.import_default_modules()
    for name in topology.TASK_QUEUES:
        assert isinstance(app.tasks[name], DmdTask), name
        assert getattr(app.tasks[name], "queue", None) is None, name


def test_settings_derived_options_arrive_through_task_annotations_once_the_app_is_finalized(
    settings: Settings,
) -> None:
    app.loader.import_default_modules()
    app.finalize()
    # Celery's own default is three retries; these come from settings
    assert app.tasks[topology.SHORTEN_EVENT_URL].max_retries == settings.shorten_max_retries
    assert app.tasks[topology.RECORD_SMS_STATUS].max_retries == settings.status_max_retries
    assert app.tasks[topology.SEND_NOTIFICATIONS].rate_limit == settings.send_task_rate_limit
    # and the backoff bound of every task, ours included
    for name in [*topology.TASK_QUEUES, "tests.celery_app.base.echo"]:
        assert app.tasks[name].retry_backoff_max == settings.retry_backoff_max_seconds, name  # type: ignore[attr-defined]
    # a task's own option stays where settings say nothing
    assert app.tasks[topology.SEND_NOTIFICATIONS].max_retries == 3


# --- retries and countdowns ----------------------------------------------------------------------------


def retry_in_eager_request(exc: BaseException | None = None, **options: Any) -> Retry:
    """Call ``echo.retry`` as a task run by apply() would, and return the Retry it raises."""
    echo.push_request(id=str(uuid.uuid4()), is_eager=True, called_directly=False, retries=0, args=["x"], kwargs={})
    try:
        with pytest.raises(Retry) as raised:
            echo.retry(exc=exc, **options)  # type: ignore[arg-type]
    finally:
        echo.pop_request()
    return raised.value


def test_a_retry_countdown_is_clamped_to_the_longest_safe_countdown(settings: Settings) -> None:
    limit = settings.max_countdown_seconds

    retried = retry_in_eager_request(countdown=limit * 100)

    assert retried.when == limit
    assert retried.sig.options["countdown"] == limit  # type: ignore[attr-defined]


def test_a_short_retry_countdown_is_kept() -> None:
    assert retry_in_eager_request(countdown=3).when == 3


def test_a_retry_honours_the_errors_retry_after_up_to_the_bound(settings: Settings) -> None:
    limit = settings.max_countdown_seconds
    # longer than the countdown asked for: the upstream's wait wins
    assert retry_in_eager_request(TransientError("slow down", retry_after_seconds=limit - 1), countdown=2).when == (
        limit - 1
    )
    # shorter: the countdown asked for stays
    assert retry_in_eager_request(TransientError("slow down", retry_after_seconds=1), countdown=5).when == 5
    # far too long: clamped like any countdown
    assert retry_in_eager_request(TransientError("slow down", retry_after_seconds=limit * 10), countdown=1).when == (
        limit
    )


def test_a_retry_with_an_eta_ignores_the_retry_after() -> None:
    eta = datetime.now(UTC) + timedelta(seconds=5)
    retried = retry_in_eager_request(TransientError("x", retry_after_seconds=20), eta=eta)
    assert retried.when == eta
    assert retried.sig.options.get("countdown") is None  # type: ignore[attr-defined]


def test_a_retry_published_to_sqs_carries_an_eta_no_later_than_the_bound(
    settings: Settings, stack: Any, publishes: list[dict[str, Any]]
) -> None:
    # Given a task run by a worker from the query queue
    task_id = str(uuid.uuid4())
    echo.push_request(
        id=task_id,
        called_directly=False,
        retries=0,
        args=["again"],
        kwargs={},
        delivery_info={"exchange": "query", "routing_key": "query"},
    )
    try:
        # When it asks for a retry far beyond what SQS can hold back safely
        before = datetime.now(UTC)
        retried = echo.retry(countdown=settings.max_countdown_seconds * 100, throw=False)
    finally:
        echo.pop_request()

    # Then the retry is published, with the same id, an eta at the bound, and one more retry counted
    assert retried.when == settings.max_countdown_seconds
    assert [p["headers"]["id"] for p in publishes] == [task_id]
    body = take(
        settings,
        topology.queue_url(settings, "query"),
        lambda b: b["headers"].get("id") == task_id,
        decode=task_envelope,
    )
    eta = datetime.fromisoformat(body["headers"]["eta"])
    bound = timedelta(seconds=settings.max_countdown_seconds)
    assert before + bound - timedelta(seconds=5) <= eta <= datetime.now(UTC) + bound
    assert body["headers"]["retries"] == 1
    assert body["headers"]["task"] == "tests.celery_app.base.echo"


def test_check_countdown_admits_none_and_up_to_the_bound(settings: Settings) -> None:
    limit = settings.max_countdown_seconds
    check_countdown(None, None)
    check_countdown(limit, None)
    check_countdown(0, datetime.now(UTC) + timedelta(seconds=limit - 5))


def test_check_countdown_refuses_a_countdown_past_the_bound(settings: Settings) -> None:
    limit = settings.max_countdown_seconds
    with pytest.raises(UnsafeConfiguration, match=f"countdown {limit + 1}s exceeds the {limit}s"):
        check_countdown(limit + 1, None)


def test_check_countdown_refuses_an_eta_past_the_bound(settings: Settings) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=settings.max_countdown_seconds + 60)
    with pytest.raises(UnsafeConfiguration, match="at most"):
        check_countdown(None, eta)


def test_apply_async_refuses_a_long_countdown_or_eta_before_publishing_anything(
    settings: Settings, publishes: list[dict[str, Any]]
) -> None:
    limit = settings.max_countdown_seconds
    with pytest.raises(UnsafeConfiguration):
        echo.apply_async(args=("late",), countdown=limit + 1)
    with pytest.raises(UnsafeConfiguration):
        echo.apply_async(args=("late",), eta=datetime.now(UTC) + timedelta(hours=1))
    assert publishes == []


# --- failing for good ----------------------------------------------------------------------------------


def test_a_permanent_error_is_not_retried_and_a_transient_one_is_until_max_retries(stack: Any) -> None:
    permanent, transient = f"p-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"

    assert fail_permanently.apply(args=(permanent,)).state == "FAILURE"
    assert fail_transiently.apply(args=(transient,)).state == "FAILURE"

    assert CALLS[permanent] == 1
    assert CALLS[transient] == 1 + fail_transiently.max_retries  # type: ignore[operator]


def test_a_dead_letter_that_cannot_be_written_does_not_hide_the_failure(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task whose message came from a queue that has no dead-letter queue
    fail_permanently.push_request(id="t-no-dlq", retries=0, delivery_info={"routing_key": "no-such-queue"})
    try:
        # When it fails, Then on_failure returns (the worker goes on to record the failure) and says why
        fail_permanently.on_failure(PermanentError("boom"), "t-no-dlq", ("x",), {}, None)  # type: ignore[arg-type]
    finally:
        fail_permanently.pop_request()
    assert any("could not write dead letter for task t-no-dlq" in r.getMessage() for r in caplog.records)


def test_a_task_that_fails_for_good_in_a_worker_becomes_a_dead_letter_on_its_queues_dlq(
    settings: Settings, stack: Any
) -> None:
    permanent, transient = f"p-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    correlation_id = f"corr-{uuid.uuid4().hex}"
    dlq = topology.dlq_url(settings, "schedule")
    app.loader.import_default_modules()

    # Given a worker on the schedule queue
    with worker_on("schedule"):
        # When a task fails with a permanent error, and another keeps failing with a transient one
        first = fail_permanently.apply_async(
            args=(permanent,), kwargs={"note": "kw"}, headers={logs.CORRELATION_HEADER: correlation_id}
        )
        second = fail_transiently.apply_async(args=(transient,))
        # Then each is written to the schedule queue's dead-letter queue, with its reason, args and retries
        letter = take(settings, dlq, lambda b: b["payload"].get("task_id") == first.id, timeout=60)
        retried = take(settings, dlq, lambda b: b["payload"].get("task_id") == second.id, timeout=60)

    assert letter["reason"] == f"PermanentError: no such thing {permanent}"
    assert letter["payload"] == {
        "task": "tests.celery_app.base.permanent",
        "task_id": first.id,
        "args": [permanent],
        "kwargs": {"note": "kw"},
        "retries": 0,
    }
    assert letter["correlation_id"] == correlation_id
    assert letter["source"] == "schedule"
    assert letter["failed_at"] <= time.time()
    assert retried["reason"] == f"TransientError: try later {transient}"
    assert retried["payload"]["retries"] == fail_transiently.max_retries == 1
    assert CALLS[permanent] == 1 and CALLS[transient] == 2
