"""2. Send rate against the provider's cap.

The SMS simulator accepts at most C messages per second (429 with Retry-After above it)
and answers each call after a fixed latency. A sale of C × seconds fans, whose campaign
rate is C, goes through the whole chain (beat claims it, the generator writes it, the
scheduler releases it, the bridge routes it, W send worker processes send it). Reported:
the sustained rate at the provider as a fraction of C (``steady_rate``: the messages
accepted in the middle three fifths of the sale's span, over that time; the ramp-up of
the first tick and the tail of the last are left out); the most requests the simulator
saw arrive in any one-second window (must never exceed C: the provider counts arrivals,
and one over C is a 429); 429s received.

Then two sales at once, sharing the account's cap (``DMD_SMS_ACCOUNT_PARTS_PER_SECOND`` = C):
a slow one (campaign rate 4/s) and a busy one (campaign rate C), for 2.5 × the single
run's length, each run on a fresh emulator (moto's Query walks the whole table).
Reported: the busy sale's steady rate while both run, as a fraction of what is left to it:
the account's ceiling less what the slow sale really took over the same time. The ceiling is
C / (1 + ``DMD_SMS_ACCOUNT_HEADROOM``): the senders space their calls that much wider than
1 / C, so that the jitter on the way (up to the headroom, in seconds per second) never puts
C + 1 arrivals in one second at the provider. The same rate is also given as a fraction of
C less the slow sale's rate, which counts the headroom as a loss. The provider's most
requests in any second covers both kinds of run.

The two-sales runs are then made again with another ``DMD_SMS_ACCOUNT_HEADROOM``
(``--send-compare-headroom``, 2 %: half the default) to show what the margin buys: fewer
milliseconds of jitter allowed, a little more rate, and on a loaded machine arrivals over C.

The emulator's own ceiling for the same chain is measured in the same run: the same
sale with no provider cap, no account cap and a campaign rate far above what the chain can do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from bench.harness import Harness, summary, wait_until
from bench.seed import new_sale, seed_event

#: The simulator plays a provider on a machine of its own: at a higher CPU priority than the
#: pipeline, the arrival times it stamps do not wait for the workers being measured. Without
#: it, on 2 cores, a run saw 22 requests arrive in one second (and three 429s) while the
#: senders let at most C go in any 1.02 s. Only here: where the simulator also emits delivery
#: statuses (benchmark 7), the priority would favour it over the pipeline.
SIMULATOR_NICE = int(os.environ.get("BENCH_SIMULATOR_NICE", "-10"))

#: the same processes as ``make run``, without the delivery-status path (it does not touch sending)
PROCESSES = ["bridge-demand", "beat", "worker-generate", "worker-schedule"]


def steady_rate(times: list[float], within: tuple[float, float] | None = None) -> tuple[float, tuple[float, float]]:
    """(messages per second, the window it was counted in): acceptances in the middle three
    fifths of ``times``' span (or in ``within``), over that window's length."""
    if within is None:
        first, last = min(times), max(times)
        within = (first + (last - first) / 5, last - (last - first) / 5)
    start, end = within
    if end <= start:
        raise RuntimeError("too few messages for a steady rate")
    return sum(1 for t in times if start <= t < end) / (end - start), within


def one_sale(h: Harness, fans: int, rate: float, timeout: float) -> dict[str, Any]:
    """Seed, let the pipeline send it; the provider's view of the sale."""
    settings = h.settings
    run_id = uuid.uuid4().hex[:8]
    event_id, sale_id = f"ev{run_id}", f"sale{run_id}"
    seed_event(settings, event_id, fans, area=200 + int(run_id, 16) % 700)
    new_sale(settings, sale_id, event_id, rate_per_second=rate)
    stats = wait_until(
        lambda: (s := h.sim.sms_sale(sale_id))["accepted"] >= fans and s,
        timeout,
        0.5,
        what=f"{fans} messages of {sale_id} accepted",
    )
    if stats["duplicates"]:
        raise RuntimeError(f"sale {sale_id}: {stats['duplicates']} fans got a second SMS")
    rate, _ = steady_rate(h.sim.sms_sale(sale_id, times=True)["accepted_times"])
    return {"accepted": stats["accepted"], "rate": rate}


