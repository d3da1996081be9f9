"""Batched publishing: many calls of one task as Celery protocol-2 messages, ten per
SendMessageBatch, on the task's queue; the messages a worker really runs.

Against the session's moto server. Most tests publish to queues provisioned under a prefix of
their own; the worker test publishes to the session's ``query`` queue, where a worker runs.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Task, signals

from dmd_tasks.celery_app import app
from dmd_tasks.celery_app.base import task
from dmd_tasks.celery_app.publish import BatchPublisher
from dmd_tasks.infra import aws, logs, topology, tracing
from dmd_tasks.infra.logs import CORRELATION_HEADER
from dmd_tasks.infra.settings import Settings, load_settings
from dmd_tasks.infra.sqs import SQS_MAX_MESSAGE_BYTES, make_visible
from dmd_tasks.infra.topology import WARM_EVENT_DETAILS, TaskCall
from dmd_tasks.ops.provision import ensure_queues
from tests.helpers import wait_until, worker_on

RECORD_TASK = "tests.celery_app.publish.record"
RAN: list[dict[str, Any]] = []


@task(RECORD_TASK, queue="query")
def record(self: Task, marker: str, n: int, **kwargs: Any) -> int:
    RAN.append(
        {
            "marker": marker,
            "n": n,
            "kwargs": kwargs,
            "task_id": self.request.id,
            "correlation_id": logs.correlation_id.get(),
            "routing_key": (self.request.delivery_info or {}).get("routing_key"),
        }
    )
    return n


class RecordingSQS:
    """The real client, with every SendMessageBatch's entries kept."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.batches: list[list[dict[str, Any]]] = []

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.batches.append([dict(e) for e in kwargs["Entries"]])
        return self.real.send_message_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture()
def own_queues(stack: Any) -> Settings:
    settings = load_settings(queue_name_prefix=f"t{uuid.uuid4().hex[:10]}-")
    ensure_queues(settings)
    return settings


@pytest.fixture()
def spy(own_queues: Settings, monkeypatch: pytest.MonkeyPatch) -> RecordingSQS:
    """What the next BatchPublisher of ``own_queues`` sends, recorded on its way to moto."""
    recording = RecordingSQS(aws.client("sqs", own_queues))
    real_client = aws.client
    monkeypatch.setattr(
        aws, "client", lambda service, s: recording if service == "sqs" and s is own_queues else real_client(service, s)
    )
    return recording


def receive_all(settings: Settings, queue: str, expected: int | None = None) -> list[dict[str, Any]]:
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, queue)
    out: list[dict[str, Any]] = []
    empty = 0
    while empty < 2 and (expected is None or len(out) < expected):
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        empty = empty + 1 if not batch else 0
        out.extend(batch)
    return out


def take_where(settings: Settings, queue: str, wanted: Any) -> list[dict[str, Any]]:
    """The envelopes of the visible messages of a shared queue that ``wanted`` picks, deleted;
    every other message is given back at once."""
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, queue)
    picked, others = [], []
    for message in receive_all(settings, queue):
        body = envelope(message["Body"])
        if wanted(body):
            picked.append(body)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        else:
            others.append(message["ReceiptHandle"])
    make_visible(sqs, url, others)
    return picked


def envelope(sqs_body: str) -> dict[str, Any]:
    """kombu's SQS envelope: base64 of JSON, whose body is base64 of the JSON task body."""
    outer = json.loads(base64.b64decode(sqs_body))
    assert outer["properties"]["body_encoding"] == "base64"
    outer["decoded_body"] = json.loads(base64.b64decode(outer["body"]).decode(outer["content-encoding"]))
    return outer


