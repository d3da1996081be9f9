"""Dependency outages during a sale: Redis or the AWS endpoint hung or unreachable, Redis back
empty, every AWS call slow, the SMS provider down or throttling.

Every pipeline process talks to Redis and to the AWS endpoint (moto) through a ``FaultProxy``
(tests/chaos/proxy.py); the test itself reads and writes directly. Each scenario starts a sale,
waits until sending has begun, damages one dependency for DMD_CHAOS_OUTAGE_SECONDS (20; at size:
60), heals it, and then requires:

- no pipeline process exited, during the outage or after it (an exit is a defect: nothing
  restarts it here);
- every notification final (delivered, undelivered or failed) within DMD_CHAOS_FINAL_TIMEOUT_SECONDS
  (default 300) after the heal;
- nobody messaged twice, per the SMS simulator; nothing lost; no notification over its attempts;
- beat ticking again within a minute of the heal; with AWS slow (not down), no task cut off by
  its soft time limit.

With the provider failing or throttling every call, not one notification may fail: its circuit
pauses sending instead of spending attempts.
Each prints its figures, e.g.

    [chaos] redis-frozen {"final": 120, "duplicates": 0, "lost": 0, "died": {}, ...}

Quick run: DMD_CHAOS_OUTAGE_SECONDS=20 DMD_CHAOS_FANS=60 pytest tests/chaos -s -k dependencies
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.stack import ProcessGroup
from tests.chaos.proxy import FaultProxy
from tests.chaos.scenario import CHAOS_ENV, TERMINAL, counts, figures, report, start_sale
from tests.helpers import wait_until

pytestmark = pytest.mark.chaos

FANS = int(os.environ.get("DMD_CHAOS_FANS", "120"))
OUTAGE_SECONDS = float(os.environ.get("DMD_CHAOS_OUTAGE_SECONDS", "20"))
FINAL_TIMEOUT_SECONDS = float(os.environ.get("DMD_CHAOS_FINAL_TIMEOUT_SECONDS", "300"))
#: How long the provider answers 429 to everything in the throttling scenario (`make chaos`: 120).
THROTTLE_SECONDS = float(os.environ.get("DMD_CHAOS_THROTTLE_SECONDS", str(OUTAGE_SECONDS)))
#: How long every AWS call is slowed in the slow-dependency scenario (`make chaos`: 120), and by how much.
SLOW_SECONDS = float(os.environ.get("DMD_CHAOS_SLOW_SECONDS", str(OUTAGE_SECONDS)))
AWS_SLOW_DELAY_SECONDS = 0.3
#: Sending takes about 30 s at this rate, so the outage starts while the sale is under way.
RATE = max(2.0, FANS / 30)
#: Statuses that show the send stage has started on the sale.
SENDING_BEGUN = ("sending", "sent", *TERMINAL)
LOG_TAIL_LINES = 30


@dataclass
class Proxied:
    """The pipeline's processes and the proxies between them and Redis / the AWS endpoint."""

    group: ProcessGroup
    redis: FaultProxy
    aws: FaultProxy
    #: seconds after the fault began at which each process was first seen exited, and its code
    died_at: dict[str, tuple[float, int | None]] = field(default_factory=dict)
    fault_started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        """Note each process's exit as it happens (ProcessGroup.dead() only tells that it did)."""
        while not self._stop.wait(0.5):
            for name, process in self.group.processes.items():
                if name not in self.died_at and process.poll() is not None:
                    since = time.monotonic() - self.fault_started if self.fault_started else -1.0
                    self.died_at[name] = (round(since, 1), process.returncode)

    def stop_watching(self) -> None:
        self._stop.set()

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.group.log_dir.glob("*.log")))

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.group.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@pytest.fixture()
def proxied(settings, sim) -> Iterator[Proxied]:
    """The pipeline processes (as test_chaos's ``pipeline``), with Redis and AWS behind fault proxies."""
    assert settings.aws_endpoint_url, "the chaos suite runs on the local stack (moto)"
    sim.configure(sms={"status_delay_ms": 100})
    redis_proxy = FaultProxy(*_host_port(settings.redis_url, 6379))
    aws_proxy = FaultProxy(*_host_port(settings.aws_endpoint_url, 80))
    env = {
        **CHAOS_ENV,
        "DMD_REDIS_URL": redis_proxy.url_for(settings.redis_url),
        "DMD_AWS_ENDPOINT_URL": aws_proxy.url_for(settings.aws_endpoint_url),
    }
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / f"deps-{uuid.uuid4().hex[:6]}", env=env)
    proxied = Proxied(group, redis_proxy, aws_proxy)
    group.start(PIPELINE_PROCESSES)
    watcher = threading.Thread(target=proxied.watch, daemon=True)
    watcher.start()
    try:
        yield proxied
    finally:
        proxied.stop_watching()
        watcher.join(timeout=5)
        redis_proxy.heal()
        aws_proxy.heal()
        group.stop()
        redis_proxy.close()
        aws_proxy.close()
        sim.configure(
            sms={
                "error_rate": 0,
                "throttle_rate": 0,
                "timeout_rate": 0,
                "duplicate_status_rate": 0.05,
                "out_of_order_rate": 0.05,
            }
        )


