"""Worker events and remote control over Redis while tasks travel over SQS.

Events are read the way Flower reads them: a kombu consumer on the event exchange of the
monitor Redis (the session's own database), in a thread; each Redis message is kept as it came,
so a batch of task-sent events is seen as the one message it was. Redis outages use a Redis
server of the test's own (started on a free port and stopped by the test) or a closed port, on a
copy of the app whose handlers are disconnected afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from celery.events.event import get_exchange
from celery.exceptions import ImproperlyConfigured
from kombu import Queue

from dmd_tasks.celery_app import app, monitoring
from dmd_tasks.celery_app.config import build
from dmd_tasks.celery_app.monitoring import (
    DEFAULT_TRANSPORT_OPTIONS,
    MonitorDispatcher,
    monitor_connection,
    task_sent_batch,
)
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings, load_settings
from dmd_tasks.infra.sqs import make_visible
from dmd_tasks.infra.topology import WARM_EVENT_DETAILS, TaskCall
from dmd_tasks.ops.provision import ensure_queues
from dmd_tasks.ops.stack import free_port, wait_for_port
from tests.helpers import wait_until, worker_on


class EventTap:
    """Every message published to an app's event exchange while it runs, one entry per Redis message."""

    def __init__(self, celery_app: Any) -> None:
        self.app = celery_app
        self.messages: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-tap", daemon=True)

    def _run(self) -> None:
        with monitor_connection(self.app) as conn:
            queue = Queue(
                f"tap.{uuid.uuid4().hex}",
                exchange=get_exchange(conn, name=self.app.conf.event_exchange),
                routing_key="#",
                auto_delete=True,
                durable=False,
            )
            with conn.Consumer([queue], callbacks=[self._on_message], no_ack=True, accept=["json"]):
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):  # idle: look at the stop flag again
                        conn.drain_events(timeout=0.2)

    def _on_message(self, body: Any, message: Any) -> None:
        self.messages.append(body)

    def events(self) -> list[dict[str, Any]]:
        return [e for m in list(self.messages) for e in (m if isinstance(m, list) else [m])]

    def sync(self) -> None:
        """Return once everything published before this call has reached the tap (Redis keeps
        the order of publishes), by publishing a probe and waiting for it."""
        probe = uuid.uuid4().hex
        with self.app.events.default_dispatcher(hostname="tap") as dispatcher:
            dispatcher.send("tap-probe", probe=probe)
        wait_until(lambda: any(e.get("probe") == probe for e in self.events()), timeout=30, what="the tap's probe")

    def __enter__(self) -> EventTap:
        self._thread.start()
        # the subscription is made by the consumer thread: probe until it is listening
        wait_until(self._probe_seen, timeout=30, interval=0.05, what="the event tap to listen")
        return self

    def _probe_seen(self) -> bool:
        probe = uuid.uuid4().hex
        with self.app.events.default_dispatcher(hostname="tap") as dispatcher:
            dispatcher.send("tap-probe", probe=probe)
        for _ in range(10):
            if any(e.get("probe") == probe for e in self.events()):
                return True
            self._stop.wait(0.02)
        return False

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture()
def tap(stack: Any) -> Iterator[EventTap]:
    with EventTap(app) as running:
        yield running


@pytest.fixture()
def own_queues(stack: Any) -> Settings:
    settings = load_settings(queue_name_prefix=f"t{uuid.uuid4().hex[:10]}-")
    ensure_queues(settings)
    return settings


def task_id_of(sqs_body: str) -> str:
    return str(json.loads(base64.b64decode(sqs_body))["headers"]["id"])


def delete_task_messages(settings: Settings, queue: str, ids: set[str]) -> int:
    """Delete the visible messages of these tasks from a shared queue; give the others back at once."""
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, queue)
    deleted, others = 0, []
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
        if task_id_of(message["Body"]) in ids:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            deleted += 1
        else:
            others.append(message["ReceiptHandle"])
    make_visible(sqs, url, others)
    return deleted


def sqs_task_ids(settings: Settings, queue: str, expected: int) -> set[str]:
    """The task ids of the messages on one of ``settings``' queues."""
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, queue)
    ids: set[str] = set()
    empty = 0
    while empty < 2 and len(ids) < expected:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        empty = empty + 1 if not batch else 0
        ids.update(task_id_of(m["Body"]) for m in batch)
    return ids


