"""The local emulator's query (dmd_tasks.ops.emulator.patch_query) answers exactly as moto's.

In process (moto's mock, no sockets): the same queries, paged, before and after the patch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models.table import Table

from dmd_tasks.ops.emulator import patch_query
from dmd_tasks.ops.provision import GSIS


def create_table(ddb: Any, **extra: Any) -> dict[str, Any]:
    """Table ``t`` with the demand table's keys and indexes."""
    return dict(
        ddb.create_table(
            TableName="t",
            AttributeDefinitions=[
                {"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk")
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=GSIS,
            BillingMode="PAY_PER_REQUEST",
            **extra,
        )
    )


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(ddb)
        for p in range(5):
            for n in range(40):
                item = {"pk": {"S": f"P#{p}"}, "sk": {"S": f"N#{(n * 7) % 40:03d}"}, "v": {"N": str(n)}}
                if n % 3:
                    item |= {"gsi1pk": {"S": f"G#{n % 4}"}, "gsi1sk": {"S": f"T#{(n * 13) % 17:03d}"}}
                if n % 5 == 0:
                    item |= {"gsi2pk": {"S": "ACTIVE"}, "gsi2sk": {"S": f"P#{p}#{n}"}}
                ddb.put_item(TableName="t", Item=item)
        yield ddb


QUERIES: list[dict[str, Any]] = [
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "P#2"}}},
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "P#9"}}},
    {
        "KeyConditionExpression": "pk = :p AND begins_with(sk, :n)",
        "ExpressionAttributeValues": {":p": {"S": "P#1"}, ":n": {"S": "N#01"}},
        "ScanIndexForward": False,
    },
    {
        "KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b",
        "FilterExpression": "v > :v",
        "ExpressionAttributeValues": {":p": {"S": "P#3"}, ":a": {"S": "N#005"}, ":b": {"S": "N#030"}, ":v": {"N": "9"}},
    },
    {
        "IndexName": "gsi1",
        "KeyConditionExpression": "gsi1pk = :g AND gsi1sk <= :t",
        "ExpressionAttributeValues": {":g": {"S": "G#1"}, ":t": {"S": "T#009"}},
    },
    {
        "IndexName": "gsi1",
        "KeyConditionExpression": "gsi1pk = :g",
        "ExpressionAttributeValues": {":g": {"S": "G#2"}},
        "ScanIndexForward": False,
    },
    {
        "IndexName": "gsi2",
        "KeyConditionExpression": "gsi2pk = :a",
        "ExpressionAttributeValues": {":a": {"S": "ACTIVE"}},
    },
]


def _pages(client: Any, query: dict[str, Any], limit: int) -> list[list[dict[str, Any]]]:
    pages, start = [], None
    while True:
        page = client.query(TableName="t", Limit=limit, **query, **({"ExclusiveStartKey": start} if start else {}))
        pages.append(page["Items"])
        start = page.get("LastEvaluatedKey")
        if not start:
            return pages


def test_patched_queries_page_and_sort_exactly_as_moto(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    before = [_pages(client, q, limit) for q in QUERIES for limit in (7, 1000)]
    monkeypatch.setattr(Table, "all_items", Table.all_items)
    monkeypatch.setattr(Table, "query", Table.query)
    patch_query(Table)
    after = [_pages(client, q, limit) for q in QUERIES for limit in (7, 1000)]
    assert after == before
    assert sum(len(p) for pages in before for p in pages) > 300  # the queries found items to compare
    # a scan (not a query) still gets every item, sorted
    assert len(client.scan(TableName="t")["Items"]) == 200


def test_a_write_during_a_transaction_waits_for_it_and_sees_its_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # DynamoDB: a transaction and a conditional write of the same item never both win
    import threading
    import time

    from botocore.exceptions import ClientError
    from moto.dynamodb import comparisons
    from moto.dynamodb.models import DynamoDBBackend

    from dmd_tasks.ops import emulator

    for name in emulator.WRITE_METHODS:
        monkeypatch.setattr(DynamoDBBackend, name, getattr(DynamoDBBackend, name))
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", emulator.transact_write_items)
    emulator.serialize_writes(DynamoDBBackend)
    checking = threading.Event()
    real = comparisons.get_filter_expression

    def slow_check(*args: Any, **kwargs: Any) -> Any:  # the transaction pauses between check and write
        checking.set()
        time.sleep(0.5)
        return real(*args, **kwargs)

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="t",
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )
        key = {"pk": {"S": "SALE#s"}, "sk": {"S": "N#1"}}
        other = {"pk": {"S": "SALE#s"}, "sk": {"S": "N#2"}}
        for k in (key, other):
            ddb.put_item(TableName="t", Item={**k, "status": {"S": "sending"}})

        def move(k: dict[str, Any], to: str) -> dict[str, Any]:
            return {
                "TableName": "t",
                "Key": k,
                "UpdateExpression": "SET #s = :to",
                "ConditionExpression": "#s = :from",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":to": {"S": to}, ":from": {"S": "sending"}},
            }

        won: list[str] = []

        def transaction() -> None:
            monkeypatch.setattr(comparisons, "get_filter_expression", slow_check)
            ddb.transact_write_items(TransactItems=[{"Update": move(key, "sent")}, {"Update": move(other, "sent")}])  # type: ignore[typeddict-item]
            won.append("transaction")

        thread = threading.Thread(target=transaction)
        thread.start()
        assert checking.wait(5)
        try:
            ddb.update_item(**move(key, "delivered"))
            won.append("update")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
        thread.join(10)
        final = ddb.get_item(TableName="t", Key=key)["Item"]["status"]["S"]
        assert won == ["transaction"] and final == "sent"
