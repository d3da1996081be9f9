"""AWS clients built from settings: cached per process and settings, one I/O pool per process, and
every AWS request a process makes counted (the cost figures of ``make bench`` rest on it).

Against the session's moto server.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import pytest

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.metrics import AWS_REQUESTS, DYNAMODB_READ_UNITS, DYNAMODB_WRITE_ITEMS
from dmd_tasks.infra.settings import Settings, load_settings
from dmd_tasks.store.codec import serialize

#: Settings these tests build clients from stay alive for the session: the client cache is keyed by


def kept(settings: Settings) -> Settings:
    return settings


def in_forked_child(check: Callable[[], bool]) -> bool:
    """Run ``check`` in a forked copy of this process; True if it returned True there."""
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            code = 0 if check() else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def value(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


def test_requests_and_dynamodb_units_are_counted_in_every_new_client(settings: Settings, stack: Any) -> None:
    aws.count_requests()
    aws.count_requests()  # twice is once
    # a client built the way kombu builds its own (a plain boto3 session), not through dmd_tasks.aws
    dynamodb = aws.session_for(settings).client("dynamodb", endpoint_url=settings.aws_endpoint_url)
    sqs = aws.session_for(settings).client("sqs", endpoint_url=settings.aws_endpoint_url)
    before = {
        "batch": value(AWS_REQUESTS, "dynamodb", "BatchWriteItem"),
        "query": value(AWS_REQUESTS, "dynamodb", "Query"),
        "sqs": value(AWS_REQUESTS, "sqs", "SendMessageBatch"),
        "items": value(DYNAMODB_WRITE_ITEMS, "BatchWriteItem"),
        "read": value(DYNAMODB_READ_UNITS, "Query"),
    }
    items = [
        {"PutRequest": {"Item": serialize({"pk": "COUNT#x", "sk": f"n{i}", "blob": "y" * 300})}} for i in range(20)
    ]

    dynamodb.batch_write_item(RequestItems={settings.table_name: items})  # type: ignore[dict-item]
    dynamodb.query(
        TableName=settings.table_name,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "COUNT#x"}},
    )
    sqs.send_message_batch(
        QueueUrl=topology.queue_url(settings, "query"),
        Entries=[{"Id": "1", "MessageBody": "{}"}, {"Id": "2", "MessageBody": "{}"}],
    )
    sqs.purge_queue(QueueUrl=topology.queue_url(settings, "query"))

    assert value(AWS_REQUESTS, "dynamodb", "BatchWriteItem") == before["batch"] + 1
    assert value(AWS_REQUESTS, "dynamodb", "Query") == before["query"] + 1
    assert value(AWS_REQUESTS, "sqs", "SendMessageBatch") == before["sqs"] + 1
    assert value(DYNAMODB_WRITE_ITEMS, "BatchWriteItem") == before["items"] + 20
    # 20 items of ~330 bytes come back in a response of more than 4 KB: at least two read units
    assert value(DYNAMODB_READ_UNITS, "Query") >= before["read"] + 2


def test_reads_by_key_count_one_unit_per_item(settings: Settings, stack: Any) -> None:
    aws.count_requests()
    dynamodb = aws.session_for(settings).client("dynamodb", endpoint_url=settings.aws_endpoint_url)
    keys = [serialize({"pk": "COUNT#keys", "sk": f"k{i}"}) for i in range(3)]
    before = (value(DYNAMODB_READ_UNITS, "GetItem"), value(DYNAMODB_READ_UNITS, "BatchGetItem"))
    before_puts = value(DYNAMODB_WRITE_ITEMS, "PutItem")

    dynamodb.put_item(TableName=settings.table_name, Item=keys[0])
    dynamodb.get_item(TableName=settings.table_name, Key=keys[0])
    dynamodb.batch_get_item(RequestItems={settings.table_name: {"Keys": keys}})

    assert value(DYNAMODB_WRITE_ITEMS, "PutItem") == before_puts + 1
    assert value(DYNAMODB_READ_UNITS, "GetItem") == before[0] + 1
    assert value(DYNAMODB_READ_UNITS, "BatchGetItem") == before[1] + 3


def test_a_client_is_built_once_per_service_and_settings() -> None:
    settings = kept(load_settings())
    first = aws.client("sqs", settings)

    assert aws.client("sqs", settings) is first
    assert aws.client("dynamodb", settings) is not first
    # other settings (another endpoint, say) get a client of their own, configured from them
    other = kept(load_settings(aws_endpoint_url="http://127.0.0.1:1", aws_max_pool_connections=3))
    theirs = aws.client("sqs", other)
    assert theirs is not first
    assert theirs.meta.endpoint_url == "http://127.0.0.1:1"
    assert theirs.meta.config.max_pool_connections == 3
    assert first.meta.endpoint_url == settings.aws_endpoint_url
    assert first.meta.region_name == settings.aws_region


def test_a_forked_process_builds_its_own_client_and_keeps_it() -> None:
    settings = kept(load_settings())
    parent = aws.client("sqs", settings)

    def child_has_its_own() -> bool:
        mine = aws.client("sqs", settings)
        return mine is not parent and aws.client("sqs", settings) is mine

    assert in_forked_child(child_has_its_own)
    assert aws.client("sqs", settings) is parent


def test_the_io_pool_is_one_per_process_whatever_the_settings() -> None:
    pool = aws.io_pool(load_settings())

    assert aws.io_pool(load_settings(aws_io_threads=2)) is pool
    assert pool.submit(lambda: 41 + 1).result(timeout=10) == 42
    assert in_forked_child(lambda: aws.io_pool(load_settings()) is not pool)


@pytest.mark.parametrize("service", ["sqs", "dynamodb"])
def test_clients_have_bounded_timeouts_and_standard_retries(service: str) -> None:
    settings = kept(load_settings(aws_connect_timeout_seconds=1.5, aws_read_timeout_seconds=7.0))
    config = aws.client(service, settings).meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.5, 7.0)
    # standard retries; botocore counts ``max_attempts`` as retries after the first: six attempts in all
    assert config.retries == {"mode": "standard", "total_max_attempts": 6}


def test_a_new_settings_object_never_gets_the_client_of_a_freed_one() -> None:
    # Given a client built for settings that are then dropped
    old = load_settings(aws_endpoint_url="http://127.0.0.1:1")
    aws.client("sqs", old)
    old_key = (os.getpid(), id(old), "sqs")
    del old
    gc.collect()
    newcomers: list[Settings] = []
    try:
        # When new settings are made (CPython soon reuses the freed address)
        for _ in range(2000):
            newcomers.append(load_settings(aws_endpoint_url="http://127.0.0.1:2"))
            if id(newcomers[-1]) == old_key[1]:
                break
        # Then each gets a client for its own endpoint
        for settings in newcomers:
            assert aws.client("sqs", settings).meta.endpoint_url == "http://127.0.0.1:2"
    finally:
        # the stale entry must not reach a later test's settings
        for settings in newcomers:
            aws._clients.pop((os.getpid(), id(settings), "sqs"), None)
        aws._clients.pop(old_key, None)


def test_clients_share_one_session_so_each_service_model_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(aws_endpoint_url="http://127.0.0.1:3", aws_region="eu-west-3")
    aws.warm(settings, ("dynamodb",))
    session = aws._sessions[(*aws.credentials(settings), None)]
    loaded = session._loader  # botocore's loader keeps the models it parsed
    dynamodb = aws.client("dynamodb", settings)
    sqs = aws.client("sqs", settings)
    assert dynamodb._loader is loaded and sqs._loader is loaded
    # a forked child (another pid) gets clients of its own from the session it inherited
    monkeypatch.setattr(aws.os, "getpid", lambda: -1)
    child = aws.client("dynamodb", settings)
    assert child is not dynamodb and child._loader is loaded
    assert child.meta.endpoint_url == "http://127.0.0.1:3" and child.meta.region_name == "eu-west-3"
