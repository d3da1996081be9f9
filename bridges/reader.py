"""Reading a sharded stream (``sources``) with durable per-shard checkpoints.

``ShardReader`` reads every shard, a child only once its parents are finished
(so changes of one item stay in order across a shard split), hands each page to a
handler, and checkpoints the page's last sequence number only after the handler
returned: a crash re-reads at most one page per shard (at-least-once, never a gap).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridges.sources import IteratorExpired, Shard, ShardSource
from dmd_tasks.infra import aws
from dmd_tasks.infra.metrics import BRIDGE_LAG
from dmd_tasks.infra.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    sequence: str | None = None
    finished: bool = False


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


Handler = Callable[[Sequence[dict[str, Any]], str], None]


class ShardReader:
    """Reads every shard of a source into a handler, checkpointing after each handled page."""

    @classmethod
    def from_settings(cls, settings: Settings, name: str, source: ShardSource, handler: Handler) -> ShardReader:
        """A bridge's reader, with its checkpoints under the bridge's name and the bridge settings."""
        return cls(
            source,
            CheckpointStore(settings, name),
            handler,
            records_per_read=settings.bridge_records_per_read,
            idle_sleep_seconds=settings.bridge_idle_sleep_seconds,
            shard_refresh_seconds=settings.bridge_shard_refresh_seconds,
            start_position=settings.bridge_start_position,
            name=name,
            checkpoint_interval_seconds=settings.bridge_checkpoint_interval_seconds,
        )

    def __init__(
        self,
        source: ShardSource,
        checkpoints: CheckpointStore,
        handler: Handler,
        *,
        records_per_read: int = 1000,
        idle_sleep_seconds: float = 0.5,
        shard_refresh_seconds: float = 30.0,
        start_position: str = "TRIM_HORIZON",
        name: str = "bridge",
        checkpoint_interval_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.source = source
        self._checkpoints = checkpoints
        self._handler = handler
        self._limit = records_per_read
        self._idle = idle_sleep_seconds
        self._refresh_every = shard_refresh_seconds
        self._start_position = start_position
        self._state: dict[str, Checkpoint] = checkpoints.load(source.stream_id)
        self._iterators: dict[str, str] = {}
        self._shards: list[Shard] = []
        self._refreshed_at = 0.0
        self.stop_event = threading.Event()
        # A checkpoint is a write: at most one per shard per interval (a finished shard, and every
        # shard when the reader stops, at once). After a crash, the records of that interval are
        # read again; every task they become is idempotent.
        self._checkpoint_every = checkpoint_interval_seconds
        self._saved_at: dict[str, float] = {}
        self._unsaved: set[str] = set()

    def ready_shards(self) -> list[Shard]:
        """Unfinished shards whose parents are finished (or gone from the stream, i.e. trimmed)."""
        present = {s.id for s in self._shards}
        ready = []
        for shard in self._shards:
            if self._state.get(shard.id, Checkpoint()).finished:
                continue
            if all(p not in present or self._state.get(p, Checkpoint()).finished for p in shard.parents):
                ready.append(shard)
        return ready

    def poll_once(self) -> int:
        """Read one page from every ready shard; returns the number of records handled."""
        now = time.monotonic()
        if not self._shards or now - self._refreshed_at >= self._refresh_every:
            self._shards = self.source.list_shards()
            self._refreshed_at = now
        handled = 0
        for shard in self.ready_shards():
            handled += self._read_shard(shard)
        return handled

    def _read_shard(self, shard: Shard) -> int:
        checkpoint = self._state.setdefault(shard.id, Checkpoint())
        iterator = self._iterators.get(shard.id)
        if iterator is None:
            iterator = self.source.open_iterator(shard.id, checkpoint.sequence, self._start_position)
            if checkpoint.sequence:
                log.info("shard %s: resuming after checkpoint %s", shard.id, checkpoint.sequence)
            else:
                log.info("shard %s: no checkpoint, starting at %s", shard.id, self._start_position)
        try:
            page = self.source.read(iterator, self._limit)
        except IteratorExpired:
            log.warning("shard %s: iterator expired; reopening from checkpoint", shard.id)
            self._iterators.pop(shard.id, None)
            return 0
        if page.records:
            try:
                self._handler(page.records, shard.id)
            except Exception:
                # Nothing is checkpointed: the page is read again from the last checkpoint.
                self._iterators.pop(shard.id, None)
                raise
            checkpoint.sequence = self.source.sequence_of(page.records[-1])
            arrived = self.source.arrival_of(page.records[-1])
            if isinstance(arrived, datetime):
                BRIDGE_LAG.labels(self.name).set(max(0.0, time.time() - arrived.timestamp()))
        if page.next_iterator is None:
            checkpoint.finished = True
            self._iterators.pop(shard.id, None)
            log.info("shard %s finished", shard.id)
        else:
            self._iterators[shard.id] = page.next_iterator
        if page.records or checkpoint.finished:
            self._unsaved.add(shard.id)
            now = time.monotonic()
            if checkpoint.finished or now - self._saved_at.get(shard.id, -math.inf) >= self._checkpoint_every:
                self._save(shard.id)
        return len(page.records)

    def _save(self, shard_id: str) -> None:
        self._checkpoints.save(self.source.stream_id, shard_id, self._state[shard_id])
        self._saved_at[shard_id] = time.monotonic()
        self._unsaved.discard(shard_id)

    def flush_checkpoints(self) -> None:
        """Write every checkpoint not yet written (the reader is stopping)."""
        for shard_id in sorted(self._unsaved):
            self._save(shard_id)

    def run(self) -> None:
        """Poll until ``stop_event`` is set; back off on errors, never skip a record."""
        backoff = self._idle
        while not self.stop_event.is_set():
            try:
                handled = self.poll_once()
                if handled == 0 and self._unsaved:
                    self.flush_checkpoints()  # idle: the checkpoints held back are written now
                backoff = self._idle
            except Exception:
                log.exception("bridge poll failed; retrying from the last checkpoint in %.1fs", backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if handled == 0:
                self.stop_event.wait(self._idle)
        self.flush_checkpoints()