def run_outage(
    name: str,
    proxied: Proxied,
    settings: Any,
    sim: Any,
    damage: Callable[[], None],
    heal: Callable[[], None],
    *,
    outage_seconds: float = OUTAGE_SECONDS,
    none_failed: bool = False,
    within_budgets: bool = False,
) -> None:
    """A sale; ``damage`` once sending has begun; ``heal`` after the outage; then the checks
    (``none_failed``: not one notification may fail before the provider accepted it;
    ``within_budgets``: no task hit its soft time limit: with a dependency slow, not frozen, each
    run stops at its work budget instead; a frozen one holds a single call up to its timeout)."""
    sale_id, _ = start_sale(settings, FANS, rate=RATE)
    wait_until(
        lambda: sum(counts(settings, sale_id).get(s, 0) for s in SENDING_BEGUN) > 0,
        timeout=90,
        what="sending to begin",
    )
    status_at_fault = counts(settings, sale_id)
    proxied.fault_started = time.monotonic()
    damage()
    time.sleep(outage_seconds)
    status_at_heal = counts(settings, sale_id)
    heal()
    healed, healed_wall = time.monotonic(), time.time()
    #: (seconds after the heal, what was not final yet), every ~15 s: how recovery went
    recovery: list[tuple[float, dict[str, int]]] = []

    def final_yet() -> bool:
        c = counts(settings, sale_id)
        since = time.monotonic() - healed
        if not recovery or since - recovery[-1][0] >= 15:
            recovery.append((round(since), {s: n for s, n in c.items() if s not in TERMINAL}))
        return sum(c.get(s, 0) for s in TERMINAL) == FANS == sum(c.values())

    try:
        wait_until(
            final_yet,
            timeout=FINAL_TIMEOUT_SECONDS,
            interval=1,
            what="every notification final",
        )
        final_after: float | None = round(time.monotonic() - healed, 1)
    except AssertionError:
        final_after = None
    died = proxied.group.dead()
    beat_log = proxied.group.log_dir / "beat.log"
    with contextlib.suppress(AssertionError):  # the sale may end before beat's first tick after the heal
        wait_until(lambda: any(t > healed_wall for t in beat_ticks(beat_log)), timeout=60, what="a tick")
    beat = beat_ticks(beat_log)
    before_heal = [t for t in beat if t <= healed_wall]
    after_heal = [t for t in beat if t > healed_wall]
    logs = proxied.all_logs()
    result = figures(
        settings,
        sim,
        sale_id,
        FANS,
        0,
        final=sum(counts(settings, sale_id).get(s, 0) for s in TERMINAL),
        final_seconds_after_heal=final_after,
        outage_seconds=outage_seconds,
        died=died,
        died_seconds_after_fault={n: t for n, (t, _) in proxied.died_at.items()},
        status_at_fault=status_at_fault,
        status_at_heal=status_at_heal,
        not_final_after_heal=recovery,
        proxy_connections={"redis": proxied.redis.accepted, "aws": proxied.aws.accepted},
        beat_last_tick_before_heal=round(before_heal[-1] - healed_wall, 1) if before_heal else None,
        beat_first_tick_after_heal=round(after_heal[0] - healed_wall, 1) if after_heal else None,
        ticks_cut_short=logs.count("stopped at its time budget"),
        soft_time_limits=logs.count("SoftTimeLimitExceeded"),
        log_dir=str(proxied.group.log_dir),
    )
    report(name, result)
    for process in died:
        print(f"[chaos] {name}: {process} exited; last lines of its log:\n{proxied.log_tail(process)}", flush=True)

    assert not died, f"pipeline processes exited: {died}"
    assert final_after is not None, f"not every notification final {FINAL_TIMEOUT_SECONDS:.0f}s after the heal"
    assert result["lost"] == 0, result
    assert result["duplicates"] == 0, result
    if none_failed:  # every fan's SMS reached the provider (a "failed" receipt after that is the carrier's)
        assert result["provider_accepted"] == FANS, result
    assert result["terminal"] == result["notifications"] == FANS, result
    assert result["max_attempts"] <= settings.max_send_attempts, result
    # beat ticks again within a minute of the heal, whatever the fault did to Redis
    assert result["beat_first_tick_after_heal"] is not None and result["beat_first_tick_after_heal"] <= 60, result
    if within_budgets:  # a slow dependency: every run stops at its budget, none is cut off by its soft limit
        assert result["soft_time_limits"] == 0, result


