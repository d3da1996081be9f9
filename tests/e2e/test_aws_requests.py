"""Every AWS request a process makes is counted (the cost figures of ``make bench`` rest on it)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_requests_and_dynamodb_units_are_counted_in_every_new_client(settings, stack) -> None:  # type: ignore[no-untyped-def]
    from dmd_tasks.infra import aws, topology
    from dmd_tasks.infra.metrics import AWS_REQUESTS, DYNAMODB_READ_UNITS, DYNAMODB_WRITE_ITEMS
    from dmd_tasks.store.codec import serialize

    aws.count_requests()
    aws.count_requests()  # twice is once
    # a client built the way kombu builds its own (a plain boto3 session), not through dmd_tasks.aws
    dynamodb = aws.session_for(settings).client("dynamodb", endpoint_url=settings.aws_endpoint_url)
    sqs = aws.session_for(settings).client("sqs", endpoint_url=settings.aws_endpoint_url)

    def value(metric, *labels):  # type: ignore[no-untyped-def]
        return metric.labels(*labels)._value.get()

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
    dynamodb.batch_write_item(RequestItems={settings.table_name: items})
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