def copy_of_app(settings: Settings, monitor_url: str) -> Celery:
    """An app configured like dmd's, its events and remote control on ``monitor_url``."""
    copy = Celery("dmd-copy", set_as_current=False)
    copy.conf.update(build(settings))
    copy.conf.monitor_broker_url = monitor_url
    copy.conf.broker_connection_timeout = 0.5
    return monitoring.install(copy)


def uninstall(copy: Celery) -> None:
    """Its task-sent handler hears every publish in the process: it must not outlive the test."""
    signals.before_task_publish.disconnect(copy._monitor_task_sent)  # type: ignore[attr-defined]


# --- the connection -----------------------------------------------------------------------------------


def test_the_monitor_connection_is_the_monitor_redis_without_the_sqs_options(settings: Settings) -> None:
    conn = monitor_connection(app)
    assert conn.as_uri() == monitor_connection(app).as_uri()
    assert conn.transport_cls == "redis"
    assert settings.redis_url.endswith(f"/{conn.virtual_host}")
    assert conn.transport_options == DEFAULT_TRANSPORT_OPTIONS
    assert "predefined_queues" in app.conf.broker_transport_options


def test_an_app_without_a_monitor_url_has_no_monitor_connection() -> None:
    bare = Celery("bare", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="monitor_broker_url"):
        monitor_connection(bare)


# --- task-sent events -----------------------------------------------------------------------------------


def test_the_task_sent_events_of_a_batch_reach_redis_as_one_message(own_queues: Settings, tap: EventTap) -> None:
    calls = [TaskCall(args=(f"ev{i}",)) for i in range(23)]

    BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, calls)

    ids = sqs_task_ids(own_queues, "query", expected=23)
    assert len(ids) == 23

    def batches_with_ours() -> list[list[dict[str, Any]]]:
        carrying = [m for m in tap.messages if isinstance(m, list) and any(e.get("uuid") in ids for e in m)]
        seen = {e.get("uuid") for m in carrying for e in m}
        return carrying if ids <= seen else []

    (batch,) = wait_until(batches_with_ours, timeout=30, what="the task-sent events")
    assert len(batch) == 23
    assert {e["uuid"] for e in batch} == ids
    assert {(e["type"], e["name"], e["queue"]) for e in batch} == {("task-sent", WARM_EVENT_DETAILS, "query")}
    assert sorted(e["args"] for e in batch) == sorted(repr((f"ev{i}",)) for i in range(23))
    # no task-sent event of ours came on its own
    assert not [m for m in tap.messages if isinstance(m, dict) and m.get("uuid") in ids]


def test_a_single_publish_sends_its_own_task_sent_event(settings: Settings, tap: EventTap) -> None:
    marker = uuid.uuid4().hex
    sent = app.send_task(WARM_EVENT_DETAILS, args=(marker,))
    try:
        tap.sync()
        (event,) = [e for e in tap.events() if e.get("uuid") == sent.id]
        assert (event["type"], event["name"], event["queue"]) == ("task-sent", WARM_EVENT_DETAILS, "query")
        assert event["args"] == repr((marker,))
    finally:
        # the message itself is for no worker
        wait_until(lambda: delete_task_messages(settings, "query", {sent.id}), timeout=30, what="the sent message")


def test_with_task_sent_events_off_nothing_is_published(own_queues: Settings, tap: EventTap) -> None:
    was = app.conf.monitor_task_sent_event
    app.conf.monitor_task_sent_event = False
    try:
        BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, [TaskCall(args=("quiet",)) for _ in range(3)])
        with task_sent_batch(app):
            pass
    finally:
        app.conf.monitor_task_sent_event = was

    ids = sqs_task_ids(own_queues, "query", expected=3)
    assert len(ids) == 3
    tap.sync()
    assert not [e for e in tap.events() if e.get("uuid") in ids]


def test_nested_batches_are_flushed_once_by_the_outer_block(own_queues: Settings, tap: EventTap) -> None:
    publisher = BatchPublisher(app, own_queues)

    with task_sent_batch(app):
        publisher.publish(WARM_EVENT_DETAILS, [TaskCall(args=("a",)), TaskCall(args=("b",))])
        publisher.publish(WARM_EVENT_DETAILS, [TaskCall(args=("c",))])
        tap.sync()
        ids = sqs_task_ids(own_queues, "query", expected=3)
        assert not [e for e in tap.events() if e.get("uuid") in ids]  # held until the outer block ends

    tap.sync()
    carrying = [m for m in tap.messages if isinstance(m, list) and any(e.get("uuid") in ids for e in m)]
    assert len(carrying) == 1 and {e["uuid"] for e in carrying[0]} == ids


# --- Redis unreachable ----------------------------------------------------------------------------------