def _two_sales(h: Harness, cap: float, slow_rate: float, seconds: float, headroom: float) -> dict[str, Any]:
    """A slow sale (``slow_rate``) and a busy one (campaign rate C) at once, sharing the account's cap:
    the busy sale's rate while both run, as a fraction of what the slow one leaves of the account."""
    settings = h.settings
    run_id = uuid.uuid4().hex[:8]
    busy_fans = int((cap - slow_rate) * seconds)
    slow_fans = int(slow_rate * seconds * 1.5)  # it outlasts the busy one: they overlap throughout
    sales = {}
    for name, fans, rate in (("slow", slow_fans, slow_rate), ("busy", busy_fans, cap)):
        event_id, sale_id = f"ev{name}{run_id}", f"sale{name}{run_id}"
        seed_event(settings, event_id, fans, area=200 + int(run_id, 16) % 700 + (0 if name == "slow" else 1))
        sales[name] = (sale_id, fans)
        new_sale(settings, sale_id, event_id, rate_per_second=rate)
    busy_id, _ = sales["busy"]
    stats = wait_until(
        lambda: (s := h.sim.sms_sale(busy_id))["accepted"] >= busy_fans and s,
        120 + 4 * seconds,
        0.5,
        what=f"{busy_fans} messages of {busy_id} accepted",
    )
    slow_id, _ = sales["slow"]
    # the slow sale ends before the next run starts (three sales would share the cap there)
    wait_until(
        lambda: h.sim.sms_sale(slow_id)["accepted"] >= slow_fans,
        120 + 2 * seconds,
        0.5,
        what=f"{slow_fans} messages of {slow_id} accepted",
    )
    slow = h.sim.sms_sale(slow_id, times=True)
    if stats["duplicates"] or slow["duplicates"]:
        raise RuntimeError("a fan got a second SMS")
    busy_times = h.sim.sms_sale(busy_id, times=True)["accepted_times"]
    busy_rate, window = steady_rate(busy_times)
    slow_rate_seen, _ = steady_rate(slow["accepted_times"], within=window)
    return {
        "busy_rate": busy_rate,
        "slow_rate": slow_rate_seen,
        **shares(busy_rate, slow_rate_seen, cap, headroom),
        "per_second": per_second(busy_times, slow["accepted_times"], window),
    }


def per_second(busy: list[float], slow: list[float], window: tuple[float, float]) -> dict[str, Any]:
    """Each sale's acceptances in every second from the first of either (the picture of a two-sales
    run, ``bench/plots.py``), and the window its rates were counted in, in seconds from that start."""
    start = min(min(busy), min(slow))
    seconds = int(max(max(busy), max(slow)) - start) + 1

    def counts(times: list[float]) -> list[int]:
        out = [0] * seconds
        for t in times:
            out[int(t - start)] += 1
        return out

    return {
        "busy": counts(busy),
        "slow": counts(slow),
        "steady_window": [round(window[0] - start, 2), round(window[1] - start, 2)],
    }


def shares(busy_rate: float, slow_rate: float, cap: float, headroom: float) -> dict[str, float]:
    """What the busy sale got of what the slow one left: of the account's ceiling C / (1 + headroom)
    (what the senders can let through), and of the cap C itself (the headroom counted as a loss)."""
    ceiling = cap / (1 + headroom)
    return {
        "ceiling": ceiling,
        "left": ceiling - slow_rate,
        "fraction_of_left": busy_rate / (ceiling - slow_rate),
        "fraction_of_cap_left": busy_rate / (cap - slow_rate),
    }


@dataclass
class SendSetup:
    """The pipeline the send benchmark runs: its processes, the provider's latency and cap."""

    h: Harness
    cap: float
    latency_ms: float
    workers: int

    @property
    def senders(self) -> list[tuple[str, str, list[str]]]:
        return [("worker-send", f"worker-send-{i}", ["-n", f"send{i}@%h"]) for i in range(1, self.workers + 1)]

    @property
    def nodes(self) -> list[str]:
        return ["generate", "schedule", *(f"send{i}" for i in range(1, self.workers + 1))]

    def ceiling(self, fans: int) -> dict[str, Any]:
        """The emulator's ceiling for this chain: no cap at the provider or on the account, no
        campaign limit to speak of."""
        h = self.h
        env = {"DMD_SMS_ACCOUNT_PARTS_PER_SECOND": "10000"}
        with h.processes([*PROCESSES, *self.senders], env=env, label="send") as group:
            h.wait_workers(group, self.nodes)
            h.sim.configure(sms={"latency_ms": self.latency_ms, "rate_limit_per_second": 0, **QUIET})
            ceiling = one_sale(h, fans, rate=10_000, timeout=120 + fans)
            h.say(f"send: chain ceiling without a cap {ceiling['rate']:.1f} messages/s")
        return ceiling

    @contextmanager
    def capped(self, fresh: bool, seen: dict[str, int], headroom: float | None = None) -> Iterator[None]:
        """The pipeline with the account's cap at the provider's C (one part a message here);
        what the provider saw is added to ``seen``."""
        h = self.h
        if fresh:
            h.fresh(simulator_nice=SIMULATOR_NICE)
        env = {"DMD_SMS_ACCOUNT_PARTS_PER_SECOND": f"{self.cap:g}"}
        if headroom is not None:
            env["DMD_SMS_ACCOUNT_HEADROOM"] = f"{headroom:g}"
        with h.processes([*PROCESSES, *self.senders], env=env, label="send") as group:
            h.wait_workers(group, self.nodes)
            h.sim.reset()
            h.sim.configure(sms={"latency_ms": self.latency_ms, "rate_limit_per_second": self.cap, **QUIET})
            yield
            stats = h.sim.stats()["sms"]
            seen["responses_429"] += int(stats.get("responses_429", 0))
            for key in ("max_requests_per_second", "max_accepted_per_second"):
                seen[key] = max(seen[key], int(stats[key]))
            if group.dead():
                raise RuntimeError(f"processes exited: {group.dead()}")


