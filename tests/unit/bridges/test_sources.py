"""The two stream sources against moto: shards and their parents, iterators, pages, sequence numbers.

Each test reads a stream or table of its own, so nothing else written in the session shows up.
moto never answers ExpiredIteratorException or TrimmedDataAccessException, so those answers are
stubbed (botocore's Stubber) on a client only that test's source uses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from bridges.sources import DynamoDBStreamSource, IteratorExpired, KinesisSource, Shard
from dmd_tasks.infra import aws
from dmd_tasks.ops.provision import ensure_kinesis_stream


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def kinesis_stream(settings, stack) -> Iterator[str]:
    name = unique("test-src")
    ensure_kinesis_stream(settings, name)
    yield name
    aws.client("kinesis", settings).delete_stream(StreamName=name)


@pytest.fixture()
def streamed_table(settings, stack) -> Iterator[str]:
    """A table of the test's own with a NEW_AND_OLD_IMAGES stream."""
    ddb = aws.client("dynamodb", settings)
    name = unique("test-src")
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    yield name
    ddb.delete_table(TableName=name)


def put_kinesis(settings, stream: str, payloads: list[bytes]) -> list[str]:
    kinesis = aws.client("kinesis", settings)
    return [kinesis.put_record(StreamName=stream, Data=p, PartitionKey="k")["SequenceNumber"] for p in payloads]


def put_items(settings, table: str, values: list[str]) -> None:
    ddb = aws.client("dynamodb", settings)
    for value in values:
        ddb.put_item(TableName=table, Item={"pk": {"S": value}, "v": {"S": value}})


# --- Kinesis ----------------------------------------------------------------------------------


def test_kinesis_source_names_the_stream_by_its_arn_and_lists_its_one_shard(settings, kinesis_stream) -> None:
    source = KinesisSource(settings, kinesis_stream)

    assert source.stream_id.startswith("arn:aws:kinesis:") and source.stream_id.endswith(f"/{kinesis_stream}")
    assert source.list_shards() == [Shard("shardId-000000000000", ())]


def test_kinesis_shards_carry_their_parents_after_a_split_and_a_merge(settings, kinesis_stream) -> None:
    # Given a stream whose shard was split in two, and the two halves merged again
    kinesis = aws.client("kinesis", settings)
    kinesis.split_shard(StreamName=kinesis_stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
    kinesis.merge_shards(
        StreamName=kinesis_stream, ShardToMerge="shardId-000000000001", AdjacentShardToMerge="shardId-000000000002"
    )

    # When the source lists the shards
    shards = {s.id: s.parents for s in KinesisSource(settings, kinesis_stream).list_shards()}

    # Then each child names its parent, and the merged shard both of them
    assert shards == {
        "shardId-000000000000": (),
        "shardId-000000000001": ("shardId-000000000000",),
        "shardId-000000000002": ("shardId-000000000000",),
        "shardId-000000000003": ("shardId-000000000001", "shardId-000000000002"),
    }


def test_kinesis_source_reads_from_trim_horizon_page_by_page(settings, kinesis_stream) -> None:
    # Given five records on the stream
    sequences = put_kinesis(settings, kinesis_stream, [f"r{i}".encode() for i in range(5)])
    source = KinesisSource(settings, kinesis_stream)

    # When it is read from the start, two records a page
    iterator = source.open_iterator("shardId-000000000000", None, "TRIM_HORIZON")
    first = source.read(iterator, 2)
    assert first.next_iterator is not None
    second = source.read(first.next_iterator, 2)
    assert second.next_iterator is not None
    third = source.read(second.next_iterator, 2)

    # Then the pages hold the records in order, with their sequence numbers and arrival times
    records = first.records + second.records + third.records
    assert [r["Data"] for r in records] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    assert [len(p.records) for p in (first, second, third)] == [2, 2, 1]
    assert [source.sequence_of(r) for r in records] == sequences
    arrived = source.arrival_of(records[0])
    assert isinstance(arrived, datetime) and abs(arrived.timestamp() - time.time()) < 300
    assert isinstance(first.behind_ms, int)


def test_kinesis_source_resumes_after_a_sequence_number(settings, kinesis_stream) -> None:
    sequences = put_kinesis(settings, kinesis_stream, [b"a", b"b", b"c", b"d"])
    source = KinesisSource(settings, kinesis_stream)

    # When the iterator is opened after the second record (a checkpoint), whatever the start position
    iterator = source.open_iterator("shardId-000000000000", sequences[1], "LATEST")

    # Then only the records after it are read
    assert [r["Data"] for r in source.read(iterator, 100).records] == [b"c", b"d"]


def test_kinesis_source_at_latest_reads_only_what_arrives_afterwards(settings, kinesis_stream) -> None:
    put_kinesis(settings, kinesis_stream, [b"old"])
    source = KinesisSource(settings, kinesis_stream)

    iterator = source.open_iterator("shardId-000000000000", None, "LATEST")
    put_kinesis(settings, kinesis_stream, [b"new"])

    assert [r["Data"] for r in source.read(iterator, 100).records] == [b"new"]


# --- DynamoDB Streams --------------------------------------------------------------------------


def test_dynamodb_stream_source_reads_the_tables_changes_page_by_page(settings, streamed_table) -> None:
    # Given three new items and one changed item in a table with a stream
    put_items(settings, streamed_table, ["a", "b", "c"])
    put_items(settings, streamed_table, ["a"])
    source = DynamoDBStreamSource(settings, streamed_table)

    # Then the source is the table's current stream, with one shard that has no parent
    arn = aws.client("dynamodb", settings).describe_table(TableName=streamed_table)["Table"]["LatestStreamArn"]
    assert source.stream_id == arn
    shards = source.list_shards()
    assert len(shards) == 1 and shards[0].parents == ()

    # When it is read from the start, three records a page
    first = source.read(source.open_iterator(shards[0].id, None, "TRIM_HORIZON"), 3)
    assert first.next_iterator is not None
    second = source.read(first.next_iterator, 3)

    # Then every change comes in order, with increasing sequence numbers and its creation time
    records = first.records + second.records
    assert [len(first.records), len(second.records)] == [3, 1]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records] == [
        ("INSERT", "a"),
        ("INSERT", "b"),
        ("INSERT", "c"),
        ("MODIFY", "a"),
    ]
    sequences = [int(source.sequence_of(r)) for r in records]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    assert isinstance(source.arrival_of(records[0]), datetime)
    assert first.behind_ms is None


