"""ShardReader: parent before child, checkpoint after the handler, resume from the checkpoint.

The source here is an in-memory stream (the reader's contract with DynamoDB Streams and
Kinesis is the ShardSource protocol; the end-to-end tests run it against moto).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bridges.checkpoints import Checkpoint
from bridges.reader import ShardReader
from bridges.sources import CheckpointTrimmed, Page, Shard, ShardGone
from dmd_tasks.infra.metrics import BRIDGE_SHARD_EVENTS


class MemoryStream:
    stream_id = "mem"

    def __init__(self, shards: dict[str, tuple[tuple[str, ...], list[int], bool]]) -> None:
        # shard id -> (parents, sequence numbers, closed)
        self.shards = shards
        #: shard id -> the oldest sequence number the stream still holds (older ones were trimmed)
        self.trimmed_before: dict[str, int] = {}
        self.gone: set[str] = set()
        #: every iterator opened: (shard, after_sequence, start_position)
        self.opened: list[tuple[str, str | None, str]] = []

    def list_shards(self) -> list[Shard]:
        return [Shard(sid, parents, closed) for sid, (parents, _, closed) in self.shards.items()]

    def open_iterator(self, shard_id: str, after_sequence: str | None, start_position: str) -> str:
        self.opened.append((shard_id, after_sequence, start_position))
        if shard_id in self.gone:
            raise ShardGone("ResourceNotFoundException")
        seqs = self.shards[shard_id][1]
        oldest = self.trimmed_before.get(shard_id)
        if after_sequence is not None and oldest is not None and int(after_sequence) < oldest - 1:
            raise CheckpointTrimmed("TrimmedDataAccessException")
        if after_sequence is None:
            start = len(seqs) if start_position == "LATEST" else 0
        else:
            start = next((i for i, s in enumerate(seqs) if s > int(after_sequence)), len(seqs))
        return f"{shard_id}:{start}"

    def read(self, iterator: str, limit: int) -> Page:
        shard_id, start = iterator.rsplit(":", 1)
        _, seqs, closed = self.shards[shard_id]
        chunk = seqs[int(start) : int(start) + limit]
        end = int(start) + len(chunk)
        records = [{"seq": s} for s in chunk]
        return Page(records, None if closed and end == len(seqs) else f"{shard_id}:{end}")

    def sequence_of(self, record: dict[str, Any]) -> str:
        return str(record["seq"])

    def arrival_of(self, record: dict[str, Any]) -> None:
        return None


class MemoryCheckpoints:
    def __init__(self) -> None:
        self.saved: dict[str, Checkpoint] = {}

    def load(self, stream_id: str) -> dict[str, Checkpoint]:
        return {k: Checkpoint(v.sequence, v.finished) for k, v in self.saved.items()}

    def save(self, stream_id: str, shard_id: str, checkpoint: Checkpoint) -> None:
        self.saved[shard_id] = Checkpoint(checkpoint.sequence, checkpoint.finished)


def drain(reader: ShardReader, rounds: int = 20) -> None:
    for _ in range(rounds):
        reader.poll_once()


def test_children_are_read_only_after_their_parents_finish() -> None:
    stream = MemoryStream(
        {
            "child": (("parent",), [10, 11], False),
            "parent": ((), [1, 2, 3], True),
            "orphan": (("trimmed-away",), [20], False),  # parent no longer listed: read at once
        }
    )
    order: list[tuple[str, int]] = []
    reader = ShardReader(
        stream, MemoryCheckpoints(), lambda recs, sid: order.extend((sid, r["seq"]) for r in recs), records_per_read=2
    )
    drain(reader)
    parent_last = max(i for i, (sid, _) in enumerate(order) if sid == "parent")
    child_first = min(i for i, (sid, _) in enumerate(order) if sid == "child")
    assert parent_last < child_first
    assert sorted(s for _, s in order) == [1, 2, 3, 10, 11, 20]


def test_restart_resumes_after_the_checkpoint_and_a_failed_page_is_read_again() -> None:
    stream = MemoryStream({"s": ((), list(range(1, 8)), False)})
    checkpoints = MemoryCheckpoints()
    seen: list[int] = []
    calls = {"n": 0}

    def flaky(records: list[dict[str, Any]], shard_id: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("SQS unavailable")
        seen.extend(r["seq"] for r in records)

    reader = ShardReader(stream, checkpoints, flaky, records_per_read=3)  # type: ignore[arg-type]
    reader.poll_once()  # 1,2,3 handled and checkpointed
    assert reader.poll_once() == 0  # 4,5,6 fail: no checkpoint (the shard backs off; nothing raised)
    assert checkpoints.saved["s"].sequence == "3"

    # a new process (restart) starts from the durable checkpoint
    again = ShardReader(stream, checkpoints, lambda recs, sid: seen.extend(r["seq"] for r in recs), records_per_read=3)
    drain(again, 5)
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert checkpoints.saved["s"].sequence == "7"


def test_finished_shard_is_checkpointed_as_finished_and_not_read_again() -> None:
    stream = MemoryStream({"s": ((), [1], True)})
    checkpoints = MemoryCheckpoints()
    reads: list[int] = []
    reader = ShardReader(stream, checkpoints, lambda recs, sid: reads.extend(r["seq"] for r in recs))
    drain(reader, 3)
    assert checkpoints.saved["s"].finished
    assert reads == [1]
    assert reader.ready_shards() == []


def test_a_busy_reader_checkpoints_at_most_once_an_interval_and_everything_when_idle_or_stopping() -> None:
    stream = MemoryStream({"s": ((), list(range(1, 11)), False)})
    writes: list[str | None] = []

    class CountingCheckpoints(MemoryCheckpoints):
        def save(self, stream_id: str, shard_id: str, checkpoint: Checkpoint) -> None:
            writes.append(checkpoint.sequence)
            super().save(stream_id, shard_id, checkpoint)

    checkpoints = CountingCheckpoints()
    reader = ShardReader(
        stream, checkpoints, lambda recs, sid: None, records_per_read=2, checkpoint_interval_seconds=3600
    )
    for _ in range(5):  # five busy pages: the first is written, the rest wait for the interval
        reader.poll_once()
    assert writes == ["2"]
    reader.stop_event.set()
    reader.run()  # stopping writes what was held back
    assert writes == ["2", "10"] and checkpoints.saved["s"].sequence == "10"


def metric(bridge: str, event: str) -> float:
    return BRIDGE_SHARD_EVENTS.labels(bridge, event)._value.get()


def test_a_failing_shard_backs_off_alone_while_the_others_are_read_then_resumes_from_its_checkpoint() -> None:
    stream = MemoryStream({"bad": ((), [1, 2, 3], False), "good": ((), [10, 11, 12, 13], False)})
    seen: list[tuple[str, int]] = []
    broken = {"bad": True}

    def handler(records: list[dict[str, Any]], shard_id: str) -> None:
        if broken.get(shard_id):
            raise RecursionError("a page this bridge cannot handle")
        seen.extend((shard_id, r["seq"]) for r in records)

    before = metric("poison", "read-error")
    reader = ShardReader(
        stream,
        MemoryCheckpoints(),
        handler,  # type: ignore[arg-type]
        records_per_read=2,
        idle_sleep_seconds=0.02,
        name="poison",
    )
    drain(reader, 6)
    assert [s for sid, s in seen if sid == "good"] == [10, 11, 12, 13]  # never held up by "bad"
    assert not [s for sid, s in seen if sid == "bad"]
    assert 1 <= metric("poison", "read-error") - before < 6  # backing off: not retried every poll

    broken["bad"] = False
    for _ in range(50):
        reader.poll_once()
        if len([s for sid, s in seen if sid == "bad"]) == 3:
            break
        time.sleep(0.02)
    assert [s for sid, s in seen if sid == "bad"] == [1, 2, 3]  # from its checkpoint: nothing skipped


def test_a_split_after_the_start_is_read_from_trim_horizon_even_when_the_bridge_starts_at_latest() -> None:
    stream = MemoryStream({"parent": ((), [1, 2], False)})
    seen: list[int] = []
    reader = ShardReader(
        stream,
        MemoryCheckpoints(),
        lambda recs, sid: seen.extend(r["seq"] for r in recs),
        start_position="LATEST",
        shard_refresh_seconds=0,
    )
    drain(reader, 2)
    assert seen == []  # LATEST: what was there before the start is skipped
    stream.shards["parent"] = ((), [1, 2, 3], True)  # one more record, then the shard splits
    stream.shards["child-a"] = (("parent",), [10, 11], False)
    stream.shards["child-b"] = (("parent",), [20], False)
    drain(reader, 4)
    assert seen[0] == 3 and sorted(seen[1:]) == [10, 11, 20]  # the children's first records are not skipped
    assert {(sid, start) for sid, _, start in stream.opened if sid.startswith("child")} == {
        ("child-a", "TRIM_HORIZON"),
        ("child-b", "TRIM_HORIZON"),
    }


def test_a_checkpoint_older_than_the_retention_reopens_at_trim_horizon_and_is_counted() -> None:
    stream = MemoryStream({"s": ((), [7, 8, 9], False)})
    stream.trimmed_before["s"] = 7  # records 3..6 are gone
    checkpoints = MemoryCheckpoints()
    checkpoints.saved["s"] = Checkpoint("2")
    seen: list[int] = []
    before = metric("trim", "checkpoint-trimmed")
    reader = ShardReader(stream, checkpoints, lambda recs, sid: seen.extend(r["seq"] for r in recs), name="trim")
    drain(reader, 3)
    assert seen == [7, 8, 9]
    assert metric("trim", "checkpoint-trimmed") - before == 1
    assert ("s", None, "TRIM_HORIZON") in stream.opened


def test_a_shard_gone_from_the_stream_is_finished_and_its_children_are_read() -> None:
    stream = MemoryStream({"old": ((), [1], True), "new": (("old",), [5], False)})
    stream.gone.add("old")
    seen: list[int] = []
    checkpoints = MemoryCheckpoints()
    reader = ShardReader(stream, checkpoints, lambda recs, sid: seen.extend(r["seq"] for r in recs), name="gone")
    drain(reader, 3)
    assert checkpoints.saved["old"].finished
    assert seen == [5]


def test_a_failed_page_at_latest_before_any_checkpoint_is_read_again_not_skipped() -> None:
    stream = MemoryStream({"s": ((), [], False)})
    seen: list[int] = []
    failures = {"left": 1}

    def handler(records: list[dict[str, Any]], shard_id: str) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("SQS throttled")
        seen.extend(r["seq"] for r in records)

    reader = ShardReader(stream, MemoryCheckpoints(), handler, start_position="LATEST", idle_sleep_seconds=0.01)  # type: ignore[arg-type]
    reader.poll_once()  # opened at LATEST: nothing yet
    stream.shards["s"] = ((), [1, 2, 3], False)  # records arrive; the first page fails
    for _ in range(30):
        reader.poll_once()
        if seen:
            break
        time.sleep(0.01)
    assert seen == [1, 2, 3]
    assert [start for _, _, start in stream.opened] == ["LATEST"]  # the same iterator, not a new LATEST


class GarbledEnds(MemoryStream):
    """A stream whose replies sometimes say an open shard ended: a page without a next iterator,
    or the shard not found."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.garbled_pages = 0
        self.garbled_opens = 0

    def open_iterator(self, shard_id: str, after_sequence: str | None, start_position: str) -> str:
        if self.garbled_opens:
            self.garbled_opens -= 1
            self.opened.append((shard_id, after_sequence, start_position))
            raise ShardGone("ResourceNotFoundException")
        return super().open_iterator(shard_id, after_sequence, start_position)

    def read(self, iterator: str, limit: int) -> Page:
        page = super().read(iterator, limit)
        if self.garbled_pages:
            self.garbled_pages -= 1
            return Page(page.records, None)
        return page


