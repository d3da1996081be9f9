"""Two providers, end to end: the HTTP provider (receipts through Kinesis) and End User Messaging
(events through SNS → SQS → ``bridge-sqs``), both played by the simulator, splitting a sale's
sends. The HTTP provider fails for good half-way through a sale: its traffic moves to the other
within a minute, every notification ends final, and no fan gets two SMS from the two together."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.services import sms_account
from dmd_tasks.store.table import DemandTable
from tests.chaos.scenario import all_terminal, counts, figures, start_sale
from tests.helpers import clear_circuits, eum_account, wait_until

pytestmark = pytest.mark.e2e

FANS = 150
IDENTITY = "+18005550133"
OPEN_SECONDS = 5
PROVIDER_TIMEOUT_SECONDS = 1
RATE_WAIT_SECONDS = 2
#: how long after the failure the traffic must have moved (the issue allows a minute)
SWITCH_SECONDS = 15


@pytest.fixture(scope="module")
def pipeline(settings, stack, sim) -> Iterator[ProcessGroup]:
    account = eum_account(settings, IDENTITY, "dmd-failover")
    del account["DMD_SMS_PROVIDER"]  # the HTTP provider stays the primary; End User Messaging is the second
    sim.configure(sms={"status_delay_ms": 100}, eum={"status_delay_ms": 100})
    env = {
        **account,
        "DMD_SMS_FAILOVER_PROVIDER": "eum",
        "DMD_SMS_FAILOVER_WEIGHT": "0.3",
        "DMD_SMS_TIMEOUT_SECONDS": str(PROVIDER_TIMEOUT_SECONDS),
        "DMD_SEND_RATE_WAIT_SECONDS": str(RATE_WAIT_SECONDS),
        "DMD_CLAIM_INTERVAL_SECONDS": "1",
        "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
        "DMD_RECONCILE_INTERVAL_SECONDS": "2",
        "DMD_CIRCUIT_OPEN_SECONDS": str(OPEN_SECONDS),
    }
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "e2e-failover", env=env)
    clear_circuits()  # the test waits for the HTTP provider's circuit to trip: it starts closed
    group.start([*PIPELINE_PROCESSES, "bridge-sqs"])
    try:
        yield group
    finally:
        group.stop()
        sim.configure(sms={"error_rate": 0})
        clear_circuits()


def test_a_provider_failing_half_way_through_a_sale_loses_its_traffic_to_the_other(pipeline, settings, sim) -> None:
    # Given a sale split between the two providers (70/30), paced so that it lasts about half a minute
    sale_id, _ = start_sale(settings, FANS, rate=5)
    wait_until(lambda: counts(settings, sale_id).get("delivered", 0) >= FANS // 5, timeout=120, what="a fifth sent")
    before = provider_counts(settings, sale_id)
    assert before.get("http", 0) > 0 and before.get("eum", 0) > 0, before  # both take a share

    # When the HTTP provider fails every call from now on
    sim.configure(sms={"error_rate": 1.0})
    failed_at = time.monotonic()
    # its circuit opens after a few failed calls, within SWITCH_SECONDS under load; a send that had
    # its permit then may still wait for its rate-limit slot and then call: all such calls end
    # within the rate wait and the provider timeout
    wait_until(lambda: http_circuit_tripped(settings), timeout=SWITCH_SECONDS, interval=0.1, what="the circuit open")
    time.sleep(RATE_WAIT_SECONDS + PROVIDER_TIMEOUT_SECONDS + 0.5)
    http_calls_then, switched_at = http_errors(sim), time.monotonic()
    assert counts(settings, sale_id).get("delivered", 0) < FANS - 20, "the sale ended before the switch was measured"

    # Then every notification still ends final, the rest through End User Messaging, and nobody
    # got two SMS (the simulator counts both providers' messages per fan)
    final = wait_until(lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="all final")
    elapsed = time.monotonic() - switched_at
    result = figures(settings, sim, sale_id, FANS, 0)
    assert result["duplicates"] == 0 and result["provider_accepted"] == FANS, result
    assert set(final) <= {"delivered", "undelivered", "failed"}, final
    # nobody failed for the outage: any failure is the simulator's own final status
    assert not [i for i in items_of(settings, sale_id) if "gave up" in str(i.get("reason", ""))]
    # and from SWITCH_SECONDS after the failure on, the HTTP provider saw its circuit's probes only
    # (one per DMD_CIRCUIT_OPEN_SECONDS), not traffic
    probes = http_errors(sim) - http_calls_then
    assert probes <= elapsed / OPEN_SECONDS + 3, (probes, elapsed, time.monotonic() - failed_at)
    assert provider_counts(settings, sale_id)["eum"] > before["eum"]


def http_circuit_tripped(settings) -> bool:
    """The HTTP provider's circuit (``dmd_tasks.infra.circuit``) has opened: open or half-open since."""
    return bool(redis.Redis.from_url(settings.redis_url).exists(f"dmd:circuit:{sms_account(settings, 'http')}:tripped"))


def http_errors(sim) -> int:
    """Calls the HTTP provider answered with a 5xx so far."""
    return sum(v for k, v in sim.stats()["sms"].items() if k.startswith("responses_5"))


def items_of(settings, sale_id: str) -> list[dict]:
    return list(DemandTable(settings).for_notifications().query_all(f"SALE#{sale_id}", "NOTIFICATION#"))


def provider_counts(settings, sale_id: str) -> dict[str, int]:
    """Notifications by the provider their (last) call went to."""
    out: dict[str, int] = {}
    for item in items_of(settings, sale_id):
        if "provider" in item and item["status"] not in ("scheduled", "sending"):
            out[str(item["provider"])] = out.get(str(item["provider"]), 0) + 1
    return out
