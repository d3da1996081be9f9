"""Bad input on purpose, through the running system: nothing crash-loops, nothing leaks."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import time as clock

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Demand, Event, Sale
from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.progress import count_by_status
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.campaigns import open_campaign_store
from dmd_tasks.store.codec import iso
from dmd_tasks.store.demand import DemandRecords
from dmd_tasks.store.items import item
from dmd_tasks.store.table import DemandTable
from tests.helpers import unique_phones, wait_until

pytestmark = pytest.mark.e2e

FULL_PHONE = re.compile(r"\+1\d{10}")


@pytest.fixture(scope="module")
def debug_run(settings, stack, sim) -> tuple[ProcessGroup, list[str]]:
    """A sale run to its end by the pipeline with every process logging at DEBUG, including STOP
    replies (phones in events); the processes are stopped, so their logs are whole. Returns the
    process group (its logs) and the fans' phones."""
    group = ProcessGroup(
        settings.run_dir.resolve() / "logs" / f"e2e-debug-{uuid.uuid4().hex[:6]}",
        env={"DMD_LOG_LEVEL": "DEBUG", "DMD_CLAIM_INTERVAL_SECONDS": "1", "DMD_SCHEDULE_INTERVAL_SECONDS": "1"},
    )
    group.start([*PIPELINE_PROCESSES, "api"])
    sim.configure(sms={"stop_reply_rate": 1.0})
    try:
        run = uuid.uuid4().hex[:8]
        table = DemandTable(settings)
        event = Event(id=f"dbg{run}", name="Debug", url=f"https://www.ticketmaster.com/e/{run}")
        phones = unique_phones(8)
        table.put_items([item(event)])
        table.put_items(item(Demand(eventId=event.id, fanId=f"f{n}", phone=p)) for n, p in enumerate(phones))
        open_campaign_store(settings).put(
            Campaign(
                saleId=f"dbg{run}",
                eventId=event.id,
                template="{{ short_url }}",
                window=SendWindow(start=clock(0), end=clock(0)),
            )
        )
        table.put_items([item(Sale(id=f"dbg{run}", eventId=event.id, notifyAt=iso(time.time())))])
        demand = DemandRecords(table)
        wait_until(
            lambda: (
                sum(count_by_status(table, f"dbg{run}").get(s, 0) for s in ("delivered", "undelivered", "failed")) == 8
            ),
            timeout=90,
            what="sale done",
        )
        wait_until(lambda: demand.opted_out(phones), timeout=30, what="STOP replies processed")
    finally:
        sim.configure(sms={"stop_reply_rate": 0.0})
        group.stop()
    return group, phones


def test_no_secret_token_or_full_phone_number_in_any_debug_log(debug_run, settings) -> None:
    # Given the sale of ``debug_run`` (every process at DEBUG, STOP replies carrying phones)
    group, phones = debug_run
    # Then no log line of any process carries a secret or a full phone number
    secrets = [
        settings.bitly_token,
        settings.sms_api_key,
        settings.discovery_api_key,
        settings.accounts_client_secret,
        *settings.api_keys,
    ]
    text = "\n".join(p.read_text(errors="replace") for p in group.log_dir.glob("*.log"))
    assert "DEBUG" in text  # the processes did log at DEBUG
    for secret in secrets:
        assert secret.get_secret_value() not in text
    for phone in phones:
        assert phone not in text
    assert phones[0][:2] + "*****" + phones[0][-2:] in text or not FULL_PHONE.search(text)


#: What Celery prints itself rather than logs: the warning about running as root (CI runs as
#: root; the image does not), and the shutdown notices (a pool child ended by the stop's SIGTERM).
CELERY_PRINTS = re.compile(
    r"^(.*SecurityWarning.*|absolutely not recommended!|Please specify a different user.*|"
    r"User information: .*|\s+_warn_or_raise_security_error.*|worker: Warm shutdown.*|"
    r"Process '[\w-]+' pid:\d+ exited with .*|)$"
)


def test_every_log_line_is_json_with_a_correlation_id(debug_run) -> None:
    group, _ = debug_run
    lines = [line for path in group.log_dir.glob("*.log") for line in path.read_text().splitlines()]
    assert len(lines) > 100
    for line in lines:
        if CELERY_PRINTS.match(line):
            continue
        record = json.loads(line)  # every other line is one JSON object
        assert record["correlation_id"], line
        assert {"time", "level", "logger", "message"} <= set(record)
    task_lines = [
        r
        for r in (json.loads(line) for line in lines if '"task_id"' in line and line.startswith("{"))
        if r.get("task_name", "").startswith("dmd_tasks.")
    ]
    # every task's correlation id leads back to where its work came from: a stream record, or a
    # run started by beat (a send published by the scheduling tick that moved its notifications)
    started_by_beat = {r["correlation_id"] for r in task_lines if r["task_name"].endswith(BEAT_TASKS)}
    assert task_lines and started_by_beat
    strays = [
        r
        for r in task_lines
        if not r["correlation_id"].startswith(("ddb-", "kin-"))
        and not r["task_name"].endswith(BEAT_TASKS)
        and r["correlation_id"] not in started_by_beat
    ]
    assert not strays, strays[:3]


#: The tasks beat starts, and what they start: their correlation ids are their own.
BEAT_TASKS = (
    "claim_due_sales",
    "schedule_notifications",
    "generate_notifications",
    "warm_event_details",
    "reconcile_sales",
)