def test_an_end_the_stream_does_not_confirm_finishes_nothing_and_the_shard_is_read_on() -> None:
    stream = GarbledEnds({"s": ((), [1, 2], False)})
    stream.garbled_pages = 1
    checkpoints = MemoryCheckpoints()
    seen: list[int] = []
    before = metric("garbled", "end-not-confirmed")
    reader = ShardReader(
        stream,
        checkpoints,
        lambda recs, sid: seen.extend(r["seq"] for r in recs),
        name="garbled",
        idle_sleep_seconds=0.01,
    )
    reader.poll_once()
    assert seen == [1, 2] and checkpoints.saved["s"] == Checkpoint("2", False)  # progress kept, not finished
    stream.garbled_opens = 1  # and the reopen says "not found"
    stream.shards["s"] = ((), [1, 2, 3], False)
    for _ in range(100):
        reader.poll_once()
        if 3 in seen:
            break
        time.sleep(0.01)
    assert seen == [1, 2, 3]
    assert not checkpoints.saved["s"].finished
    assert metric("garbled", "end-not-confirmed") - before == 2


def test_a_trickle_is_read_in_pages_after_the_busy_pause_and_a_backlog_at_once() -> None:
    # Given a shard that gets one record every 20 ms, read with a 0.2 s pause after a poll that
    # found records but no full page
    stream = MemoryStream({"s": ((), [], False)})
    pages: list[int] = []
    reader = ShardReader(
        stream,
        MemoryCheckpoints(),
        lambda recs, sid: pages.append(len(recs)),
        records_per_read=100,
        idle_sleep_seconds=0.01,
        idle_max_sleep_seconds=0.01,
        busy_sleep_seconds=0.2,
    )

    def trickle() -> None:
        for n in range(50):
            stream.shards["s"][1].append(n)
            time.sleep(0.02)
        time.sleep(0.3)
        reader.stop_event.set()

    began = time.monotonic()
    writer = threading.Thread(target=trickle)
    writer.start()
    reader._poll_until_stopped()
    writer.join()
    took = time.monotonic() - began
    # Then one read per pause gathered what came meanwhile: pages of several records, not one each
    assert sum(pages) == 50 and len(pages) <= took / 0.2 + 2 and len(pages) <= 25, (pages, took)

    # And a backlog (full pages) is read on without pausing
    stream.shards["s"][1].extend(range(100, 1100))
    before = sum(pages)

    def stop_when_read() -> None:
        deadline = time.monotonic() + 10
        while sum(pages) < before + 1000 and time.monotonic() < deadline:
            time.sleep(0.005)
        reader.stop_event.set()

    reader.stop_event.clear()
    stopper = threading.Thread(target=stop_when_read)
    began = time.monotonic()
    stopper.start()
    reader._poll_until_stopped()
    stopper.join()
    assert sum(pages) == before + 1000
    assert time.monotonic() - began < 1.0  # ten full pages; a pause after each would take 2 s


