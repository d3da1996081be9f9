"""DemandTable against moto: single items, conditional updates, batches, paginated queries, error mapping."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.table import BATCH_GET_MAX_KEYS, BATCH_WRITE_MAX_ITEMS, DemandTable, Update


@pytest.fixture()
def table(stack: object, settings: Settings) -> DemandTable:
    return DemandTable(settings)


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def partition() -> str:
    return f"TEST#{uuid.uuid4().hex}"


def test_get_returns_none_for_a_missing_item_and_the_item_once_put(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    assert table.get(key, what="get") is None
    table.put({**key, "name": "x", "count": 3, "flag": True}, what="put")
    assert table.get(key, what="get") == {**key, "name": "x", "count": Decimal(3), "flag": True}


def test_get_reads_only_the_attributes_asked_for(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    table.put({**key, "status": "pending", "phone": "+15550001234", "attempts": 1}, what="put")
    assert table.get(key, what="get", attributes=["status", "attempts"]) == {"status": "pending", "attempts": 1}


def test_put_replaces_the_whole_item(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    table.put({**key, "a": "1", "b": "2"}, what="put")
    table.put({**key, "a": "3"}, what="put")
    assert table.get(key, what="get") == {**key, "a": "3"}


def test_update_whose_condition_holds_writes_and_returns_an_empty_dict(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    table.put({**key, "status": "pending"}, what="put")
    result = table.update(
        key,
        what="move",
        update="SET #s = :to",
        condition="#s = :from",
        names={"#s": "status"},
        values={":from": "pending", ":to": "scheduled"},
    )
    assert result == {}
    assert table.get(key, what="get") == {**key, "status": "scheduled"}


def test_update_with_return_new_returns_the_item_as_written(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    table.put({**key, "status": "pending", "phone": "+15550001234"}, what="put")
    result = table.update(
        key,
        what="move",
        update="SET #s = :to, attempts = :a",
        condition="#s = :from",
        names={"#s": "status"},
        values={":from": "pending", ":to": "sending", ":a": 2},
        return_new=True,
    )
    assert result == {**key, "status": "sending", "phone": "+15550001234", "attempts": Decimal(2)}


def test_update_whose_condition_fails_returns_none_and_changes_nothing(table: DemandTable) -> None:
    # Given an item someone else already moved on
    key = {"pk": partition(), "sk": "ONE"}
    table.put({**key, "status": "sent"}, what="put")
    # When a writer expecting the earlier status tries to move it
    result = table.update(
        key,
        what="move",
        update="SET #s = :to",
        condition="#s = :from",
        names={"#s": "status"},
        values={":from": "pending", ":to": "scheduled"},
        return_new=True,
    )
    # Then nothing changes, and the writer is told so with None (not an exception)
    assert result is None
    assert table.get(key, what="get") == {**key, "status": "sent"}


def test_conditional_update_of_a_missing_item_creates_nothing(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    result = table.update(key, what="set", update="SET a = :a", condition="attribute_exists(pk)", values={":a": "x"})
    assert result is None
    assert table.get(key, what="get") is None


def test_a_malformed_request_stays_a_client_error(table: DemandTable) -> None:
    key = {"pk": partition(), "sk": "ONE"}
    with pytest.raises(ClientError) as raised:
        # an expression value the expression does not use: DynamoDB refuses the request
        table.update(key, what="bad", update="SET a = :a", condition="attribute_exists(pk)", values={":a": 1, ":b": 2})
    assert not isinstance(raised.value, TransientError)
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def rows(pk: str, n: int) -> list[dict[str, Any]]:
    return [{"pk": pk, "sk": f"ROW#{i:04d}", "n": i} for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, BATCH_WRITE_MAX_ITEMS, 2 * BATCH_WRITE_MAX_ITEMS + 7])
def test_put_items_writes_every_item_in_batches_of_25(table: DemandTable, n: int) -> None:
    pk = partition()
    assert table.put_items(rows(pk, n)) == n
    assert [i["n"] for i in table.query_all(pk)] == list(range(n))


@pytest.mark.parametrize("n", [0, 1, BATCH_WRITE_MAX_ITEMS, 3 * BATCH_WRITE_MAX_ITEMS + 12])
def test_put_items_with_a_pool_writes_every_item(table: DemandTable, pool: ThreadPoolExecutor, n: int) -> None:
    pk = partition()
    assert table.put_items(iter(rows(pk, n)), pool) == n
    assert [i["n"] for i in table.query_all(pk)] == list(range(n))


def test_existing_keys_finds_exactly_the_stored_ones_across_more_than_100_keys(table: DemandTable) -> None:
    # Given 130 stored rows and 250 keys asked about (three BatchGetItem calls)
    pk = partition()
    table.put_items(rows(pk, 130))
    asked = [{"pk": pk, "sk": f"ROW#{i:04d}"} for i in range(250)]
    assert len(asked) > 2 * BATCH_GET_MAX_KEYS
    # Then exactly the stored keys come back, as keys only
    found = table.existing_keys(asked)
    assert sorted(k["sk"] for k in found) == [f"ROW#{i:04d}" for i in range(130)]
    assert all(set(k) == {"pk", "sk"} for k in found)


def test_existing_keys_with_a_pool_finds_the_same_keys(table: DemandTable, pool: ThreadPoolExecutor) -> None:
    pk = partition()
    table.put_items(rows(pk, 5))
    asked = [{"pk": pk, "sk": f"ROW#{i:04d}"} for i in range(0, 300, 2)]
    found = table.existing_keys(asked, pool)
    assert sorted(k["sk"] for k in found) == ["ROW#0000", "ROW#0002", "ROW#0004"]
    assert table.existing_keys([], pool) == []


def test_query_pages_follows_last_evaluated_key_page_by_page(table: DemandTable) -> None:
    pk = partition()
    table.put_items(rows(pk, 5))
    pages = list(
        table.query_pages(
            what="paged",
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": pk}},
            Limit=2,
        )
    )
    assert [len(p["Items"]) for p in pages] == [2, 2, 1]
    assert [i["sk"]["S"] for p in pages for i in p["Items"]] == [f"ROW#{i:04d}" for i in range(5)]
    assert "LastEvaluatedKey" not in pages[-1]


def test_query_items_deserializes_one_page(table: DemandTable) -> None:
    pk = partition()
    table.put_items(rows(pk, 4))
    items = table.query_items(
        what="one page", KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": pk}}, Limit=3
    )
    assert items == [{"pk": pk, "sk": f"ROW#{i:04d}", "n": Decimal(i)} for i in range(3)]


def test_query_all_reads_a_partition_or_one_sort_key_prefix_of_it(table: DemandTable) -> None:
    pk = partition()
    table.put_items([*rows(pk, 3), {"pk": pk, "sk": "OTHER#1"}, {"pk": pk, "sk": "OTHER#2"}])
    table.put({"pk": partition(), "sk": "ROW#0000"}, what="another partition")
    assert [i["sk"] for i in table.query_all(pk)] == ["OTHER#1", "OTHER#2", "ROW#0000", "ROW#0001", "ROW#0002"]
    assert [i["sk"] for i in table.query_all(pk, "OTHER#")] == ["OTHER#1", "OTHER#2"]
    assert list(table.query_all(pk, "NONE#")) == []


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException"])
def test_throttling_becomes_a_transient_error(stack: object, settings: Settings, code: str) -> None:
    # A table on a client of its own (a copy of the settings), so the stub touches no other test's client
    own_settings = settings.model_copy()
    table = DemandTable(own_settings)
    with Stubber(table._client) as stub:
        stub.add_client_error("get_item", service_error_code=code, http_status_code=400)
        with pytest.raises(TransientError, match=f"get sale s1: DynamoDB {code}") as raised:
            table.get({"pk": "SALE#s1", "sk": "SALE"}, what="get sale s1")
        stub.assert_no_pending_responses()
    assert isinstance(raised.value.__cause__, ClientError)


# --- conditional updates in transactions (update_many) ------------------------------------------


def moves(keys: list[dict[str, str]], source: str, target: str) -> list[Update]:
    return [Update(k, "SET #s = :to", "#s = :from", {":from": source, ":to": target}, {"#s": "status"}) for k in keys]


def test_update_many_applies_each_update_whose_condition_holds_and_says_which(table: DemandTable) -> None:
    # Given 150 items, 140 pending and 10 already moved by someone else
    pk = partition()
    keys = [{"pk": pk, "sk": f"N#{n:03d}"} for n in range(150)]
    taken = set(range(5, 150, 15))
    table.put_items({**k, "status": "sent" if n in taken else "pending"} for n, k in enumerate(keys))

    # When all 150 are moved pending -> scheduled (two transactions: 100 and 50)
    applied = table.update_many(moves(keys, "pending", "scheduled"), what="test moves")

    # Then every item whose condition held moved, the others did not, and the answer says which
    assert applied == [n not in taken for n in range(150)]
    statuses = {i["sk"]: i["status"] for i in table.query_all(pk)}
    assert statuses == {k["sk"]: "sent" if n in taken else "scheduled" for n, k in enumerate(keys)}
    # and a repeat changes nothing: every condition fails now
    assert table.update_many(moves(keys, "pending", "scheduled"), what="test moves") == [False] * 150


def test_update_many_costs_one_request_per_hundred_updates_when_none_fails(
    table: DemandTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    pk = partition()
    keys = [{"pk": pk, "sk": f"N#{n:03d}"} for n in range(250)]
    table.put_items({**k, "status": "pending"} for k in keys)
    calls: list[int] = []
    real = table._client.transact_write_items

    def counted(**kwargs: Any) -> Any:
        calls.append(len(kwargs["TransactItems"]))
        return real(**kwargs)

    monkeypatch.setattr(table._client, "transact_write_items", counted)
    assert all(table.update_many(moves(keys, "pending", "scheduled"), what="test moves"))
    assert calls == [100, 100, 50]


def test_a_transaction_the_emulator_cancels_writes_nothing_and_no_stream_record(
    table: DemandTable, settings: Settings
) -> None:
    # Given two items, one of whose conditions fails: the raw request (no retry of the rest)
    pk = partition()
    keys = [{"pk": pk, "sk": "A"}, {"pk": pk, "sk": "B"}]
    table.put_items([{**keys[0], "status": "pending"}, {**keys[1], "status": "sent"}])
    streams = aws.client("dynamodbstreams", settings)
    arn = aws.client("dynamodb", settings).describe_table(TableName=table.name)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    latest = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    with pytest.raises(ClientError) as cancelled:
        table._client.transact_write_items(
            TransactItems=[{"Update": u.action(table.name)} for u in moves(keys, "pending", "scheduled")]
        )
    # Then DynamoDB's answer (a reason per item), nothing written, nothing on the stream
    assert [r["Code"] for r in cancelled.value.response["CancellationReasons"]] == ["None", "ConditionalCheckFailed"]
    assert {i["sk"]: i["status"] for i in table.query_all(pk)} == {"A": "pending", "B": "sent"}
    assert streams.get_records(ShardIterator=latest)["Records"] == []


def test_transactions_on_a_large_table_stay_fast_on_the_local_emulator(table: DemandTable) -> None:
    # moto copied the whole table once per transaction item (~180 ms an item at 2,000 items); the
    # local stack's emulator (dmd_tasks.ops.emulator) does not
    pk = partition()
    table.put_items({"pk": pk, "sk": f"N#{n:05d}", "status": "pending", "pad": "x" * 200} for n in range(3000))
    keys = [{"pk": pk, "sk": f"N#{n:05d}"} for n in range(100)]
    began = time.monotonic()
    assert all(table.update_many(moves(keys, "pending", "scheduled"), what="test moves"))
    assert time.monotonic() - began < 5.0


def test_update_many_writes_two_updates_of_one_item_in_separate_transactions(table: DemandTable) -> None:
    # a transaction takes one action per item: the second move of the same item goes after the first
    key = {"pk": partition(), "sk": "ONE"}
    table.put({**key, "status": "pending"}, what="put")
    twice = [*moves([key], "pending", "scheduled"), *moves([key], "scheduled", "sending")]
    assert table.update_many(twice, what="test moves") == [True, True]
    assert (table.get(key, what="get") or {})["status"] == "sending"