def test_23_calls_become_23_protocol_2_messages_on_the_tasks_queue_ten_per_batch(
    own_queues: Settings, spy: RecordingSQS
) -> None:
    calls = [TaskCall(args=(f"ev{i}",), kwargs={"i": i}, headers={CORRELATION_HEADER: f"corr-{i}"}) for i in range(23)]

    sent = BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, calls)

    assert sent == 23
    assert [len(batch) for batch in spy.batches] == [10, 10, 3]
    messages = [envelope(m["Body"]) for m in receive_all(own_queues, "query", expected=23)]
    assert len(messages) == 23
    by_arg = {m["decoded_body"][0][0]: m for m in messages}
    assert sorted(by_arg) == sorted(f"ev{i}" for i in range(23))
    for i in range(23):
        message = by_arg[f"ev{i}"]
        headers, properties = message["headers"], message["properties"]
        args, kwargs, embed = message["decoded_body"]
        assert (args, kwargs) == ([f"ev{i}"], {"i": i})
        assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
        assert message["content-type"] == "application/json"
        assert headers["lang"] == "py" and headers["task"] == WARM_EVENT_DETAILS
        assert headers["root_id"] == headers["id"] == properties["correlation_id"]
        assert headers["retries"] == 0 and headers["eta"] is None
        assert headers[CORRELATION_HEADER] == f"corr-{i}"
        assert properties["delivery_info"] == {"exchange": "query", "routing_key": "query"}
    assert len({m["headers"]["id"] for m in messages}) == 23
    # nothing went to any other queue of this prefix
    assert receive_all(own_queues, "send") == [] and receive_all(own_queues, "short-url") == []


def test_the_envelope_is_the_one_apply_async_would_send(own_queues: Settings, settings: Settings) -> None:
    # Given the same task sent the ordinary way (one SendMessage through kombu) to the session's queue
    ordinary_id = app.send_task(WARM_EVENT_DETAILS, args=("evA",)).id
    (ordinary,) = take_where(settings, "query", lambda body: body["headers"]["id"] == ordinary_id)

    # When it is published in a batch
    BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, [TaskCall(args=("evA",))])
    (batched,) = [envelope(m["Body"]) for m in receive_all(own_queues, "query", expected=1)]

    # Then the message has the same shape: headers, properties, body
    assert set(batched) == set(ordinary)
    assert set(batched["headers"]) == set(ordinary["headers"])
    assert set(batched["properties"]) <= set(ordinary["properties"])
    assert batched["decoded_body"] == ordinary["decoded_body"]
    # ignore_result too: the task's own setting decides; a batch-published task must not store
    # its result in Redis when one sent the ordinary way does not
    for key in ("lang", "task", "retries", "argsrepr", "kwargsrepr", "eta", "expires", "ignore_result"):
        assert batched["headers"][key] == ordinary["headers"][key], key


def test_calls_without_a_correlation_id_get_the_current_one_or_a_new_one(own_queues: Settings) -> None:
    publisher = BatchPublisher(app, own_queues)
    token = logs.correlation_id.set("corr-of-the-record")
    try:
        publisher.publish(WARM_EVENT_DETAILS, [TaskCall(args=("in-context",))])
    finally:
        logs.correlation_id.reset(token)
    publisher.publish(WARM_EVENT_DETAILS, [TaskCall(args=("no-context",)), TaskCall(args=("no-context",))])

    messages = [envelope(m["Body"]) for m in receive_all(own_queues, "query", expected=3)]
    ids = {m["decoded_body"][0][0]: [] for m in messages}  # type: ignore[var-annotated]
    for m in messages:
        ids[m["decoded_body"][0][0]].append(m["headers"][CORRELATION_HEADER])
    assert ids["in-context"] == ["corr-of-the-record"]
    fresh = ids["no-context"]
    assert len(fresh) == 2 and len(set(fresh)) == 2 and all(fresh)