class CountingStream(MemoryStream):
    def __init__(self, shards: dict[str, tuple[tuple[str, ...], list[int], bool]]) -> None:
        super().__init__(shards)
        self.reads = 0

    def read(self, iterator: str, limit: int) -> Page:
        self.reads += 1
        return super().read(iterator, limit)


class FakeDoorbell:
    """``Doorbell``'s two calls: a count, or None while "Redis" does not answer."""

    def __init__(self) -> None:
        self.count, self.up, self.asked = 0, True, 0

    def ring(self) -> None:
        self.count += 1

    def read(self) -> str | None:
        self.asked += 1
        return str(self.count) if self.up else None


def idle_reads(doorbell: FakeDoorbell, seconds: float) -> int:
    """Reads of an idle one-shard stream in ``seconds``: plain backoff capped at 0.01 s, with a
    working doorbell capped at 0.32 s."""
    stream = CountingStream({"s": ((), [], False)})
    reader = ShardReader(
        stream,
        MemoryCheckpoints(),
        lambda recs, sid: None,
        idle_sleep_seconds=0.01,
        idle_max_sleep_seconds=0.01,
        doorbell=doorbell,  # type: ignore[arg-type]
        doorbell_max_sleep_seconds=0.32,
        doorbell_check_seconds=0.01,
    )
    threading.Timer(seconds, reader.stop_event.set).start()
    reader._poll_until_stopped()
    return stream.reads


