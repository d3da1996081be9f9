"""The two kinds of sharded stream a bridge reads, behind one interface: DynamoDB Streams and Kinesis.

Both have the same shape: shards with parents, iterators, GetRecords pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError

from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings


@dataclass(frozen=True)
class Shard:
    id: str
    parents: tuple[str, ...] = ()
    #: the stream lists the shard with an ending sequence number: split, merged or rolled over
    closed: bool = False


def _closed(shard: dict[str, Any]) -> bool:
    return "EndingSequenceNumber" in (shard.get("SequenceNumberRange") or {})


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    next_iterator: str | None  # None: the shard is closed and fully read
    behind_ms: int | None = None


class ShardSource(Protocol):
    """One stream, DynamoDB Streams or Kinesis."""

    @property
    def stream_id(self) -> str: ...

    def list_shards(self) -> list[Shard]: ...

    def open_iterator(self, shard_id: str, after_sequence: str | None, start_position: str) -> str: ...

    def read(self, iterator: str, limit: int) -> Page: ...

    def sequence_of(self, record: dict[str, Any]) -> str: ...

    def arrival_of(self, record: dict[str, Any]) -> datetime | None: ...


class IteratorExpired(Exception):
    """The shard iterator is too old; open a new one from the checkpoint."""


class CheckpointTrimmed(Exception):
    """The checkpoint is older than the stream's retention: the records after it are gone."""


class ShardGone(Exception):
    """The shard is no longer in the stream (trimmed whole)."""


class EndNotConfirmed(Exception):
    """A reply said a shard ended (no next iterator, or not found) while the stream still lists it
    open: nothing is finished on its word; the shard is read again from its checkpoint."""


def _open_error(exc: ClientError) -> Exception:
    code = exc.response.get("Error", {}).get("Code")
    if code == "TrimmedDataAccessException":
        return CheckpointTrimmed(code)
    if code == "ResourceNotFoundException":
        return ShardGone(code)
    return exc


class DynamoDBStreamSource:
    """The DynamoDB Stream of a table (its current stream ARN)."""

    def __init__(self, settings: Settings, table_name: str) -> None:
        self._ddb = aws.client("dynamodb", settings)
        self._streams = aws.client("dynamodbstreams", settings)
        table = self._ddb.describe_table(TableName=table_name)["Table"]
        arn = table.get("LatestStreamArn")
        if not arn:
            raise RuntimeError(f"table {table_name} has no stream; run `dmd provision`")
        self._arn: str = arn

    @property
    def stream_id(self) -> str:
        return self._arn

    def list_shards(self) -> list[Shard]:
        shards: list[Shard] = []
        kwargs: dict[str, Any] = {"StreamArn": self._arn}
        while True:
            description = self._streams.describe_stream(**kwargs)["StreamDescription"]
            for shard in description.get("Shards", []):
                parent = shard.get("ParentShardId")
                shards.append(Shard(shard["ShardId"], (parent,) if parent else (), _closed(shard)))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            kwargs["ExclusiveStartShardId"] = last

    def open_iterator(self, shard_id: str, after_sequence: str | None, start_position: str) -> str:
        kwargs: dict[str, Any] = {"StreamArn": self._arn, "ShardId": shard_id}
        if after_sequence:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after_sequence)
        else:
            kwargs["ShardIteratorType"] = start_position
        try:
            return self._streams.get_shard_iterator(**kwargs)["ShardIterator"]
        except ClientError as exc:
            raise _open_error(exc) from exc

    def read(self, iterator: str, limit: int) -> Page:
        try:
            response = self._streams.get_records(ShardIterator=iterator, Limit=min(limit, 1000))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("ExpiredIteratorException", "TrimmedDataAccessException"):
                raise IteratorExpired(exc.response["Error"]["Code"]) from exc
            raise
        return Page(response.get("Records", []), response.get("NextShardIterator"))

    def sequence_of(self, record: dict[str, Any]) -> str:
        return str(record["dynamodb"]["SequenceNumber"])

    def arrival_of(self, record: dict[str, Any]) -> datetime | None:
        return record.get("dynamodb", {}).get("ApproximateCreationDateTime")


class KinesisSource:
    """A Kinesis data stream."""

    def __init__(self, settings: Settings, stream_name: str) -> None:
        self._kinesis = aws.client("kinesis", settings)
        self._name = stream_name
        summary = self._kinesis.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]
        self._arn: str = summary["StreamARN"]

    @property
    def stream_id(self) -> str:
        return self._arn

    def list_shards(self) -> list[Shard]:
        shards: list[Shard] = []
        kwargs: dict[str, Any] = {"StreamName": self._name}
        while True:
            response = self._kinesis.list_shards(**kwargs)
            for shard in response.get("Shards", []):
                parents = tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)
                shards.append(Shard(shard["ShardId"], parents, _closed(shard)))
            token = response.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}

    def open_iterator(self, shard_id: str, after_sequence: str | None, start_position: str) -> str:
        kwargs: dict[str, Any] = {"StreamName": self._name, "ShardId": shard_id}
        if after_sequence:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after_sequence)
        else:
            kwargs["ShardIteratorType"] = start_position
        try:
            return self._kinesis.get_shard_iterator(**kwargs)["ShardIterator"]
        except ClientError as exc:
            raise _open_error(exc) from exc

    def read(self, iterator: str, limit: int) -> Page:
        try:
            response = self._kinesis.get_records(ShardIterator=iterator, Limit=min(limit, 10_000))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ExpiredIteratorException":
                raise IteratorExpired("ExpiredIteratorException") from exc
            raise
        return Page(response.get("Records", []), response.get("NextShardIterator"), response.get("MillisBehindLatest"))

    def sequence_of(self, record: dict[str, Any]) -> str:
        return str(record["SequenceNumber"])

    def arrival_of(self, record: dict[str, Any]) -> datetime | None:
        return record.get("ApproximateArrivalTimestamp")