@pytest.fixture()
def lone_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own on a free port (so that it can be stopped)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30, what="redis-server", process=process)
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def within(seconds: float, action: Any) -> Any:
    """Run ``action`` in a thread; fail if it has not returned after ``seconds`` (it would hang)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_the_dispatcher_buffers_instead_of_retrying_while_redis_is_down_and_flushes_after(
    settings: Settings, lone_redis: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, process = lone_redis
    copy = copy_of_app(settings, f"redis://127.0.0.1:{port}/0")
    try:
        dispatcher = copy.events.Dispatcher(monitor_connection(copy), hostname="unit@test", enabled=True)
        assert isinstance(dispatcher, MonitorDispatcher)
        dispatcher.send("worker-heartbeat", retry=True)
        assert len(dispatcher._outbound_buffer) == 0

        # When Redis goes away, a heartbeat sent with retry=True (as Heart sends it) returns at once
        process.terminate()
        process.wait(10)
        within(30, lambda: dispatcher.send("worker-heartbeat", retry=True, n=1))

        # Then the event waits in a bounded buffer
        assert [entry[0]["n"] for entry in dispatcher._outbound_buffer] == [1]
        within(60, lambda: [dispatcher.send("worker-heartbeat", retry=True, n=i) for i in range(2, 1502)])  # type: ignore[func-returns-value]
        assert len(dispatcher._outbound_buffer) == 1000
        assert dispatcher._outbound_buffer[-1][0]["n"] == 1501

        # and once Redis is back, a flush delivers what was buffered
        restarted = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", port, timeout=30, what="redis-server", process=restarted)
            with EventTap(copy) as copy_tap:
                dispatcher.flush()
                assert len(dispatcher._outbound_buffer) == 0
                copy_tap.sync()
                delivered = [e["n"] for e in copy_tap.events() if e.get("type") == "worker-heartbeat"]
            assert delivered == list(range(502, 1502))
        finally:
            restarted.terminate()
            restarted.wait(10)
        dispatcher.close()
    finally:
        uninstall(copy)


@pytest.fixture(scope="module")
def published_with_redis_unreachable(stack: Any, settings: Settings) -> dict[str, Any]:
    """Two tasks published in a batch by an app whose monitor Redis is a closed port."""
    own = load_settings(queue_name_prefix=f"t{uuid.uuid4().hex[:10]}-")
    ensure_queues(own)
    copy = copy_of_app(settings, f"redis://127.0.0.1:{free_port()}/0")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[assignment, method-assign]
    logger = logging.getLogger(monitoring.__name__)
    logger.addHandler(handler)
    try:
        sent = within(120, lambda: BatchPublisher(copy, own).publish(WARM_EVENT_DETAILS, [TaskCall(args=("a",))] * 2))
    finally:
        logger.removeHandler(handler)
        uninstall(copy)
    return {"sent": sent, "ids": sqs_task_ids(own, "query", expected=2), "records": records}


def test_with_the_monitor_redis_unreachable_a_batch_is_still_published(
    published_with_redis_unreachable: dict[str, Any],
) -> None:
    assert published_with_redis_unreachable["sent"] == 2
    assert len(published_with_redis_unreachable["ids"]) == 2
    messages = [r.getMessage() for r in published_with_redis_unreachable["records"]]
    assert sum("task-sent events off for this batch" in m for m in messages) == 1


def test_with_the_monitor_redis_unreachable_a_batch_tries_redis_once_not_once_per_task(
    published_with_redis_unreachable: dict[str, Any],
) -> None:
    messages = [r.getMessage() for r in published_with_redis_unreachable["records"]]
    assert [m for m in messages if "task-sent event not published" in m] == []


# --- remote control ---------------------------------------------------------------------------------------


def test_remote_control_answers_over_redis_while_tasks_stay_on_sqs(stack: Any) -> None:
    hostname = f"unit-{uuid.uuid4().hex[:8]}@localhost"
    app.loader.import_default_modules()
    with worker_on("query", hostname=hostname):
        pong = wait_until(lambda: app.control.ping(destination=[hostname], timeout=1), timeout=30, what="a ping reply")
        active = app.control.inspect(destination=[hostname], timeout=5).active_queues()
        stats = app.control.inspect(destination=[hostname], timeout=5).stats()

    assert pong == [{hostname: {"ok": "pong"}}]
    assert [q["name"] for q in active[hostname]] == ["query"]  # type: ignore[index]
    assert stats[hostname]["broker"]["transport"] == "sqs"  # type: ignore[index]