def test_with_a_doorbell_an_idle_stream_is_read_rarely_and_without_redis_at_the_plain_pace() -> None:
    # Given an idle stream, read with a doorbell that nobody rings
    rung = idle_reads(FakeDoorbell(), 1.5)
    # Then the reads back off to the doorbell's longest wait (0.01 + … + 0.16, then every 0.32 s)
    assert rung <= 12, rung
    # And with the doorbell unanswered (Redis down) the plain backoff (0.01 s) holds: nothing is late
    down = FakeDoorbell()
    down.up = False
    plain = idle_reads(down, 1.5)
    assert plain >= 3 * rung, (plain, rung)
    # And an unanswered doorbell is not asked again before the plain longest wait has passed
    assert down.asked <= plain


def test_a_ring_ends_the_quiet_wait_at_once() -> None:
    doorbell = FakeDoorbell()
    reader = ShardReader(
        MemoryStream({"s": ((), [], False)}),
        MemoryCheckpoints(),
        lambda recs, sid: None,
        doorbell=doorbell,  # type: ignore[arg-type]
        doorbell_check_seconds=0.01,
    )
    # Given a reader in a 5 s quiet wait, having seen the doorbell at "0"
    threading.Timer(0.1, doorbell.ring).start()
    began = time.monotonic()
    # When a sender rings it 0.1 s later, then the wait ends then, not at 5 s
    assert reader._quiet(5.0, reader._rung() or "?") is True
    assert time.monotonic() - began < 2.0
    # And a wait nobody rings through lasts its length
    began = time.monotonic()
    assert reader._quiet(0.2, reader._rung() or "?") is False
    assert time.monotonic() - began >= 0.2
