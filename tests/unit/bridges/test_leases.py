"""Shard leases on the session's moto server: several bridge processes share one stream's shards.

Each test uses a consumer name of its own, so its leases are its alone. Clocks are the tests':
a lease expires when its observer has not seen its counter move for the failover time.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from bridges.lease_table import LeaseTable
from bridges.leases import LeaseCoordinator
from bridges.sources import Shard

FAILOVER = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def table(settings: Any, stack: Any) -> LeaseTable:
    leases = LeaseTable(settings, f"test-{uuid.uuid4().hex[:8]}", "stream-1")
    for n in range(4):
        leases.create(f"shard-{n}", ())
    return leases


def coordinator(table: LeaseTable, clock: Clock, name: str, max_leases: int = 1000) -> LeaseCoordinator:
    return LeaseCoordinator(table, failover_seconds=FAILOVER, max_leases=max_leases, worker_id=name, clock=clock)


def owners(table: LeaseTable) -> dict[str, str | None]:
    return {lease.shard: lease.owner for lease in table.list()}


def test_a_lone_process_takes_every_lease(table: LeaseTable) -> None:
    a = coordinator(table, Clock(), "a")
    a.tick()
    assert set(a.held()) == {f"shard-{n}" for n in range(4)}
    assert set(owners(table).values()) == {"a"}


def test_a_second_process_takes_one_lease_at_a_time_from_the_busiest_until_balanced(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    b.take()
    assert len(b.held()) == 1  # one at a time
    b.take()
    assert len(b.held()) == 2
    b.take()
    assert len(b.held()) == 2  # balanced: 2 and 2
    a.renew()  # a finds out, at its next renewal, which leases it lost
    assert len(a.held()) == 2 and not set(a.held()) & set(b.held())
    assert sorted(owners(table).values()) == ["a", "a", "b", "b"]  # type: ignore[type-var]


def test_a_dead_processs_leases_are_taken_after_the_failover_time_on_the_observers_clock(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    b.take()
    b.take()  # 2 and 2
    # a dies (it renews no more); b keeps renewing its own
    clock.now += FAILOVER - 1
    b.renew()
    b.take()
    assert len(b.held()) == 2  # not expired yet: b has its fair share
    clock.now += 1.5
    b.renew()
    b.take()
    assert len(b.held()) == 4
    assert set(owners(table).values()) == {"b"}


def test_a_renewing_owner_keeps_its_leases_however_long_it_runs(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    for _ in range(10):
        clock.now += FAILOVER / 3
        a.renew()
        b.take()
    assert len(a.held()) + len(b.held()) == 4
    assert len(b.held()) == 2  # balancing, not expiry: b took only its share


def test_a_process_that_lost_a_lease_cannot_move_its_checkpoint(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    assert a.checkpoint("shard-0", "100", False)
    b.take()  # b sees a's counters (and balances: one lease)
    clock.now += FAILOVER + 1  # a renews no more: it looks dead to b (paused, say)
    b.renew()
    b.take()
    assert "shard-0" in b.held()
    assert b.held()["shard-0"].sequence == "100"  # b goes on from a's checkpoint
    assert not a.checkpoint("shard-0", "150", False)  # a's stale write is refused
    assert "shard-0" not in a.held()
    assert {lease.shard: lease.sequence for lease in table.list()}["shard-0"] == "100"


def test_a_stopped_process_releases_its_leases_and_another_takes_them_at_once(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    b.take()
    b.take()
    a.stop()
    assert sorted(o or "" for o in owners(table).values()) == ["", "", "b", "b"]
    b.take()  # no failover wait: released leases are free
    assert len(b.held()) == 4


def test_max_leases_caps_what_one_process_takes(table: LeaseTable) -> None:
    a = coordinator(table, Clock(), "a", max_leases=3)
    a.tick()
    assert len(a.held()) == 3


def test_finished_shards_are_not_taken_or_counted(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    assert a.checkpoint("shard-0", "9", True)
    assert a.checkpoint("shard-1", "9", True)
    a.tick()
    b.take()
    assert len(b.held()) == 1  # two live shards between two processes
    assert {"shard-0", "shard-1"}.isdisjoint(b.held())


def test_a_lease_is_created_once_whoever_lists_the_shard_first(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.sync_shards([Shard("shard-9", ("shard-0",))])
    b.sync_shards([Shard("shard-9", ("shard-0",))])
    (lease,) = [lease for lease in table.list() if lease.shard == "shard-9"]
    # created by a (and taken by it at once), not again by b
    assert lease.parents == ("shard-0",) and lease.owner == "a" and lease.sequence is None
    assert "shard-9" not in b.held()


# --- readers sharing a real (moto) Kinesis stream of four shards ------------------------------------


def test_two_readers_split_four_shards_and_one_takes_all_when_the_other_stops(settings: Any, stack: Any) -> None:
    from bridges.checkpoints import CheckpointStore
    from bridges.reader import ShardReader
    from bridges.sources import KinesisSource
    from dmd_tasks.infra import aws

    stream = f"test-leases-{uuid.uuid4().hex[:8]}"
    kinesis = aws.client("kinesis", settings)
    kinesis.create_stream(StreamName=stream, ShardCount=4)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    consumer = f"bridge-test-{uuid.uuid4().hex[:6]}"
    clock = Clock()
    seen: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}

    def reader(name: str) -> ShardReader:
        source = KinesisSource(settings, stream)
        return ShardReader(
            source,
            CheckpointStore(settings, consumer),
            lambda records, shard: seen[name].extend((shard, r["Data"].decode()) for r in records),
            shard_refresh_seconds=0,
            name=consumer,
            leases=LeaseCoordinator(
                LeaseTable(settings, consumer, source.stream_id), failover_seconds=FAILOVER, worker_id=name, clock=clock
            ),
        )

    def put(first: int, count: int) -> set[str]:
        sent = set()
        for n in range(first, first + count):
            kinesis.put_record(StreamName=stream, Data=f"r{n}".encode(), PartitionKey=f"key-{n}")
            sent.add(f"r{n}")
        return sent

    a, b = reader("a"), reader("b")
    a.poll_once()  # lists the shards: their leases are created
    assert a.leases is not None and b.leases is not None
    for r in (a, b, b, b):
        assert r.leases is not None
        r.leases.take()
    a.leases.renew()  # a learns which leases b took
    held_a, held_b = set(a.leases.held()), set(b.leases.held())
    assert len(held_a) == len(held_b) == 2 and not held_a & held_b

    sent = put(0, 40)
    for _ in range(3):
        a.poll_once()
        b.poll_once()
    assert {d for _, d in seen["a"]} | {d for _, d in seen["b"]} == sent
    assert {s for s, _ in seen["a"]} <= held_a and {s for s, _ in seen["b"]} <= held_b  # each read only its own
    assert not {d for _, d in seen["a"]} & {d for _, d in seen["b"]}

    # a stops: its checkpoints are written and its leases released; b takes them at once and goes on
    a.flush_checkpoints()
    a.leases.stop()
    b.leases.take()
    assert set(b.leases.held()) == held_a | held_b
    more = put(40, 20)
    for _ in range(3):
        b.poll_once()
    assert {d for _, d in seen["b"]} >= more
    assert not {d for _, d in seen["b"]} & {d for _, d in seen["a"]}  # nothing of a's read again


def test_the_lease_of_a_finished_shard_trimmed_from_the_stream_is_deleted(table: LeaseTable) -> None:
    a = coordinator(table, Clock(), "a")
    a.tick()
    assert a.checkpoint("shard-0", "9", True)
    assert a.checkpoint("shard-1", "9", False)
    # the stream lists shards 1-3 only: shard 0 was trimmed (finished: deleted), shard 1 is live (kept)
    a.sync_shards([Shard(f"shard-{n}") for n in (2, 3)] + [Shard("shard-1")])
    assert sorted(lease.shard for lease in table.list()) == ["shard-1", "shard-2", "shard-3"]


def test_an_unfinished_lease_of_a_shard_gone_from_two_listings_is_finished(table: LeaseTable) -> None:
    clock = Clock()
    a = coordinator(table, clock, "a")
    a.tick()
    listing = [Shard(f"shard-{n}") for n in (1, 2, 3)]  # shard-0 trimmed before it was read to its end
    a.sync_shards(listing)
    assert not {lease.shard: lease.finished for lease in table.list()}["shard-0"]  # one listing: not yet
    a.sync_shards(listing)
    assert {lease.shard: lease.finished for lease in table.list()}["shard-0"]
    clock.now += FAILOVER / 3  # the next renewal
    a.tick()
    assert "shard-0" not in a.held()


def test_a_listing_without_an_open_shard_finishes_nothing(table: LeaseTable) -> None:
    # a live stream always has an open shard: a listing without one (a garbled or empty reply) is
    # no evidence that the shards it lacks were trimmed
    a = coordinator(table, Clock(), "a")
    a.tick()
    for _ in range(3):
        a.sync_shards([])
        a.sync_shards([Shard("shard-1", closed=True)])
    assert not any(lease.finished for lease in table.list())
    assert set(a.held()) == {f"shard-{n}" for n in range(4)}


def test_a_finished_lease_of_a_shard_the_stream_lists_open_is_reopened_at_its_checkpoint(table: LeaseTable) -> None:
    a = coordinator(table, Clock(), "a")
    a.tick()
    assert a.checkpoint("shard-0", "41", True)  # finished by mistake: the shard is open
    assert a.checkpoint("shard-1", "9", True)  # finished for real: the stream lists it closed
    a.sync_shards([Shard("shard-0"), Shard("shard-1", closed=True), Shard("shard-2"), Shard("shard-3")])
    leases = {lease.shard: lease for lease in table.list()}
    assert not leases["shard-0"].finished and leases["shard-0"].sequence == "41"
    assert leases["shard-1"].finished
    b = coordinator(table, Clock(), "b")
    b.tick()
    a.tick()
    assert "shard-0" in set(a.held()) | set(b.held())  # read again, from where it was


@pytest.mark.parametrize("phase", [0.0, 0.4, 0.9])
def test_a_dead_owner_is_replaced_within_one_and_a_half_failover_times_whatever_the_phase(
    table: LeaseTable, phase: float
) -> None:
    # both loops wake every failover/6 (as the thread does); a dies at some phase of b's cycle.
    # b first sees a's last counter at its next take (within failover/2 of a's last renewal), and
    # that take starts the failover count; takes come every failover/2, so the take failover later
    # finds it expired: at most failover/2 + failover after a's last renewal (+ one wake-up step).
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    step = FAILOVER / 6
    a.tick()
    clock.now += step * phase
    for _ in range(12):  # a and b share the shards, both alive
        clock.now += step
        a.tick()
        b.tick()
    assert len(a.held()) == 2 and len(b.held()) == 2
    died = clock.now
    while len(b.held()) < 4 and clock.now - died < 3 * FAILOVER:
        clock.now += step
        b.tick()
    assert len(b.held()) == 4
    assert clock.now - died <= 1.5 * FAILOVER + step


def test_the_loop_renews_every_third_and_takes_every_half_of_the_failover_time(table: LeaseTable) -> None:
    clock = Clock()
    a = coordinator(table, clock, "a")
    renewals: list[float] = []
    takes: list[float] = []
    a.renew = lambda: renewals.append(clock.now)  # type: ignore[method-assign]
    a.take = lambda: takes.append(clock.now)  # type: ignore[method-assign]
    for _ in range(13):
        a.tick()
        clock.now += FAILOVER / 6
    start = 1000.0
    assert renewals == pytest.approx([start + n * FAILOVER / 3 for n in range(7)])
    assert takes == pytest.approx([start + n * FAILOVER / 2 for n in range(5)])


def test_leases_are_renewed_in_one_request_and_a_taken_one_is_told_apart(table: LeaseTable) -> None:
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    counters = {lease.shard: lease.counter for lease in table.list()}
    calls: list[str] = []
    for name in ("transact_write_items", "update_item"):
        real = getattr(table._ddb, name)
        setattr(
            table._ddb,
            name,
            lambda *args, _real=real, _name=name, **kwargs: calls.append(_name) or _real(*args, **kwargs),  # type: ignore[func-returns-value]
        )
    a.renew()
    assert calls == ["transact_write_items"]  # four leases, one request
    assert {lease.shard: lease.counter for lease in table.list()} == {s: c + 1 for s, c in counters.items()}
    b.take()  # b takes one lease from a
    (taken,) = b.held()
    calls.clear()
    a.renew()  # cancelled for that lease alone: the other three are renewed without it
    assert set(a.held()) == {f"shard-{n}" for n in range(4)} - {taken}
    assert calls == ["transact_write_items", "transact_write_items"]
    a.renew()  # and they stay a's
    assert set(a.held()) == {f"shard-{n}" for n in range(4)} - {taken}
    assert sorted(owners(table).values()) == ["a", "a", "a", "b"]  # type: ignore[type-var]


def test_a_process_holding_every_lease_lists_rarely_until_it_loses_one(table: LeaseTable) -> None:
    # listing is how a process finds leases to take; one that holds them all has none to find
    # (a process that wants a share steals it, and the renewal that fails tells the holder)
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    listings: list[float] = []
    real_list = table.list
    table.list = lambda: listings.append(clock.now) or real_list()  # type: ignore[func-returns-value, method-assign]
    a.tick()
    assert len(a.held()) == 4
    listings.clear()
    for _ in range(36):  # 60 s of the loop's wake-ups
        clock.now += FAILOVER / 6
        a.tick()
    assert len(listings) == 2  # every 3 failover times (30 s), not every failover/2 (12 times)
    b.take()  # b steals one
    listings.clear()
    for _ in range(6):  # one failover time: a's renewal fails, then a lists at its next wake-up
        clock.now += FAILOVER / 6
        a.tick()
    assert len(a.held()) == 3 and listings
    first = listings[0]
    for _ in range(12):
        clock.now += FAILOVER / 6
        a.tick()
    assert [t - first for t in listings] == pytest.approx([n * FAILOVER / 2 for n in range(len(listings))])
    assert len(listings) >= 3


def test_a_lease_created_by_a_listing_is_taken_at_once_not_at_the_next_take(settings: Any, stack: Any) -> None:
    # Given a process on a stream no process has read yet (no lease at all)
    table = LeaseTable(settings, f"test-{uuid.uuid4().hex[:8]}", "stream-new")
    clock = Clock()
    a = coordinator(table, clock, "a")
    a.tick()
    assert a.held() == {}
    # When its reader lists the stream's shards (their leases created), with no time passing
    a.sync_shards([Shard("shard-0", ()), Shard("shard-1", ())])
    # Then it holds them already: its reading does not wait for the loop's next take
    assert set(a.held()) == {"shard-0", "shard-1"}


def test_a_dead_owners_lease_is_taken_at_the_first_wake_up_after_it_expires_not_the_next_take(
    table: LeaseTable,
) -> None:
    # Given a and b sharing the shards, both waking every step (b takes at wake-ups 1, 4, .., 13),
    # and a dying just after its renewal at wake-up 14
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    step = FAILOVER / 6
    a.tick()
    for _ in range(14):
        clock.now += step
        a.tick()
        b.tick()
    assert len(a.held()) == 2 and len(b.held()) == 2
    died = clock.now
    # When b lists the leases between its wake-ups (as its reader does after creating a lease),
    # seeing a's last counter there, and then wakes every step
    clock.now = died + step / 4
    b.take()
    seen_at = clock.now
    wake = 0
    while len(b.held()) < 4 and clock.now - died < 3 * FAILOVER:
        wake += 1
        clock.now = died + wake * step
        b.tick()
    # Then a's leases are b's at the first wake-up after the failover time since it saw them,
    # not at the take after that (every failover/2 from b's last: wake-up 22, a step later here)
    assert len(b.held()) == 4
    assert FAILOVER <= clock.now - seen_at < FAILOVER + step


def test_a_dead_owners_leases_are_taken_together_in_one_request(table: LeaseTable) -> None:
    # Given a and b sharing the four shards, and a dead
    clock = Clock()
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    a.tick()
    b.take()
    b.take()
    assert len(a.held()) == 4 and len(b.held()) == 2  # a finds out at its renewal; it never renews again
    calls: list[str] = []
    for name in ("transact_write_items", "update_item"):
        real = getattr(table._ddb, name)
        setattr(
            table._ddb,
            name,
            lambda *args, _real=real, _name=name, **kwargs: calls.append(_name) or _real(*args, **kwargs),  # type: ignore[func-returns-value]
        )

    # When b's take finds a's two leases expired
    clock.now += FAILOVER + 1
    b.renew()
    calls.clear()
    b.take()

    # Then both are b's, taken in one request
    assert len(b.held()) == 4 and set(owners(table).values()) == {"b"}
    assert calls == ["transact_write_items"]


def sharing(table: LeaseTable, clock: Clock) -> tuple[LeaseCoordinator, LeaseCoordinator, float]:
    """Processes a and b, both woken every step (failover/6) until they share the shards: (a, b, step)."""
    a, b = coordinator(table, clock, "a"), coordinator(table, clock, "b")
    step = FAILOVER / 6
    for _ in range(13):
        clock.now += step
        a.tick()
        b.tick()
    return a, b, step


def test_at_the_wake_up_a_dead_owners_leases_expire_the_take_is_the_first_request(table: LeaseTable) -> None:
    # Given a and b sharing the shards (both waking every step), and a dead
    clock = Clock()
    a, b, step = sharing(table, clock)
    assert len(a.held()) == 2 and len(b.held()) == 2
    requests: list[str] = []
    for name in ("list", "renew_many", "take_many"):
        real = getattr(table, name)
        setattr(
            table,
            name,
            lambda *args, _real=real, _name=name, **kwargs: requests.append(_name) or _real(*args, **kwargs),  # type: ignore[func-returns-value]
        )
    # When b wakes until it holds a's leases
    for _ in range(3 * 6):
        requests.clear()
        clock.now += step
        b.tick()
        if len(b.held()) == 4:
            break
    # Then at that wake-up the take came first, from the listing b already had: a dead process's
    # shards wait on one request, not on a renewal and a listing before it (seconds each under load)
    assert len(b.held()) == 4
    assert requests[0] == "take_many", requests


def test_a_take_from_an_out_of_date_listing_is_refused_and_the_table_listed_at_once(table: LeaseTable) -> None:
    # Given a and b sharing the shards, b's last listing showing a's leases unrenewed for the
    # failover time (a paused, not dead: it renews again before b's next take)
    clock = Clock()
    a, b, step = sharing(table, clock)
    b.take()
    clock.now += FAILOVER + step
    a.renew()
    listings: list[float] = []
    real_list = table.list
    table.list = lambda: listings.append(clock.now) or real_list()  # type: ignore[func-returns-value, method-assign]

    # When b wakes up and takes what its listing says expired
    b.tick()

    # Then its conditional takes were refused (a renewed them), it listed the table at that wake-up,
    # and a keeps its leases
    assert listings == [clock.now]
    assert len(a.held()) == 2 and len(b.held()) == 2
    assert sorted(owners(table).values()) == ["a", "a", "b", "b"]  # type: ignore[type-var]
    a.renew()
    assert len(a.held()) == 2
