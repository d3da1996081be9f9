"""Shard leases: several processes of one bridge share a stream's shards (the Kinesis Client
Library's lease semantics, on the bridges' checkpoint table).

Each shard has one lease item (key: consumer|stream, shard) with its ``owner``, a ``counter``
and the ``sequence`` checkpoint (``finished`` once the shard is read to its end):

- **Renew.** The owner increments the counter of each lease it holds every
  ``failover / 3`` with a write conditional on owner and counter; a failed condition means
  another process took the lease: it is dropped at once.
- **Expire, on the observer's clock.** A process judges another's lease expired when it has not
  seen the counter change for ``failover`` seconds of its own monotonic clock (no clock sync
  across machines); a lease with no owner (released) is free at once.
- **Take.** Every ``failover / 2`` a process lists the leases and aims for its fair share
  (``ceil(unfinished / processes)``, at most ``max_leases``): free and expired leases first,
  then, when none is, one lease at a time from the busiest owner, when it holds at least two
  more than this process. A take is conditional on the counter seen; what one take chooses is
  taken in one request (``LeaseTable.take_many``). A lease the last listing showed released, or
  whose count reaches the failover time between two takes, is taken at the loop's next wake-up
  (every failover/6) instead of the next take: first thing at that wake-up, from that listing
  (conditional on the counter listed; a refused take has the table listed again at once).
- **Checkpoint** only while holding: conditional on owner (a process that lost a lease cannot
  move its checkpoint; its last pages are read again by the new owner, and every task they
  become is idempotent).
- **Release** on stop: owner removed, so another process takes the shards without waiting.

New shards get a lease (conditional create) from whichever process lists them first.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridges.lease_table import Lease, LeaseTable
from bridges.sources import Shard
from dmd_tasks.infra.metrics import BRIDGE_LEASE_EVENTS, BRIDGE_LEASES, BRIDGE_SHARD_EVENTS

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    counter: int
    owner: str | None
    since: float  # monotonic time the counter was first seen at this value


@dataclass
class LeaseCoordinator:
    """This process's leases on one stream: renewed and taken on a thread of its own."""

    table: LeaseTable
    failover_seconds: float = 10.0
    max_leases: int = 10_000
    #: who holds a lease: host, process id and a random part (a restarted process is a new owner)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    bridge: str = "bridge"
    clock: Any = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._taking = threading.Lock()
        self._held: dict[str, Lease] = {}
        self._seen: dict[str, _Seen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_take = -math.inf
        self._last_renew = -math.inf
        #: the last listing showed every unfinished lease held here: there is nothing to take
        #: (another process that wants a share takes it, and the renewal that fails says so)
        self._holds_all = False
        #: unfinished leases missing from the stream's listing: how many listings in a row
        self._absent: dict[str, int] = {}
        #: every lease of the stream as last listed (whoever holds it): the reader's view of
        #: other shards' progress (a parent finished by another process)
        self.listing: dict[str, Lease] = {}

    # --- what the reader asks -------------------------------------------------------------------

    def held(self) -> dict[str, Lease]:
        """The leases held now (a copy: shard → lease as taken, with the checkpoint it had)."""
        with self._lock:
            return dict(self._held)

    def checkpoint(self, shard: str, sequence: str | None, finished: bool) -> bool:
        """Write a checkpoint; False (and the lease dropped) when this process no longer holds it."""
        if self.table.checkpoint(shard, self.worker_id, sequence, finished):
            with self._lock:
                if shard in self._held:
                    self._held[shard].sequence, self._held[shard].finished = sequence, finished
            if shard in self.listing:
                self.listing[shard].sequence, self.listing[shard].finished = sequence, finished
            return True
        self._lost(shard, "its checkpoint was refused")
        return False

    def sync_shards(self, shards: Iterable[Shard]) -> None:
        """Bring the lease table in line with a listing of the stream.

        - A lease for each listed shard that has none yet.
        - A finished lease of a shard the listing shows open is reopened: only a closed or a gone
          shard is ever finished; a lease finished on a garbled reply would otherwise stop every
          bridge process on that shard for good.
        - The lease of a finished shard the stream no longer lists (trimmed: no child waits for
          it) is deleted, so the table does not grow with every shard a stream ever had (DynamoDB
          Streams rolls its shards every few hours).
        - An unfinished lease the stream no longer lists is finished (trimmed before it was read
          to its end) once two listings in a row miss it; a listing without one open shard says
          nothing of the kind (a live stream always has one) and counts for nothing.

        A lease created here is taken at once (a new stream, or a split's children, is read
        without waiting for the loop's next take).
        """
        listed = {shard.id: shard for shard in shards}
        trusted = any(not shard.closed for shard in listed.values())
        leases = self.table.list()
        known = {lease.shard for lease in leases}
        if any(not lease.finished and lease.owner != self.worker_id for lease in leases):
            self._holds_all = False
        created = False
        for shard in listed.values():
            if shard.id not in known and self.table.create(shard.id, shard.parents):
                self._holds_all, created = False, True
                log.info("%s: lease created for shard %s", self.bridge, shard.id)
        for lease in leases:
            self._sync_lease(lease, listed, trusted)
        if created:
            self.take()

    def _sync_lease(self, lease: Lease, listed: dict[str, Shard], trusted: bool) -> None:
        """One lease against the stream's listing: reopened, deleted, or finished as gone."""
        if lease.shard in listed:
            self._absent.pop(lease.shard, None)
            if lease.finished and not listed[lease.shard].closed and self.table.reopen(lease.shard):
                self._holds_all = False
                BRIDGE_SHARD_EVENTS.labels(self.bridge, "reopened").inc()
                log.error(
                    "%s: lease of shard %s was finished but the stream lists the shard open: reopened at "
                    "its checkpoint %s",
                    self.bridge,
                    lease.shard,
                    lease.sequence,
                )
            return
        if lease.finished:
            if self.table.delete_finished(lease.shard):
                self.listing.pop(lease.shard, None)
                log.info("%s: lease of shard %s deleted (finished, trimmed from the stream)", self.bridge, lease.shard)
            return
        if not trusted:
            return
        # Judged trimmed only when two listings in a row miss it (a lease another process
        # created a moment after this listing is not a trimmed shard).
        self._absent[lease.shard] = self._absent.get(lease.shard, 0) + 1
        if self._absent[lease.shard] >= 2 and self.table.finish_gone(lease.shard):
            self._absent.pop(lease.shard, None)
            BRIDGE_SHARD_EVENTS.labels(self.bridge, "shard-gone").inc()
            log.error(
                "%s: shard %s left the stream before it was read to its end (checkpoint %s): finished; "
                "the records after the checkpoint were lost upstream",
                self.bridge,
                lease.shard,
                lease.sequence,
            )

    # --- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.tick()
        except Exception:  # AWS unreachable at start, say: the thread tries again
            log.exception("%s: first lease round failed; again in %.1fs", self.bridge, self._step)
        self._thread = threading.Thread(target=self._run, name=f"{self.bridge}-leases", daemon=True)
        self._thread.start()

    @property
    def _step(self) -> float:
        """The loop wakes every failover/6: renewals fall due every second wake-up (failover/3) and
        takes every third (failover/2), as the module says. Waking only every failover/3 made the
        take interval two wake-ups (2/3 failover) and a dead owner's lease waited that much longer."""
        return self.failover_seconds / 6

    def _run(self) -> None:
        """Wake-ups on a fixed timetable (every step from the start, not a step after the last
        tick ended): under load a tick takes a while (a listing, a renewal), and sleeping a whole
        step after it stretched every take interval by that much, and a takeover by seconds."""
        wake = time.monotonic()
        while True:
            wake += self._step
            now = time.monotonic()
            if wake < now:  # a tick overran a step or more: the next wake-up is now, none saved up
                wake = now
            if self._stop.wait(wake - now):
                return
            try:
                self.tick()
            except Exception:
                log.exception("%s: lease renewal or taking failed; again in %.1fs", self.bridge, self._step)

    def tick(self) -> None:
        """Renew what is held every failover/3; every failover/2, take what is free, expired or due
        for balance. Called more often, it does only what has fallen due.

        A process that held every unfinished lease at its last listing has nothing to take: it
        lists again only every ``3 * failover`` (a safety net), or at once when a lease is lost,
        created or reopened. An idle single-process bridge then costs its renewals alone."""
        now = self.clock()
        # a wake-up comes at least one step after the last; the slack absorbs clock rounding
        slack = self._step / 10
        if self._one_expired(now):
            # a dead process's shards wait on this request alone: not on a renewal before it, nor a
            # listing (each take is conditional on the counter listed: a stale one is refused, and
            # the listing below, due at once then, sees why)
            with self._taking:
                self._take(fresh=False)
        if now - self._last_renew >= self.failover_seconds / 3 - slack:
            self._last_renew = now
            self.renew()
        take_every = self.failover_seconds * (3 if self._holds_all else 0.5)
        if now - self._last_take >= take_every - slack:
            self._last_take = now
            self.take()
        BRIDGE_LEASES.labels(self.bridge).set(len(self._held))

    def _one_expired(self, now: float) -> bool:
        """A lease of another process, as last listed, has gone unrenewed for the failover time by
        now, or was released: taken at this wake-up rather than at the next take. Takes come every
        failover/2 and the count starts at the take that first saw the counter, so a count ending
        just after a take waited a whole interval more (a dead owner's shards unread for failover/2
        longer)."""
        if len(self._held) >= self.max_leases:
            return False
        for lease in self.listing.values():
            if lease.finished or lease.owner == self.worker_id:
                continue
            if lease.owner is None:  # released: free at once
                return True
            seen = self._seen.get(lease.shard)
            if seen is not None and seen.owner == lease.owner and now - seen.since >= self.failover_seconds:
                return True
        return False

    def renew(self) -> None:
        """Renew every lease held, in one request (``LeaseTable.renew_many``)."""
        held = [lease for lease in self.held().values() if not lease.finished]
        for shard, renewed in self.table.renew_many(held, self.worker_id).items():
            if renewed:
                with self._lock:
                    if shard in self._held:
                        self._held[shard].counter += 1
            else:
                self._lost(shard, "another process took it")

    def _lost(self, shard: str, why: str) -> None:
        self._holds_all = False
        with self._lock:
            dropped = self._held.pop(shard, None)
        if dropped is not None:
            BRIDGE_LEASE_EVENTS.labels(self.bridge, "lost").inc()
            log.warning("%s: lease of shard %s lost (%s)", self.bridge, shard, why)

    def take(self) -> None:
        """Take what is free, expired or due for balance (the loop's every failover/2, and the
        reader's at once after it created a lease: one at a time)."""
        with self._taking:
            self._take()

    def _take(self, fresh: bool = True) -> None:
        """``fresh``: from a listing made now; else from the last one (``_one_expired``)."""
        now = self.clock()
        if fresh:
            leases = self.table.list()
            self.listing = {lease.shard: Lease(**vars(lease)) for lease in leases}
        else:
            leases = [Lease(**vars(lease)) for lease in self.listing.values()]
        live = [lease for lease in leases if not lease.finished]
        for lease in leases:
            seen = self._seen.get(lease.shard)
            if seen is None or seen.counter != lease.counter or seen.owner != lease.owner:
                self._seen[lease.shard] = _Seen(lease.counter, lease.owner, now)
        with self._lock:
            for lease in leases if fresh else ():  # what the table says now, not an older listing
                held = self._held.get(lease.shard)
                if held is not None and (lease.finished or lease.owner != self.worker_id):
                    self._held.pop(lease.shard)  # finished, or no longer ours
                elif held is not None and held.finished:
                    held.finished = False  # reopened (sync_shards): read on from its checkpoint
                elif held is None and lease.owner == self.worker_id and not lease.finished:
                    self._held[lease.shard] = Lease(**vars(lease))  # ours by the table (a lost reply)
        mine = [lease for lease in live if lease.owner == self.worker_id]

        def expired(lease: Lease) -> bool:
            return lease.owner is None or now - self._seen[lease.shard].since >= self.failover_seconds

        free = [lease for lease in live if lease.owner != self.worker_id and expired(lease)]
        owners: dict[str, int] = {self.worker_id: len(mine)}
        for lease in live:
            if lease.owner is not None and lease.owner != self.worker_id and not expired(lease):
                owners[lease.owner] = owners.get(lease.owner, 0) + 1
        target = min(self.max_leases, math.ceil(len(live) / len(owners))) if live else 0
        want = target - len(mine)
        if want <= 0:
            if fresh:
                self._holds_all = len(mine) == len(live) > 0
            return
        chosen = sorted(free, key=lambda lease: (lease.owner is not None, lease.shard))[:want]
        if not chosen and fresh:  # a steal for balance only on what the table says now
            busiest, count = max(
                ((o, n) for o, n in owners.items() if o != self.worker_id), key=lambda on: on[1], default=(None, 0)
            )
            if busiest is not None and count - len(mine) >= 2:
                chosen = [
                    sorted((lease for lease in live if lease.owner == busiest), key=lambda lease: lease.shard)[-1]
                ]
        was_expired = {lease.shard: expired(lease) for lease in chosen}
        taken = self.table.take_many(chosen, self.worker_id) if chosen else {}
        for lease in chosen:
            if taken.get(lease.shard):
                self._took(lease, was_expired[lease.shard], now)
        if not fresh and not all(taken.get(lease.shard) for lease in chosen):
            self._last_take = -math.inf  # the listing was out of date: list again now
        if fresh:
            now_held = self.held()
            self._holds_all = bool(live) and all(lease.shard in now_held for lease in live)

    def _took(self, lease: Lease, was_expired: bool, now: float) -> None:
        """``lease`` was just taken (free, expired, or for balance): held from now on."""
        previous = lease.owner
        event = "stolen" if previous is not None and not was_expired else "taken"
        lease.owner, lease.counter = self.worker_id, lease.counter + 1
        with self._lock:
            self._held[lease.shard] = lease
        self._seen[lease.shard] = _Seen(lease.counter, self.worker_id, now)
        self.listing[lease.shard] = Lease(**vars(lease))
        BRIDGE_LEASE_EVENTS.labels(self.bridge, event).inc()
        log.info(
            "%s: took the lease of shard %s (from %s: %s)",
            self.bridge,
            lease.shard,
            previous or "nobody",
            "balancing" if event == "stolen" else "free or expired",
        )

    def stop(self) -> None:
        """Stop renewing and release every lease held (another process takes them at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.failover_seconds)
        for shard in list(self.held()):
            try:
                if self.table.release(shard, self.worker_id):
                    BRIDGE_LEASE_EVENTS.labels(self.bridge, "released").inc()
            except Exception:
                log.exception("%s: could not release the lease of shard %s", self.bridge, shard)
        with self._lock:
            self._held.clear()
        BRIDGE_LEASES.labels(self.bridge).set(0)
