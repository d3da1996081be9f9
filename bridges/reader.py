"""Reading a sharded stream (``sources``) with durable per-shard checkpoints.

``ShardReader`` reads every shard, a child only once its parents are finished
(so changes of one item stay in order across a shard split), hands each page to a
handler, and checkpoints the page's last sequence number only after the handler
returned: a crash re-reads at most one page per shard (at-least-once, never a gap).

Shards are isolated: one whose read or handling fails is retried on its own, with backoff,
from the same position (its checkpoint once the iterator has expired), while the others go on.
With leases (``bridges.leases``) a process reads only the shards it holds. A shard with no checkpoint starts at the
configured position, unless it is the child of a shard this bridge has read (a split) or
appeared after the bridge started: those start at ``TRIM_HORIZON``, so no record is skipped.
A checkpoint older than the stream's retention is reopened at ``TRIM_HORIZON`` with an error
and ``dmd_bridge_shard_events_total{event="checkpoint-trimmed"}``: records lost upstream are
counted, never hidden.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from bridges.checkpoints import Checkpoint, Checkpoints, CheckpointStore
from bridges.lease_table import LeaseTable
from bridges.leases import LeaseCoordinator
from bridges.sources import CheckpointTrimmed, EndNotConfirmed, IteratorExpired, Shard, ShardGone, ShardSource
from dmd_tasks.infra.metrics import BRIDGE_LAG, BRIDGE_SHARD_EVENTS
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.wake import Doorbell

log = logging.getLogger(__name__)

#: The longest a failing shard waits before it is read again.
MAX_SHARD_BACKOFF_SECONDS = 30.0


Handler = Callable[[Sequence[dict[str, Any]], str], None]


class ShardReader:
    """Reads every shard of a source into a handler, checkpointing after each handled page."""

    @classmethod
    def from_settings(
        cls, settings: Settings, name: str, source: ShardSource, handler: Handler, doorbell: Doorbell | None = None
    ) -> ShardReader:
        """A bridge's reader, with its checkpoints under the bridge's name and the bridge settings
        (``doorbell``: rung by whatever writes the stream, see ``_quiet``)."""
        return cls(
            source,
            CheckpointStore(settings, name),
            handler,
            records_per_read=settings.bridge_records_per_read,
            idle_sleep_seconds=settings.bridge_idle_sleep_seconds,
            idle_max_sleep_seconds=settings.bridge_idle_max_sleep_seconds,
            busy_sleep_seconds=settings.bridge_busy_sleep_seconds,
            shard_refresh_seconds=settings.bridge_shard_refresh_seconds,
            start_position=settings.bridge_start_position,
            name=name,
            checkpoint_interval_seconds=settings.bridge_checkpoint_interval_seconds,
            doorbell=doorbell,
            doorbell_max_sleep_seconds=settings.bridge_doorbell_max_sleep_seconds,
            doorbell_check_seconds=settings.bridge_doorbell_check_seconds,
            leases=LeaseCoordinator(
                LeaseTable(settings, name, source.stream_id),
                failover_seconds=settings.bridge_lease_failover_seconds,
                max_leases=settings.bridge_max_leases,
                bridge=name,
            ),
        )

    def __init__(
        self,
        source: ShardSource,
        checkpoints: Checkpoints,
        handler: Handler,
        *,
        records_per_read: int = 1000,
        idle_sleep_seconds: float = 0.5,
        idle_max_sleep_seconds: float = 0.5,
        busy_sleep_seconds: float = 0.0,
        shard_refresh_seconds: float = 30.0,
        start_position: str = "TRIM_HORIZON",
        name: str = "bridge",
        checkpoint_interval_seconds: float = 0.0,
        doorbell: Doorbell | None = None,
        doorbell_max_sleep_seconds: float = 60.0,
        doorbell_check_seconds: float = 0.5,
        leases: LeaseCoordinator | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self._checkpoints = checkpoints
        self._handler = handler
        self._limit = records_per_read
        self._idle = idle_sleep_seconds
        self._idle_max = idle_max_sleep_seconds
        self._busy = busy_sleep_seconds
        #: the last poll read a full page from some shard (a backlog): read again at once
        self._backlog = False
        self._refresh_every = shard_refresh_seconds
        self._start_position = start_position
        #: With leases, this process reads only the shards it holds and checkpoints through them
        #: (conditional on still holding); without, it reads every shard (one process per stream).
        self.leases = leases
        self._state: dict[str, Checkpoint] = {} if leases is not None else checkpoints.load(source.stream_id)
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
        #: shards known at the first listing (None until then): only those start at start_position
        self._first_listing: set[str] | None = None
        #: a failing shard's current backoff and when it may be read again (monotonic)
        self._backoff: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._doorbell = doorbell
        self._doorbell_max = doorbell_max_sleep_seconds
        self._doorbell_check = doorbell_check_seconds
        #: Redis did not answer the doorbell: not asked again before this (monotonic)
        self._doorbell_retry_at = -math.inf

    def _known(self, shard_id: str) -> Checkpoint:
        """A shard's progress as far as this process knows: its own, or (with leases) the lease table's."""
        if shard_id in self._state:
            return self._state[shard_id]
        if self.leases is not None and shard_id in self.leases.listing:
            lease = self.leases.listing[shard_id]
            return Checkpoint(lease.sequence, lease.finished)
        return Checkpoint()

    def ready_shards(self) -> list[Shard]:
        """Unfinished shards (with leases: held) whose parents are finished (or gone from the stream,
        i.e. trimmed)."""
        present = {s.id for s in self._shards}
        ready = []
        for shard in self._shards:
            if self.leases is not None and shard.id not in self._state:
                continue  # not held
            if self._known(shard.id).finished:
                continue
            if all(p not in present or self._known(p).finished for p in shard.parents):
                ready.append(shard)
        return ready

    def _follow_leases(self) -> None:
        """Take up the shards newly held (from the checkpoint the lease carries) and drop those lost."""
        if self.leases is None:
            return
        held = self.leases.held()
        for shard_id in [s for s in self._state if s not in held]:
            self._state.pop(shard_id, None)
            self._iterators.pop(shard_id, None)
            self._unsaved.discard(shard_id)
            log.info("shard %s: no longer held; left to its new owner", shard_id)
        for shard_id, lease in held.items():
            state = self._state.get(shard_id)
            if state is None or (state.finished and not lease.finished):  # newly held, or reopened
                self._state[shard_id] = Checkpoint(lease.sequence, lease.finished)
                self._iterators.pop(shard_id, None)

    def poll_once(self) -> int:
        """Read one page from every ready shard; returns the number of records handled."""
        now = time.monotonic()
        if not self._shards or now - self._refreshed_at >= self._refresh_every:
            self._shards = self.source.list_shards()
            self._refreshed_at = now
            if self._first_listing is None:
                self._first_listing = {s.id for s in self._shards}
            if self.leases is not None:
                self.leases.sync_shards(self._shards)
        self._follow_leases()
        handled = 0
        self._backlog = False
        for shard in self.ready_shards():
            if self._retry_at.get(shard.id, 0.0) > now:
                continue
            try:
                handled += self._read_shard(shard)
            except Exception:
                self._shard_failed(shard.id, now)
            else:
                self._backoff.pop(shard.id, None)
                self._retry_at.pop(shard.id, None)
        return handled

    def _shard_failed(self, shard_id: str, now: float) -> None:
        """One shard's read or handling failed: it alone waits (doubling backoff) and reads the same
        page again (from its checkpoint once the iterator has expired); the other shards go on."""
        backoff = min(self._backoff.get(shard_id, self._idle / 2) * 2, MAX_SHARD_BACKOFF_SECONDS)
        self._backoff[shard_id] = backoff
        self._retry_at[shard_id] = now + backoff
        BRIDGE_SHARD_EVENTS.labels(self.name, "read-error").inc()
        log.exception("shard %s: read failed; again in %.1fs from its checkpoint", shard_id, backoff)

    def start_position_of(self, shard: Shard) -> str:
        """Where a shard without a checkpoint starts: the configured position for the shards the
        bridge found at its start, TRIM_HORIZON for a split's child of a shard it has read and for
        any shard that appeared later (its first records must not be skipped)."""
        if any(self._known(p).sequence for p in shard.parents):
            return "TRIM_HORIZON"
        if self._first_listing is not None and shard.id not in self._first_listing:
            return "TRIM_HORIZON"
        return self._start_position

    def _open(self, shard: Shard, checkpoint: Checkpoint) -> str | None:
        """An iterator after the checkpoint (or at the start position); None when the shard is gone."""
        start = self.start_position_of(shard)
        try:
            iterator = self.source.open_iterator(shard.id, checkpoint.sequence, start)
        except CheckpointTrimmed:
            BRIDGE_SHARD_EVENTS.labels(self.name, "checkpoint-trimmed").inc()
            log.error(
                "shard %s: checkpoint %s is older than the stream's retention: reading from TRIM_HORIZON; "
                "the records between were lost upstream",
                shard.id,
                checkpoint.sequence,
            )
            return self.source.open_iterator(shard.id, None, "TRIM_HORIZON")
        except ShardGone:
            self._confirm_end(shard.id, "not found")
            BRIDGE_SHARD_EVENTS.labels(self.name, "shard-gone").inc()
            log.error("shard %s is no longer in the stream (trimmed): marked finished", shard.id)
            return None
        if checkpoint.sequence:
            log.info("shard %s: resuming after checkpoint %s", shard.id, checkpoint.sequence)
        else:
            log.info("shard %s: no checkpoint, starting at %s", shard.id, start)
        return iterator

    def _confirm_end(self, shard_id: str, why: str) -> None:
        """Raise EndNotConfirmed unless a fresh listing shows the shard closed or gone: a shard is
        finished on the stream's word only (a lease finished by mistake stops its shard for good)."""
        self._shards = self.source.list_shards()
        self._refreshed_at = time.monotonic()
        listed = next((s for s in self._shards if s.id == shard_id), None)
        if listed is not None and not listed.closed:
            BRIDGE_SHARD_EVENTS.labels(self.name, "end-not-confirmed").inc()
            raise EndNotConfirmed(f"shard {shard_id}: {why}, but the stream lists it open")

    def _read_shard(self, shard: Shard) -> int:
        checkpoint = self._state.setdefault(shard.id, Checkpoint())
        iterator = self._iterators.get(shard.id)
        if iterator is None:
            iterator = self._open(shard, checkpoint)
            if iterator is None:
                checkpoint.finished = True
                self._save(shard.id)
                return 0
            # kept until a page is handled: a read or a page that fails is tried again from the same
            # position (reopening at LATEST, before any checkpoint, would skip what came meanwhile)
            self._iterators[shard.id] = iterator
        try:
            page = self.source.read(iterator, self._limit)
        except IteratorExpired:
            BRIDGE_SHARD_EVENTS.labels(self.name, "iterator-expired").inc()
            log.warning("shard %s: iterator expired; reopening from checkpoint", shard.id)
            self._iterators.pop(shard.id, None)
            return 0
        if page.records:
            # Should the handler raise, nothing is checkpointed and the iterator that read this page
            # stays: the same page is read again (after the shard's backoff).
            self._handler(page.records, shard.id)
            checkpoint.sequence = self.source.sequence_of(page.records[-1])
            arrived = self.source.arrival_of(page.records[-1])
            if isinstance(arrived, datetime):
                BRIDGE_LAG.labels(self.name).set(max(0.0, time.time() - arrived.timestamp()))
        if len(page.records) >= self._limit:
            self._backlog = True
        if page.next_iterator is None:
            try:
                self._confirm_end(shard.id, "a page without a next iterator")
            except EndNotConfirmed:
                self._iterators.pop(shard.id, None)  # reopened from the checkpoint after the backoff
                if page.records:  # handled: their progress is kept
                    self._save(shard.id)
                raise
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
        checkpoint = self._state[shard_id]
        if self.leases is None:
            self._checkpoints.save(self.source.stream_id, shard_id, checkpoint)
        elif not self.leases.checkpoint(shard_id, checkpoint.sequence, checkpoint.finished):
            # the lease went to another process: it reads on from the last checkpoint it finds
            self._state.pop(shard_id, None)
            self._iterators.pop(shard_id, None)
        self._saved_at[shard_id] = time.monotonic()
        self._unsaved.discard(shard_id)

    def flush_checkpoints(self) -> None:
        """Write every checkpoint not yet written (the reader is stopping)."""
        for shard_id in sorted(self._unsaved):
            if shard_id in self._state:
                self._save(shard_id)
        self._unsaved.clear()

    def run(self) -> None:
        """Poll until ``stop_event`` is set; back off on errors, never skip a record. With leases:
        renew and take them meanwhile, and release them when stopping."""
        if self.leases is not None:
            self.leases.start()
        try:
            self._poll_until_stopped()
        finally:
            if self.leases is not None:
                self.leases.stop()

    def _poll_until_stopped(self) -> None:
        backoff = self._idle
        quiet = self._idle  # the wait after a poll that read nothing: doubles while nothing comes
        while not self.stop_event.is_set():
            rung = self._rung()  # before the poll: a ring after this is not missed
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
            if handled:
                quiet = self._idle
                if self._busy > 0 and not self._backlog:
                    # records are trickling in: let them gather into bigger pages (fewer reads and
                    # tasks; Kinesis and DynamoDB Streams allow 5 reads a second a shard)
                    self.stop_event.wait(self._busy)
            elif self._quiet(quiet, rung):
                quiet = self._idle  # rung: records are on their way, read at the busy pace again
            else:
                longest = self._doorbell_max if rung is not None else self._idle_max
                quiet = min(quiet * 2, max(self._idle, longest))
        self.flush_checkpoints()

    def _rung(self) -> str | None:
        """The doorbell's count, or None without one (no doorbell, or Redis not answering: then
        not asked again for ``idle_max_sleep_seconds``, and the plain idle backoff holds)."""
        if self._doorbell is None or time.monotonic() < self._doorbell_retry_at:
            return None
        value = self._doorbell.read()
        if value is None:
            self._doorbell_retry_at = time.monotonic() + self._idle_max
        return value

    def _quiet(self, seconds: float, rung: str | None) -> bool:
        """Wait ``seconds`` after a poll that read nothing; True when the doorbell rang meanwhile
        (it is looked at every ``doorbell_check_seconds``: a Redis GET, not a read of the stream)."""
        if rung is None:
            self.stop_event.wait(seconds)
            return False
        end = time.monotonic() + seconds
        while not self.stop_event.wait(max(0.0, min(self._doorbell_check, end - time.monotonic()))):
            if time.monotonic() >= end:
                return False
            if self._rung() != rung:
                return True
        return False