#: delivery statuses are not part of sending: the simulator holds them back (its writes to the
#: emulator's Kinesis would take emulator time from the chain being measured)
QUIET = {"status_delay_ms": 3_600_000}


def run(
    h: Harness,
    *,
    cap: float,
    latency_ms: float,
    workers: int,
    seconds: float,
    runs: int,
    slow_rate: float = 4.0,
    compare_headroom: float = 0.0,
) -> dict[str, Any]:
    h.fresh(simulator_nice=SIMULATOR_NICE)
    fans = int(cap * seconds)
    setup = SendSetup(h, cap, latency_ms, workers)
    ceiling = setup.ceiling(fans)
    provider = new_provider_stats()
    capped: list[float] = []
    with setup.capped(fresh=False, seen=provider):
        for run_no in range(runs):
            result = one_sale(h, fans, rate=cap, timeout=120 + 4 * seconds)
            capped.append(result["rate"])
            h.say(
                f"send run {run_no + 1}/{runs}: {result['rate']:.1f} messages/s sustained = "
                f"{result['rate'] / cap:.0%} of C"
            )
    # Each two-sales run on a fresh emulator: moto's Query walks the whole table, so on the table
    # the earlier runs filled, the scheduler's ticks (two sales: twice the index queries) would
    # measure moto's walk rather than how the cap is shared.
    headroom = h.settings.sms_account_headroom  # the default: the senders run without the variable
    shared = two_sales_runs(h, cap, slow_rate, seconds, runs, lambda: setup.capped(True, provider), headroom)
    compared = _compared(setup, slow_rate, seconds, runs, compare_headroom) if compare_headroom else {}
    return {
        "cap_per_second": cap,
        "provider_latency_ms": latency_ms,
        "send_workers": workers,
        "fans_per_run": fans,
        "runs": runs,
        "sustained_per_second": summary(capped, 2),
        "fraction_of_cap": summary([r / cap for r in capped], 3),
        "slow_sale_rate": slow_rate,
        "headroom": headroom,
        **shared,
        "max_requests_in_one_second": provider["max_requests_per_second"],
        "max_accepted_in_one_second": provider["max_accepted_per_second"],
        "provider_429s": provider["responses_429"],
        "chain_ceiling_per_second": round(ceiling["rate"], 2),
        "simulator_nice": int(h.sim.health().get("nice", 0)),
        "compare_headroom": compared,
    }


def _compared(setup: SendSetup, slow_rate: float, seconds: float, runs: int, headroom: float) -> dict[str, Any]:
    """The two-sales runs again with the account's headroom at ``headroom``."""
    seen = new_provider_stats()
    compared = two_sales_runs(
        setup.h, setup.cap, slow_rate, seconds, runs, lambda: setup.capped(True, seen, headroom), headroom
    )
    compared.update(
        headroom=headroom,
        max_requests_in_one_second=seen["max_requests_per_second"],
        provider_429s=seen["responses_429"],
    )
    return compared


def new_provider_stats() -> dict[str, int]:
    """What the provider saw over several runs: 429s (summed), most requests and acceptances in a second."""
    return {"responses_429": 0, "max_requests_per_second": 0, "max_accepted_per_second": 0}


def two_sales_runs(
    h: Harness,
    cap: float,
    slow_rate: float,
    seconds: float,
    runs: int,
    pipeline: Callable[[], AbstractContextManager[None]],
    headroom: float,
) -> dict[str, Any]:
    """``runs`` two-sales runs, each in its own ``pipeline()``; their figures summarised."""
    seen: dict[str, list[float]] = {"fraction_of_left": [], "fraction_of_cap_left": [], "slow_rate": []}
    series: dict[str, Any] = {}
    for run_no in range(runs):
        with pipeline():
            both = _two_sales(h, cap, slow_rate, seconds * 2.5, headroom)
        series = series or both["per_second"]  # the first run's, for the picture
        for key, values in seen.items():
            values.append(both[key])
        h.say(
            f"send two sales, headroom {headroom * 100:g} %, {run_no + 1}/{runs}: busy sale {both['busy_rate']:.2f}/s "
            f"of the {both['left']:.2f}/s the slow sale ({both['slow_rate']:.2f}/s) left of the ceiling "
            f"{both['ceiling']:.2f}/s = {both['fraction_of_left']:.1%} ({both['fraction_of_cap_left']:.1%} "
            f"of C less the slow sale)"
        )
    return {
        "busy_fraction_of_left": summary(seen["fraction_of_left"], 3),
        "busy_fraction_of_cap_left": summary(seen["fraction_of_cap_left"], 3),
        "slow_sale_rate_seen": summary(seen["slow_rate"], 2),
        "two_sales_per_second": series,
    }
