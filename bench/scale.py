"""8. Sale size: does the send rate hold as a sale, and the table under it, grow?

Two sales through every pipeline process on one stack, one after the other, at the same
campaign rate C (within the account's cap): a small one (``small`` fans) and a big one (``big``
fans, a third of them sharing a phone number with another fan, as real demand does: they end
``duplicate``, one SMS per phone). For each: the rate the provider accepted messages at, from
the first to the last, against C, and the time from ``notifyAt`` to every notification final,
against N / C. The big sale runs on a table that already holds the small one, so a rate that
falls with the size of the sale or of the table shows as a ratio below 1.

``--scale-lead-seconds`` sets each sale's ``notifyAt`` that long after its demand and the sale are
written, as an on-sale announced ahead is (0: due at once, so the time to the first SMS includes
the demand bridge reading the demand just written before it sees the sale).
``--scale-pollers`` clients read the sale's progress every 2 s meanwhile, as dashboards would
(``dmd status --watch``): index queries on the same table.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from datetime import time as clock_time
from typing import Any

from bench.harness import Harness, SendsSettled, wait_until

#: fans in every third position share the previous fan's number
SHARED_EVERY = 3


def run(
    h: Harness, *, small: int, big: int, rate: float, pollers: int, share: bool = True, lead: float = 0.0
) -> dict[str, Any]:
    from dmd_tasks.ops.demo import PIPELINE_PROCESSES

    h.fresh()
    h.sim.configure(sms={"status_delay_ms": 100})
    env = {"DMD_SMS_ACCOUNT_PARTS_PER_SECOND": str(max(rate * 2, 100.0))}
    results: dict[str, Any] = {"campaign_rate": rate, "big_shares_numbers": share, "lead_seconds": lead}
    with h.processes(PIPELINE_PROCESSES, env=env, label="scale") as group:
        h.wait_workers(group, ["generate", "schedule", "send", "sms-status", "short-url"])
        for name, fans, shared in (("small", small, False), ("big", big, share)):
            results[name] = _sale(h, group, fans, rate, shared, pollers, lead)
            h.say(f"scale: {name} {results[name]}")
    results["rate_ratio_big_to_small"] = round(results["big"]["send_rate"] / results["small"]["send_rate"], 3)
    return results


def _sale(h: Harness, group: Any, fans: int, rate: float, shared: bool, pollers: int, lead: float) -> dict[str, Any]:
    from dmd_tasks.ops.demo import TERMINAL, sale_progress

    settings = h.settings
    due = time.time() + lead
    sale_id, messaged = _seed(settings, fans, rate, shared, due)
    stop = threading.Event()
    watchers = [threading.Thread(target=_poll, args=(settings, sale_id, stop), daemon=True) for _ in range(pollers)]
    for watcher in watchers:
        watcher.start()
    try:
        settled = SendsSettled(h.sim, sale_id, messaged)

        def finished() -> dict[str, Any] | None:
            if group.dead():
                raise RuntimeError(f"processes exited: {group.dead()}")
            if not settled():
                return None
            progress = sale_progress(settings, sale_id)
            done = sum(progress["status"][s] for s in TERMINAL)
            return progress if progress["sale_status"] == "generated" and done == fans else None

        progress = wait_until(finished, lead + 300 + 3 * fans / rate, 2.0, what=f"{fans} notifications final")
        final_after = time.time() - due
    finally:
        stop.set()
    accepted = sorted(h.sim.sms_sale(sale_id, times=True).get("accepted_times", []))
    span = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
    send_rate = (len(accepted) - 1) / span if span > 0 else 0.0
    return {
        "fans": fans,
        "messaged": messaged,
        "status": progress["status"],
        "send_rate": round(send_rate, 2),
        "send_rate_of_campaign_rate": round(send_rate / rate, 3),
        "first_sms_after_seconds": round(accepted[0] - due, 1) if accepted else None,
        "final_after_seconds": round(final_after, 1),
        "n_over_c_seconds": round(messaged / rate, 1),
        "final_after_of_n_over_c": round(final_after / (messaged / rate), 2),
        "last_sms_after_seconds": round(accepted[-1] - due, 1) if accepted else None,
        "longest_gap_seconds": round(max((b - a for a, b in itertools.pairwise(accepted)), default=0.0), 2),
        "accepted_per_10s": _per_window(accepted, 10.0),
    }


def _per_window(times: list[float], width: float) -> list[int]:
    """How many of ``times`` (sorted) fall in each ``width``-second window from the first."""
    if not times:
        return []
    counts = [0] * (int((times[-1] - times[0]) // width) + 1)
    for t in times:
        counts[int((t - times[0]) // width)] += 1
    return counts


def _seed(settings: Any, fans: int, rate: float, shared: bool, due: float) -> tuple[str, int]:
    """An event, ``fans`` demand rows (with ``shared``, every third shares the number before it),
    a campaign at ``rate`` and a sale due at ``due`` (epoch seconds); (sale id, phones messaged)."""
    from dmd_tasks.domain.campaigns import Campaign, SendWindow
    from dmd_tasks.domain.entities import Demand, Event, Sale
    from dmd_tasks.store.campaigns import open_campaign_store
    from dmd_tasks.store.codec import iso
    from dmd_tasks.store.demand import DemandRecords
    from dmd_tasks.store.events import EventRecords
    from dmd_tasks.store.sales import SaleRecords
    from dmd_tasks.store.table import DemandTable

    run = uuid.uuid4().hex[:8]
    table = DemandTable(settings)
    event = Event(id=f"ev-{run}", name=f"Scale {run}", url=f"https://www.ticketmaster.com/event/{run}")
    area = 200 + int(run, 16) % 700
    phones: list[str] = []
    for n in range(fans):
        phones.append(phones[-1] if shared and n % SHARED_EVERY == SHARED_EVERY - 1 else f"+1{area}{n:07d}")
    EventRecords(table).put(event)
    DemandRecords(table).put_many(
        Demand(eventId=event.id, fanId=f"fan{n:07d}", phone=phone) for n, phone in enumerate(phones)
    )
    sale_id = f"scale-{run}"
    open_campaign_store(settings).put(
        Campaign(
            saleId=sale_id,
            eventId=event.id,
            template="{{ event_name }}: {{ short_url }}",
            window=SendWindow(start=clock_time(0, 0), end=clock_time(0, 0)),
            ratePerSecond=rate,
        )
    )
    SaleRecords(table).put(Sale(id=sale_id, eventId=event.id, notifyAt=iso(due)))
    return sale_id, len(set(phones))


def _poll(settings: Any, sale_id: str, stop: threading.Event) -> None:
    """What a dashboard does: the sale's progress every 2 s."""
    from dmd_tasks.ops.demo import sale_progress

    while not stop.wait(2.0):
        try:
            sale_progress(settings, sale_id)
        except Exception:  # a dashboard that fails once tries again; it is load, not a check
            continue