def test_dynamodb_stream_source_resumes_after_a_sequence_number(settings, streamed_table) -> None:
    put_items(settings, streamed_table, ["a", "b", "c"])
    source = DynamoDBStreamSource(settings, streamed_table)
    shard = source.list_shards()[0].id
    records = source.read(source.open_iterator(shard, None, "TRIM_HORIZON"), 100).records

    # When the iterator is opened after the first record's sequence number (a checkpoint)
    iterator = source.open_iterator(shard, source.sequence_of(records[0]), "TRIM_HORIZON")

    # Then the records after it come, and nothing before
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in source.read(iterator, 100).records] == ["b", "c"]


def test_arrival_of_a_record_without_a_creation_time_is_none(settings, streamed_table) -> None:
    source = DynamoDBStreamSource(settings, streamed_table)

    assert source.arrival_of({"dynamodb": {"SequenceNumber": "1"}}) is None
    assert source.arrival_of({}) is None


def test_a_table_without_a_stream_is_refused_with_the_fix(settings, stack) -> None:
    ddb = aws.client("dynamodb", settings)
    name = unique("test-nostream")
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )
    try:
        with pytest.raises(RuntimeError, match=f"table {name} has no stream; run `dmd provision`"):
            DynamoDBStreamSource(settings, name)
    finally:
        ddb.delete_table(TableName=name)


# --- expired iterators (stubbed: moto has no such answer) ------------------------------------------


def own_settings(settings):
    """A copy of the settings: ``aws.client`` builds clients per settings object, so this test's are its own."""
    return settings.model_copy()


@pytest.mark.parametrize("code", ["ExpiredIteratorException", "TrimmedDataAccessException"])
def test_dynamodb_stream_iterator_too_old_raises_iterator_expired(settings, streamed_table, code: str) -> None:
    mine = own_settings(settings)
    source = DynamoDBStreamSource(mine, streamed_table)
    iterator = source.open_iterator(source.list_shards()[0].id, None, "TRIM_HORIZON")
    with Stubber(aws.client("dynamodbstreams", mine)) as stub:
        stub.add_client_error("get_records", service_error_code=code)

        with pytest.raises(IteratorExpired, match=code):
            source.read(iterator, 10)


def test_dynamodb_stream_other_errors_are_not_taken_for_expiry(settings, streamed_table) -> None:
    mine = own_settings(settings)
    source = DynamoDBStreamSource(mine, streamed_table)
    iterator = source.open_iterator(source.list_shards()[0].id, None, "TRIM_HORIZON")
    with Stubber(aws.client("dynamodbstreams", mine)) as stub:
        stub.add_client_error("get_records", service_error_code="ResourceNotFoundException")

        with pytest.raises(ClientError) as raised:
            source.read(iterator, 10)
    assert not isinstance(raised.value, IteratorExpired)
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"


@pytest.mark.parametrize(
    ("code", "expired"),
    [("ExpiredIteratorException", True), ("ProvisionedThroughputExceededException", False)],
)
def test_kinesis_only_an_expired_iterator_raises_iterator_expired(
    settings, kinesis_stream, code: str, expired: bool
) -> None:
    mine = own_settings(settings)
    source = KinesisSource(mine, kinesis_stream)
    iterator = source.open_iterator("shardId-000000000000", None, "TRIM_HORIZON")
    with Stubber(aws.client("kinesis", mine)) as stub:
        stub.add_client_error("get_records", service_error_code=code)

        raised: Any = IteratorExpired if expired else ClientError
        with pytest.raises(raised) as caught:
            source.read(iterator, 10)
    assert isinstance(caught.value, IteratorExpired) is expired
