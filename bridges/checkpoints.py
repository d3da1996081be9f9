"""A reader's progress per shard without leases: the checkpoint and where it is kept (a table of
its own, or a test's memory). With leases the checkpoint rides on the lease (``bridges.lease_table``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings


@dataclass
class Checkpoint:
    sequence: str | None = None
    finished: bool = False


class Checkpoints(Protocol):
    """Where a reader without leases keeps its shards' progress (``CheckpointStore``, or a test's)."""

    def load(self, stream_id: str) -> dict[str, Checkpoint]: ...

    def save(self, stream_id: str, shard_id: str, checkpoint: Checkpoint) -> None: ...


class CheckpointStore:
    """Per-shard checkpoints in their own DynamoDB table, keyed by consumer+stream and shard."""

    def __init__(self, settings: Settings, consumer: str) -> None:
        self._ddb = aws.client("dynamodb", settings)
        self._table = settings.checkpoint_table_name
        self._consumer = consumer

    def _stream_key(self, stream_id: str) -> str:
        return f"{self._consumer}|{stream_id}"

    def load(self, stream_id: str) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        paginator = self._ddb.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "stream"},
            ExpressionAttributeValues={":s": {"S": self._stream_key(stream_id)}},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                out[item["shard"]["S"]] = Checkpoint(
                    item.get("sequence", {}).get("S"), item.get("finished", {}).get("BOOL", False)
                )
        return out

    def save(self, stream_id: str, shard_id: str, checkpoint: Checkpoint) -> None:
        item: dict[str, Any] = {
            "stream": {"S": self._stream_key(stream_id)},
            "shard": {"S": shard_id},
            "finished": {"BOOL": checkpoint.finished},
            "updatedAt": {"N": str(int(time.time()))},
        }
        if checkpoint.sequence:
            item["sequence"] = {"S": checkpoint.sequence}
        self._ddb.put_item(TableName=self._table, Item=item)