def test_delay_seconds_become_delay_seconds_of_the_message_at_most_fifteen_minutes(
    own_queues: Settings, spy: RecordingSQS
) -> None:
    calls = [
        TaskCall(args=("now",)),
        TaskCall(args=("soon",), delay_seconds=2),
        TaskCall(args=("too-late",), delay_seconds=5000),
    ]

    BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, calls)

    (entries,) = spy.batches
    assert "DelaySeconds" not in entries[0]
    assert [e.get("DelaySeconds") for e in entries[1:]] == [2, 900]
    # SQS holds them back: only the undelayed one can be received at once, the next one two seconds later
    first = [envelope(m["Body"])["decoded_body"][0] for m in receive_all(own_queues, "query")]
    assert first == [["now"]]
    later = wait_until(lambda: receive_all(own_queues, "query"), timeout=30, what="the delayed message")
    assert [envelope(m["Body"])["decoded_body"][0] for m in later] == [["soon"]]


def test_a_queue_given_overrides_the_routing_table(own_queues: Settings) -> None:
    sent = BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, [TaskCall(args=("x",))], queue="generate")

    assert sent == 1
    (message,) = [envelope(m["Body"]) for m in receive_all(own_queues, "generate", expected=1)]
    assert message["properties"]["delivery_info"]["routing_key"] == "generate"
    assert receive_all(own_queues, "query") == []


def test_nothing_to_publish_sends_nothing(own_queues: Settings, spy: RecordingSQS) -> None:
    assert BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, []) == 0
    assert spy.batches == []


@pytest.fixture()
def publish_signals() -> Iterator[list[tuple[str, str | None]]]:
    """(signal, traceparent active while it fired) for every publish signal during the test."""
    seen: list[tuple[str, str | None]] = []

    def before(**_: Any) -> None:
        seen.append(("before", tracing.current_traceparent()))

    def after(**_: Any) -> None:
        seen.append(("after", tracing.current_traceparent()))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    try:
        yield seen
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)


def test_publish_signals_fire_per_message_inside_the_trace_of_the_record(
    own_queues: Settings, publish_signals: list[tuple[str, str | None]]
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"

    BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, [TaskCall(args=("t",), traceparent=traceparent)])
    BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, [TaskCall(args=("u",))])

    assert [name for name, _ in publish_signals] == ["before", "after", "before", "after"]
    assert publish_signals[0][1] is not None and publish_signals[0][1].split("-")[1] == trace_id
    assert publish_signals[2][1] is None or publish_signals[2][1].split("-")[1] != trace_id
    # the record's context is left once the message is built
    assert tracing.current_traceparent() is None


def test_a_worker_runs_the_published_messages_and_consumes_them(settings: Settings, stack: Any) -> None:
    marker = uuid.uuid4().hex
    calls = [
        TaskCall(args=(marker, n), kwargs={"extra": n * 10}, headers={CORRELATION_HEADER: f"{marker}-{n}"})
        for n in range(3)
    ]
    app.loader.import_default_modules()

    def ran_all() -> list[dict[str, Any]] | None:
        mine = [r for r in RAN if r["marker"] == marker]
        return mine if len(mine) == len(calls) else None

    # Given a worker on the query queue
    with worker_on("query"):
        # When a task outside the routing table is published there in a batch
        BatchPublisher(app, settings).publish(RECORD_TASK, calls, queue="query")
        # Then the worker runs each message once, with its arguments and correlation id
        ran = wait_until(ran_all, timeout=60, what="the worker to run the three messages")

    assert sorted((r["n"], r["kwargs"]["extra"], r["correlation_id"]) for r in ran) == [
        (n, n * 10, f"{marker}-{n}") for n in range(3)
    ]
    assert {r["routing_key"] for r in ran} == {"query"}
    assert len({r["task_id"] for r in ran}) == 3
    # and the messages were acknowledged (deleted from SQS), not left for redelivery
    ids = {r["task_id"] for r in ran}
    assert take_where(settings, "query", lambda body: body["headers"]["id"] in ids) == []


def test_a_batch_never_exceeds_sqs_request_limit_of_256_kib(own_queues: Settings, spy: RecordingSQS) -> None:
    big = "x" * 60_000  # base64 in the envelope: about 80 KB a message
    calls = [TaskCall(args=(f"ev{i}", big)) for i in range(7)]

    assert BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, calls) == 7

    assert len(spy.batches) > 1
    for batch in spy.batches:
        assert sum(len(e["MessageBody"].encode()) for e in batch) <= SQS_MAX_MESSAGE_BYTES
    assert len(receive_all(own_queues, "query", expected=7)) == 7


