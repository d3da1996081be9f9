"""The fault suite: real sales through the real pipeline while doing damage.

Every scenario runs a sale on the local stack with all pipeline processes, damages
something for real (SIGKILL, a failing provider, replayed streams), and checks the
outcome from the data and from the SMS simulator's own counters: every notification
terminal, nobody messaged twice, nothing lost. Each prints its figures:

    [chaos] send-worker-kills {"notifications": 120, "terminal": 120, "duplicates": 0, "lost": 0, "kills": 6, ...}

``make test`` runs it small; ``make chaos`` runs it at size (DMD_CHAOS_FANS, DMD_CHAOS_KILLS).
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from dmd_tasks.infra import aws, topology
from tests.chaos.scenario import (
    FANS,
    KILLS,
    Killer,
    all_terminal,
    assert_healthy,
    bridge_positions,
    caught_up,
    counts,
    figures,
    report,
    start_sale,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.chaos


def test_send_workers_killed_during_a_sale(pipeline, settings, sim) -> None:
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: counts(settings, sale_id).get("sent", 0) + counts(settings, sale_id).get("delivered", 0) > 0,
        timeout=60,
        what="sending to begin",
    )
    killer = Killer(pipeline, ["worker-send"], every=1.2, kills=KILLS)
    killer.start()
    killer.join(timeout=KILLS * 1.2 + 30)
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    result = figures(settings, sim, sale_id, FANS, killer.kills)
    report("send-worker-kills", result)
    assert killer.kills >= KILLS
    assert_healthy(result, settings)


#: Every 429 pauses every sender for its Retry-After (2 s here): at 7 % of the calls that is, on
#: average, FANS × 0.07 × 2 s of pauses, on top of what sending takes without them.
THROTTLE_PAUSES_SECONDS = FANS * 0.07 * 2


@pytest.mark.timeout(int(300 + THROTTLE_PAUSES_SECONDS * 1.5))
def test_provider_failing_a_fifth_of_calls(pipeline, settings, sim) -> None:
    before = sim.stats()["sms"].get("retry_after_violations", 0)
    # 20% of calls fail: 500/503, 429 with Retry-After: 2, and timeouts after the provider accepted
    sim.configure(
        sms={
            "error_rate": 0.07,
            "throttle_rate": 0.07,
            "throttle_retry_after": 2,
            "timeout_rate": 0.06,
            "timeout_ms": 1500,
        }
    )
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS),
        timeout=240 + THROTTLE_PAUSES_SECONDS * 1.5,
        interval=1,
        what="every notification terminal",
    )
    stats = sim.stats()["sms"]
    result = figures(
        settings,
        sim,
        sale_id,
        FANS,
        0,
        responses_429=stats.get("responses_429", 0),
        timeouts=stats.get("responses_timeouts", 0),
        retry_after_violations=stats.get("retry_after_violations", 0) - before,
    )
    report("provider-faults", result)
    assert_healthy(result, settings)
    assert result["retry_after_violations"] == 0, "a retry came back sooner than the provider's Retry-After"
    assert result["responses_429"] > 0 and result["timeouts"] > 0


def test_bridges_killed_mid_stream(pipeline, settings, sim) -> None:
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    killer = Killer(pipeline, ["bridge-demand", "bridge-sms-status"], every=1.0, kills=max(KILLS, 6))
    killer.start()
    killer.join(timeout=60)
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    result = figures(settings, sim, sale_id, FANS, killer.kills)
    report("bridge-kills", result)
    assert killer.kills >= KILLS
    assert_healthy(result, settings)


def _checkpoint(settings, consumer: str) -> dict[str, Any] | None:
    items = aws.client("dynamodb", settings).scan(TableName=settings.checkpoint_table_name)["Items"]
    mine = [
        i
        for i in items
        if i["stream"]["S"].startswith(f"{consumer}|")
        and (consumer != "bridge-demand" or f":table/{settings.table_name}/" in i["stream"]["S"])
    ]
    return max(mine, key=lambda i: int(i.get("sequence", {}).get("S", "0"))) if mine else None


def _drained(settings, queues: tuple[str, ...]) -> bool:
    """No message waiting or in flight on any of the Celery ``queues`` (every task they got has run)."""
    sqs = aws.client("sqs", settings)
    names = (
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    )
    for queue in queues:
        found = sqs.get_queue_attributes(QueueUrl=topology.queue_url(settings, queue), AttributeNames=names)
        if any(int(found["Attributes"].get(n, 0)) for n in names):
            return False
    return True


def test_duplicated_and_out_of_order_records_have_no_second_effect(pipeline, settings, sim) -> None:
    sim.configure(sms={"duplicate_status_rate": 0.5, "out_of_order_rate": 0.5})
    demand_before = _checkpoint(settings, "bridge-demand")
    status_before = _checkpoint(settings, "bridge-sms-status")
    sale_id, _ = start_sale(settings, FANS, rate=max(10.0, FANS / 10))
    wait_until(
        lambda: all_terminal(settings, sale_id, FANS), timeout=240, interval=1, what="every notification terminal"
    )
    first = figures(settings, sim, sale_id, FANS, 0)
    #: where each bridge stands once the sale is over: the replay has to reach it again
    ends = {name: bridge_positions(settings, name) for name in ("bridge-demand", "bridge-sms-status")}

    # Replay both streams over the whole sale: rewind the checkpoints and restart the bridges
    ddb = aws.client("dynamodb", settings)
    replayed_log = pipeline.log_dir / "bridge-demand.log"
    offset = replayed_log.stat().st_size
    for name, before in (("bridge-demand", demand_before), ("bridge-sms-status", status_before)):
        pipeline.kill(name, signal.SIGTERM)
        if before is not None:
            ddb.put_item(TableName=settings.checkpoint_table_name, Item=before)
        else:
            current = _checkpoint(settings, name)
            if current is not None:
                ddb.delete_item(
                    TableName=settings.checkpoint_table_name,
                    Key={"stream": current["stream"], "shard": current["shard"]},
                )
        pipeline.start_one(name)
    wait_until(lambda: "records ->" in replayed_log.read_text()[offset:], what="the demand bridge to replay")
    # the replayed records are routed (each bridge is back where the sale ended) and their tasks run
    for name, end in ends.items():
        wait_until(lambda n=name, e=end: caught_up(settings, n, e), timeout=120, what=f"{name} to replay the sale")  # type: ignore[misc]
    wait_until(lambda: _drained(settings, ("send", "sms-status")), timeout=120, what="the replayed tasks to run")
    second = figures(settings, sim, sale_id, FANS, 0)
    report("duplicates-and-replays", {**second, "status_before_replay": first["status"]})
    assert_healthy(second, settings)
    assert second["status"] == first["status"]
    assert second["provider_accepted"] == first["provider_accepted"]
