"""Two processes of each bridge on one stream: they share its shards through leases; one killed
mid-sale is replaced by the other within the failover time, and a restarted one gets its share back.

The status stream has DMD_SMS_STATUS_SHARDS shards (config/local.env: 4); the demand table's
stream has one (DynamoDB's local emulation), so one demand bridge reads and the other stands by.
Prints its figures:

    [chaos] bridge-leases {"takeover_seconds": {"bridge-sms-status": 6.1, ...}, "duplicates": 0, ...}
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from bridges.lease_table import Lease, LeaseTable
from bridges.sources import DynamoDBStreamSource, KinesisSource
from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.stack import ProcessGroup
from tests.chaos.scenario import CHAOS_ENV, FANS, all_terminal, assert_healthy, counts, figures, report, start_sale
from tests.helpers import wait_until

#: the takeover is timed against the design's bound: beside another scenario's processes starting
#: up on the same cores, the survivor could wait seconds for a core (`make chaos` runs it alone)
pytestmark = [pytest.mark.chaos, pytest.mark.alone]

BRIDGES = ("bridge-demand", "bridge-sms-status")
FAILOVER = float(CHAOS_ENV["DMD_BRIDGE_LEASE_FAILOVER_SECONDS"])


@pytest.fixture()
def doubled(settings, sim) -> Iterator[ProcessGroup]:
    """The pipeline with a second process of each bridge (``<bridge>-2``)."""
    sim.configure(sms={"status_delay_ms": 100})
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / f"leases-{uuid.uuid4().hex[:6]}", env=CHAOS_ENV)
    group.start(PIPELINE_PROCESSES)
    for bridge in BRIDGES:
        group.start_one(bridge, instance=f"{bridge}-2")
    try:
        yield group
    finally:
        group.stop()


def lease_tables(settings) -> dict[str, LeaseTable]:
    return {
        "bridge-demand": LeaseTable(
            settings, "bridge-demand", DynamoDBStreamSource(settings, settings.table_name).stream_id
        ),
        "bridge-sms-status": LeaseTable(
            settings, "bridge-sms-status", KinesisSource(settings, settings.sms_status_stream_name).stream_id
        ),
    }


def live(table: LeaseTable) -> list[Lease]:
    return [lease for lease in table.list() if not lease.finished]


def holders(table: LeaseTable, group: ProcessGroup, bridge: str) -> dict[str, int]:
    """Live leases per process instance (a lease's owner names the process id)."""
    by_pid = {str(p.pid): name for name, p in group.processes.items() if name.startswith(bridge)}
    out: dict[str, int] = {}
    for lease in live(table):
        pid = (lease.owner or "").split(":")[1] if lease.owner and lease.owner.count(":") == 2 else ""
        name = by_pid.get(pid, f"other:{lease.owner}")
        out[name] = out.get(name, 0) + 1
    return out


def errors_logged(group: ProcessGroup, bridge: str, last: int = 5) -> str:
    """The last warnings and errors each process of ``bridge`` logged (one line each, clipped)."""
    out = []
    for path in sorted(group.log_dir.glob(f"{bridge}*.log")):
        lines = [line[:400] for line in path.read_text(errors="replace").splitlines() if '"level": "INFO"' not in line]
        out.append(f"{path.name}: " + ("\n  ".join(lines[-last:]) or "nothing above INFO"))
    return "\n".join(out)


def last_take(group: ProcessGroup, instance: str, after: float) -> float:
    """When ``instance`` last logged taking a lease (epoch seconds), among lines after ``after``."""
    took = [
        stamp
        for line in (group.log_dir / f"{instance}.log").read_text(errors="replace").splitlines()
        if "took the lease of shard" in line
        for stamp in [datetime.fromisoformat(json.loads(line)["time"]).timestamp()]
        if stamp > after
    ]
    assert took, f"{instance} logged no take after the kill"
    return max(took)


def test_two_bridges_per_stream_share_shards_and_take_over_from_a_killed_one(doubled, settings, sim) -> None:
    tables = lease_tables(settings)

    def balanced(bridge: str) -> dict[str, int] | None:
        held = holders(tables[bridge], doubled, bridge)
        total = len(live(tables[bridge]))
        want = {bridge: (total + 1) // 2, f"{bridge}-2": total // 2}
        # every live lease held by one of the two processes (not unowned: created or released a
        # moment ago), split as evenly as the shards allow
        ours = set(held) <= set(want)
        return held if ours and sorted(held.values()) == sorted(v for v in want.values() if v) and total else None

    def wait_balanced(bridge: str, what: str) -> None:
        try:
            wait_until(lambda: balanced(bridge), timeout=FAILOVER * 6 + 30, interval=0.5, what=f"{bridge} {what}")
        except AssertionError as exc:  # say why: the leases as they stand, and what the bridges logged
            raise AssertionError(f"{exc}\nleases: {tables[bridge].list()}\n{errors_logged(doubled, bridge)}") from None

    for bridge in BRIDGES:
        wait_balanced(bridge, "balanced")
    split_before = {b: holders(tables[b], doubled, b) for b in BRIDGES}
    shards = {b: len(live(t)) for b, t in tables.items()}

    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(lambda: counts(settings, sale_id).get("delivered", 0) > 0, timeout=90, what="receipts flowing")
    # kill -9 the process holding the demand stream's lease, and one status bridge
    victims = [
        next(name for name, n in split_before["bridge-demand"].items() if n),
        "bridge-sms-status",
    ]
    taken_over: set[str] = set()
    killed_at, killed_wall = time.monotonic(), time.time()
    for victim in victims:
        doubled.kill(victim, signal.SIGKILL)
    survivors = {
        "bridge-demand": next(n for n in ("bridge-demand", "bridge-demand-2") if n != victims[0]),
        "bridge-sms-status": "bridge-sms-status-2",
    }
    deadline = killed_at + FAILOVER * 3 + 30
    while len(taken_over) < len(BRIDGES) and time.monotonic() < deadline:
        for bridge in BRIDGES:
            held = holders(tables[bridge], doubled, bridge)
            if held.get(survivors[bridge], 0) == sum(held.values()) > 0:
                taken_over.add(bridge)
        time.sleep(0.25)
    # the takeover lasted until the survivor took the last of the killed one's leases: when, as its
    # log says (this loop's own listings lag it by seconds on a loaded machine)
    takeover = {
        bridge: round(last_take(doubled, survivors[bridge], after=killed_wall) - killed_wall, 1)
        for bridge in taken_over
    }

    wait_until(lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification final")
    # the killed ones come back: each bridge's shards are shared again
    for victim in victims:
        doubled.start_one(victim.removesuffix("-2"), instance=victim)
    rebalanced_at = time.monotonic()
    for bridge in BRIDGES:
        wait_balanced(bridge, "rebalanced")
    result = figures(
        settings,
        sim,
        sale_id,
        FANS,
        len(victims),
        shards=shards,
        split_before=split_before,
        takeover_seconds=takeover,
        failover_seconds=FAILOVER,
        rebalanced_seconds=round(time.monotonic() - rebalanced_at, 1),
        split_after={b: holders(tables[b], doubled, b) for b in BRIDGES},
    )
    report("bridge-leases", result)
    assert set(takeover) == set(BRIDGES), result
    # a lease is judged expired after FAILOVER unseen, counted from the listing that first saw its
    # last renewal (every FAILOVER / 2), and taken at the next wake-up (every FAILOVER / 6)
    assert all(t <= FAILOVER * 1.5 + 5 for t in takeover.values()), result
    assert_healthy(result, settings)
    assert not doubled.dead(), doubled.dead()
