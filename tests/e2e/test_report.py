"""``dmd report`` on a sale that really ran: the Procfile's processes send it through the SMS
simulator, then the command (a process of its own) reports it as JSON and as a picture, and
its figures are checked against the notifications table and the provider's count."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import time as clock
from pathlib import Path

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale, parse_instant
from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.progress import TERMINAL, count_by_status
from dmd_tasks.ops.report_plot import SIZE
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import NOTIFICATION_PREFIX, sale_partition
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable
from tests.helpers import unique_phones, wait_until

pytestmark = pytest.mark.e2e

FANS = 60
RATE = 10.0  # SMS per second: the sale takes several seconds, each of them at the campaign's cap


@pytest.fixture(scope="module")
def pipeline(settings, stack, sim) -> Iterator[ProcessGroup]:
    sim.configure(sms={"status_delay_ms": 100})
    group = ProcessGroup(
        settings.run_dir.resolve() / "logs" / "e2e-report",
        env={"DMD_CLAIM_INTERVAL_SECONDS": "1", "DMD_SCHEDULE_INTERVAL_SECONDS": "1"},
    )
    group.start(PIPELINE_PROCESSES)
    try:
        yield group
    finally:
        group.stop()


def run_sale(settings) -> str:
    """A due sale of ``FANS`` fans: two share a number (one ends ``duplicate``), one number is not a number."""
    run = uuid.uuid4().hex[:8]
    table = DemandTable(settings)
    event = Event(id=f"ev{run}", name=f"Report {run}", url=f"https://www.ticketmaster.com/e/{run}")
    phones = unique_phones(FANS)
    phones[7] = phones[3]
    phones[11] = "not-a-number"
    table.put_items([item(event)])
    table.put_items(item(Demand(eventId=event.id, fanId=f"fan{n}", phone=p)) for n, p in enumerate(phones))
    sale_id = f"sale{run}"
    open_campaign_store(settings).put(
        Campaign(
            saleId=sale_id,
            eventId=event.id,
            template="{{ event_name }}: {{ short_url }}",
            window=SendWindow(start=clock(0), end=clock(0)),
            ratePerSecond=RATE,
        )
    )
    table.put_items([item(Sale(id=sale_id, eventId=event.id, notifyAt=iso(time.time())))])
    return sale_id


def dmd(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``dmd`` command in a process of its own, with the session's environment."""
    return subprocess.run(
        [sys.executable, "-m", "dmd_tasks.ops.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_sale_that_ran_is_reported_as_the_notifications_table_and_the_provider_have_it(
    pipeline, settings, sim, tmp_path: Path
) -> None:
    # Given a sale that went through the pipeline, every notification final and every receipt in
    sale_id = run_sale(settings)
    table = DemandTable(settings)

    def finished() -> bool:
        counts = count_by_status(table, sale_id)
        sale = SaleRecords(table).get(sale_id) or {}
        done = sum(n for status, n in counts.items() if status in TERMINAL)
        return sale.get("status") == "generated" and done == sum(counts.values()) == FANS

    wait_until(finished, timeout=180, interval=1.0, what=f"every notification of {sale_id} final")

    # When the operator asks for its report, as JSON and as a picture
    picture = tmp_path / "report.png"
    done = dmd("report", sale_id, "--json", "--png", str(picture))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert f"wrote {picture}" in done.stderr  # stdout is the JSON alone

    # Then its counts are the table's, read item by item here
    items = list(table.for_notifications().query_all(sale_partition(sale_id), NOTIFICATION_PREFIX))
    assert report["notifications"] == len(items) == FANS
    assert {s: n for s, n in report["status"].items() if n} == dict(Counter(str(i["status"]) for i in items))
    assert report["status"]["duplicate"] == 1 and report["reasons"]["duplicate"] == {
        "fan … of this sale has the same phone number and is messaged instead": 1
    }
    invalid = [r for r in report["reasons"]["failed"] if r.startswith("invalid phone number")]
    assert len(invalid) == 1 and report["reasons"]["failed"][invalid[0]] == 1
    # and what was sent, second by second, is the table's sentAt, and the provider's count
    seconds = Counter(int(parse_instant(str(i["sentAt"]))) for i in items if "sentAt" in i)
    first, last = min(seconds), max(seconds)
    assert report["per_second"]["sent"] == [seconds.get(s, 0) for s in range(first, last + 1)]
    assert report["sent"]["accepted"] == sum(seconds.values()) == sim.sms_sale(sale_id)["accepted"] == FANS - 2
    notify_at = parse_instant(str((SaleRecords(table).get(sale_id) or {})["notifyAt"]))
    assert report["sent"]["seconds_to_last"] == last - notify_at > 0
    assert report["sent"]["last_at"] == iso(last)
    # against the campaign's cap: 58 SMS at 10/s take several seconds
    assert (report["cap"]["messages_per_second"], report["cap"]["set_by"]) == (RATE, "campaign")
    assert len(report["per_second"]["sent"]) >= 4

    # And the picture is a PNG of the stated size
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == SIZE
    assert len(data) > 10_000
