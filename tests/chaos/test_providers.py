"""Faults with a provider that cannot deduplicate: AWS End User Messaging SMS (the simulator
playing it, its events back through SNS → SQS → ``bridge-sqs``).

Send workers are killed with SIGKILL during a sale, some of them in the middle of a call.
With no idempotency, a call that may have sent the SMS is never repeated: the notification
waits ``unconfirmed`` for the service's event (which settles it) and ends ``unknown`` when none
comes. Prints its figures:

    [chaos] eum-send-worker-kills {"duplicates": 0, "lost": 0, "unknown": 0, "unconfirmed_seen": 3, ...}
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.table import DemandTable
from tests.chaos.scenario import CHAOS_ENV, FANS, KILLS, Killer, all_terminal, counts, figures, report, start_sale
from tests.helpers import eum_account, wait_until

pytestmark = pytest.mark.chaos

IDENTITY = "+18005550177"
#: the wait for an event, short so that a send whose event is lost ends within the test
WINDOW = 30


@pytest.fixture()
def eum_pipeline(settings, sim) -> Iterator[ProcessGroup]:
    account = eum_account(settings, IDENTITY, "dmd-chaos")
    # a slow service: a kill often lands during a call
    sim.configure(eum={"status_delay_ms": 100, "latency_ms": 150})
    env = {**CHAOS_ENV, **account, "DMD_UNCONFIRMED_WINDOW_SECONDS": str(WINDOW)}
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / f"chaos-eum-{uuid.uuid4().hex[:6]}", env=env)
    group.start([*PIPELINE_PROCESSES, "bridge-sqs"])
    try:
        yield group
    finally:
        group.stop()
        sim.configure(eum={"latency_ms": 0})


def test_send_workers_killed_with_a_provider_that_cannot_deduplicate(eum_pipeline, settings, sim) -> None:
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: sum(counts(settings, sale_id).get(s, 0) for s in ("sent", "delivered")) > 0,
        timeout=60,
        what="sending to begin",
    )
    killer = Killer(eum_pipeline, ["worker-send"], every=1.2, kills=KILLS)
    killer.start()
    killer.join(timeout=KILLS * 1.2 + 30)
    final = wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240 + WINDOW, interval=1, what="every notification final"
    )
    # the notifications that went through unconfirmed keep its reason (or ended unknown)
    items = list(DemandTable(settings).for_notifications().query_all(f"SALE#{sale_id}", "NOTIFICATION#"))
    ambiguous = [i for i in items if "may have" in str(i.get("lastError", "")) or i["status"] == "unknown"]
    result = figures(
        settings,
        sim,
        sale_id,
        FANS,
        killer.kills,
        unconfirmed_seen=len(ambiguous),
        unknown=final.get("unknown", 0),
    )
    report("eum-send-worker-kills", result)
    assert killer.kills >= KILLS
    assert result["duplicates"] == 0, result
    assert result["lost"] == 0, result
    # every fan the service accepted a message for is accounted for once; an unknown one was
    # either accepted once or never (at most once), never twice
    assert result["provider_accepted"] <= FANS
    assert result["provider_accepted"] >= FANS - result["unknown"]