def test_what_flower_shows_of_a_tasks_arguments_has_no_phone_number_or_message_body(
    own_queues: Settings, settings: Settings
) -> None:
    # Given a fan's STOP reply, published by a bridge (in a batch) and the ordinary way
    stop = {"type": "inbound", "sender": "+14155550123", "body": "STOP please", "timestamp": "t"}
    BatchPublisher(app, own_queues).publish(WARM_EVENT_DETAILS, [TaskCall(args=([stop],))])
    (batched,) = [envelope(m["Body"]) for m in receive_all(own_queues, "query", expected=1)]
    ordinary_id = app.send_task(WARM_EVENT_DETAILS, args=([stop],), kwargs={"to": "+14155550123"}).id
    (ordinary,) = take_where(settings, "query", lambda body: body["headers"]["id"] == ordinary_id)

    for message in (batched, ordinary):
        # Then the reprs that task events carry (what Flower shows) are masked ...
        shown = message["headers"]["argsrepr"] + message["headers"]["kwargsrepr"]
        assert "4155550123" not in shown and "STOP please" not in shown
        assert "+1********23" in shown and "[11 characters]" in shown
        # ... and the arguments the task runs with are not
        assert message["decoded_body"][0] == [[stop]]


def test_a_worker_deletes_what_it_ran_ten_messages_to_a_request(
    settings: Settings, stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.transport import SQS

    from dmd_tasks.celery_app import sqs_transport

    batches: list[int] = []
    single_acks: list[Any] = []
    delete = sqs_transport.Channel._delete_acked
    monkeypatch.setattr(
        sqs_transport.Channel,
        "_delete_acked",
        lambda self, url, entries: (batches.append(len(entries)), delete(self, url, entries))[1],  # type: ignore[func-returns-value]
    )
    monkeypatch.setattr(SQS.Channel, "basic_ack", lambda self, tag, multiple=False: single_acks.append(tag))
    marker = uuid.uuid4().hex
    calls = [TaskCall(args=(marker, n)) for n in range(25)]
    app.loader.import_default_modules()
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, "query")

    def in_flight() -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"])

    with worker_on("query"):
        BatchPublisher(app, settings).publish(RECORD_TASK, calls, queue="query")
        wait_until(lambda: len([r for r in RAN if r["marker"] == marker]) == 25, timeout=60, what="25 runs")
        # deleted while the worker runs (a batch fills, or its wait ends), not only when it stops
        wait_until(lambda: in_flight() == 0, timeout=10, what="the acked messages deleted")
        assert single_acks == []
        # every ack deleted once, in requests of up to ten that held two or more on average (a solo
        # worker takes one message a receive, so a batch holds what half a second of runs acked)
        assert sum(batches) >= 25 and max(batches) <= 10 and len(batches) <= sum(batches) // 2, batches


def test_the_brokers_clients_come_from_the_process_session_whose_models_are_parsed_once(settings: Settings) -> None:
    # Given a worker's parsed models (it warms them before it forks)
    aws.warm(settings)
    session = aws._sessions[(*aws.credentials(settings), None)]
    # When the broker's channel makes its clients, for two queues a task publishes to
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        clients = [channel.sqs(queue=topology.queue_name(settings, q)) for q in ("schedule", "generate")]
        # Then each is a client of that session, so nothing is parsed again (kombu made a new
        # session per queue: a worker child's first publish to each queue parsed the SQS model)
        assert all(c._loader is session._loader for c in clients)
        assert clients[0] is not clients[1]
        assert {c.meta.region_name for c in clients} == {settings.aws_region}
        assert {c.meta.endpoint_url for c in clients} == {settings.aws_endpoint_url}