def beat_ticks(log: Path) -> list[float]:
    """When beat sent each tick (epoch seconds), from its log (JSON lines, UTC ISO-8601 times)."""
    ticks = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if "Sending due task" not in line or not line.startswith("{"):
            continue
        stamp = json.loads(line)["time"]
        ticks.append(datetime.fromisoformat(stamp).timestamp())
    return ticks


TIMEOUT = int(OUTAGE_SECONDS + FINAL_TIMEOUT_SECONDS + 240)


@pytest.mark.timeout(TIMEOUT)
def test_redis_frozen_during_a_sale(proxied, settings, sim) -> None:
    run_outage("redis-frozen", proxied, settings, sim, proxied.redis.freeze, proxied.redis.heal)


@pytest.mark.timeout(TIMEOUT)
def test_redis_unreachable_during_a_sale(proxied, settings, sim) -> None:
    run_outage("redis-cut", proxied, settings, sim, proxied.redis.cut, proxied.redis.heal)


@pytest.mark.timeout(TIMEOUT)
def test_aws_endpoint_frozen_during_a_sale(proxied, settings, sim) -> None:
    run_outage("aws-frozen", proxied, settings, sim, proxied.aws.freeze, proxied.aws.heal)


@pytest.mark.timeout(TIMEOUT)
def test_aws_endpoint_unreachable_during_a_sale(proxied, settings, sim) -> None:
    run_outage("aws-cut", proxied, settings, sim, proxied.aws.cut, proxied.aws.heal)


@pytest.mark.timeout(TIMEOUT)
def test_redis_restarted_empty_during_a_sale(proxied, settings, sim) -> None:
    """Redis killed, and back without its data (a node replaced, no persistence): beat's
    schedule and lock, the send pacing, the circuits, the caches are gone. Beat must tick again
    (it writes its schedule back) and the sale must end with nobody messaged twice."""

    def restart_empty() -> None:
        proxied.redis.cut()
        redis.Redis.from_url(settings.redis_url).flushdb()

    run_outage("redis-restarted-empty", proxied, settings, sim, restart_empty, proxied.redis.heal)


@pytest.mark.timeout(int(SLOW_SECONDS + FINAL_TIMEOUT_SECONDS + 240))
def test_aws_slowed_during_a_sale(proxied, settings, sim) -> None:
    """Every AWS call 300 ms late for DMD_CHAOS_SLOW_SECONDS (`make chaos`: two minutes): a
    throttled table, a hot partition. The pipeline slows down and keeps moving; no run is cut off
    by its soft time limit (the ticks stop at their budget), and the send rate comes back after."""
    run_outage(
        "aws-slowed",
        proxied,
        settings,
        sim,
        lambda: proxied.aws.slow(AWS_SLOW_DELAY_SECONDS),
        proxied.aws.heal,
        outage_seconds=SLOW_SECONDS,
        within_budgets=True,
    )


@pytest.mark.timeout(TIMEOUT)
def test_sms_provider_failing_every_call_during_a_sale(proxied, settings, sim) -> None:
    """Every send answered 500/503 for the outage: the provider's circuit pauses sending instead of
    spending attempts, so not one notification fails."""
    run_outage(
        "sms-provider-down",
        proxied,
        settings,
        sim,
        lambda: sim.configure(sms={"error_rate": 1.0}),
        lambda: sim.configure(sms={"error_rate": 0}),
        none_failed=True,
    )


@pytest.mark.timeout(int(THROTTLE_SECONDS + FINAL_TIMEOUT_SECONDS + 240))
def test_sms_provider_throttling_every_call_during_a_sale(proxied, settings, sim) -> None:
    """Every send answered 429 + Retry-After for DMD_CHAOS_THROTTLE_SECONDS (`make chaos`: two
    minutes): a 429 spends no attempt, so not one notification fails."""
    run_outage(
        "sms-provider-throttling",
        proxied,
        settings,
        sim,
        lambda: sim.configure(sms={"throttle_rate": 1.0, "throttle_retry_after": 2}),
        lambda: sim.configure(sms={"throttle_rate": 0}),
        outage_seconds=THROTTLE_SECONDS,
        none_failed=True,
    )
