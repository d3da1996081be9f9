"""The demo's seeding: what ``make run`` writes before it starts the pipeline, read back from the stores."""

from __future__ import annotations

import time
import uuid

from dmd_tasks.infra.settings import Settings
from dmd_tasks.ops.demo import PIPELINE_PROCESSES, seed_sale
from dmd_tasks.ops.stack import read_procfile
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.demand import DemandRecords
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable


def test_seed_sale_writes_an_event_its_fans_their_opt_outs_a_campaign_and_a_sale_due_now(
    settings: Settings, stack: object
) -> None:
    # When the demo seeds a sale of 450 fans
    run_id = uuid.uuid4().hex[:8]
    sale_id, opted_out = seed_sale(settings, 450, 25.0, run_id)

    # Then the sale is waiting and due, for an event with a URL on the allowed hosts
    table = DemandTable(settings)
    sale = SaleRecords(table).get(sale_id)
    assert sale is not None and sale["status"] == "waiting"
    assert sale_id in {s["id"] for s in SaleRecords(table).due(time.time() + 1)}
    event = EventRecords(table).get(sale["eventId"])
    assert event is not None and event.url.startswith("https://www.ticketmaster.com/")
    # and every fan registered demand, two with a number that is not E.164
    rows = [row for page in DemandRecords(table).pages(event.id, None, 1000) for row in page]
    assert len(rows) == 450
    assert sum(1 for r in rows if not str(r["phone"]).startswith("+")) == 2
    # and fans 42, 142, ... opted out beforehand
    phones = [str(r["phone"]) for r in rows]
    assert opted_out == 5
    assert len(DemandRecords(table).opted_out(phones)) == opted_out
    # and the campaign sends at any hour at the given rate
    campaign = open_campaign_store(settings).get(sale_id)
    assert campaign is not None and campaign.rate_per_second == 25.0
    assert campaign.window.start == campaign.window.end  # always open


def test_the_demo_runs_pipeline_processes_the_procfile_defines() -> None:
    assert set(PIPELINE_PROCESSES) <= set(read_procfile())
