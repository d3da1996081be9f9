"""The ``dmd`` command line (click's CliRunner), on the session's stack and settings.

What the commands read is the session's (``get_settings()``): the tests mark what they write
with ids of their own and take their dead letters back afterwards. Notifications are written in
statuses no bridge acts on.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmd_tasks.domain.entities import Event, Sale
from dmd_tasks.infra import topology
from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
from dmd_tasks.infra.settings import get_settings
from dmd_tasks.infra.topology import DLQ_OWNERS, WARM_EVENT_DETAILS
from dmd_tasks.ops.cli import main
from dmd_tasks.ops.stack import free_port
from dmd_tasks.store.items import item as as_item
from dmd_tasks.store.notifications import NotificationRecords
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable

COMMANDS = {
    "stack",
    "provision",
    "demo",
    "status",
    "report",
    "api",
    "metrics",
    "flower",
    "dlq",
    "sales",
    "sale",
    "campaign",
    "reconcile",
}


def listed_commands(help_text: str) -> set[str]:
    """The command names of a click group's --help."""
    section = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.strip()}


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])

    assert result.exit_code == 0, result.output
    assert listed_commands(result.output) == COMMANDS


def test_the_stack_and_dlq_groups_list_their_commands() -> None:
    assert listed_commands(CliRunner().invoke(main, ["stack", "--help"]).output) == {"up", "down"}
    assert listed_commands(CliRunner().invoke(main, ["dlq", "--help"]).output) == {"list", "replay"}


def test_an_unknown_command_fails_with_usage() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])

    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


def test_status_prints_the_sales_notifications_by_status(settings, stack) -> None:
    # Given a sale with six notifications (statuses no bridge acts on)
    sale_id = f"sale{uuid.uuid4().hex[:10]}"
    table = DemandTable(settings)
    SaleRecords(table).put(Sale(id=sale_id, eventId="ev1", notifyAt="2026-11-25T10:00:00Z"))
    records = NotificationRecords(table, settings.pending_shards)
    now = time.time()
    table.for_notifications().put_items(
        {
            **records.new_item(
                sale_id=sale_id, event_id="ev1", fan_id=f"f{n}", phone="+15550001111", tz="UTC", send_after=now, now=now
            ),
            "status": status,
        }
        for n, status in enumerate(["pending", "sent", "sent", "delivered", "delivered", "delivered"])
    )

    result = CliRunner().invoke(main, ["status", sale_id])

    # Then it prints the table: title, a row per status, the total
    assert result.exit_code == 0, result.output
    assert f"sale {sale_id} (waiting)" in result.output
    rows = dict(re.findall(r"│\s*(\w+)\s*│\s*(\d+)\s*│", result.output))
    assert rows == {
        "pending": "1",
        "scheduled": "0",
        "sending": "0",
        "unconfirmed": "0",
        "sent": "2",
        "delivered": "3",
        "undelivered": "0",
        "failed": "0",
        "duplicate": "0",
        "unknown": "0",
        "total": "6",
    }


def test_status_of_a_sale_that_does_not_exist_fails_with_one_line(stack) -> None:
    sale_id = f"nosale{uuid.uuid4().hex[:10]}"

    result = CliRunner().invoke(main, ["status", sale_id])

    assert result.exit_code == 1, result.output
    assert result.stderr == f"dmd: sale {sale_id} does not exist\n"
    assert result.stdout == ""


def test_report_of_a_sale_that_does_not_exist_fails_with_one_line(stack) -> None:
    sale_id = f"nosuch{uuid.uuid4().hex[:6]}"

    result = CliRunner().invoke(main, ["report", sale_id, "--json"])

    assert result.exit_code == 1
    assert result.stderr.strip() == f"dmd: sale {sale_id} does not exist" and not result.stdout


def test_status_as_json(settings, stack) -> None:
    sale_id = f"sale{uuid.uuid4().hex[:10]}"
    SaleRecords(DemandTable(settings)).put(Sale(id=sale_id, eventId="ev1", notifyAt="2026-11-25T10:00:00Z"))

    result = CliRunner().invoke(main, ["status", sale_id, "--json"])

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["sale"], shown["sale_status"], shown["notifications"]) == (sale_id, "waiting", 0)
    assert shown["status"]["unknown"] == 0


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and re.fullmatch(r"dmd, version \S+\n", result.output), result.output


def test_a_failure_is_one_line_on_stderr_and_exit_1_and_the_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given settings that cannot load (a value of the wrong type)
    monkeypatch.setenv("DMD_SMS_ACCOUNT_PARTS_PER_SECOND", "lots")
    get_settings.cache_clear()
    try:
        plain = CliRunner().invoke(main, ["status", "s1"])
        debug = CliRunner().invoke(main, ["--debug", "status", "s1"])
    finally:
        monkeypatch.delenv("DMD_SMS_ACCOUNT_PARTS_PER_SECOND")
        get_settings.cache_clear()

    assert plain.exit_code == 1
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith("dmd: invalid settings: ")
    assert "DMD_SMS_ACCOUNT_PARTS_PER_SECOND: Input should be a valid number" in plain.stderr
    assert "lots" not in plain.stderr and "Traceback" not in plain.output
    assert debug.exit_code == 1 and debug.exception is not None  # raised, for the traceback


@pytest.mark.stack  # a real socket: a connection refused on loopback
def test_an_unreachable_endpoint_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMD_AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DMD_AWS_CONNECT_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status", "s1"])
    finally:
        monkeypatch.delenv("DMD_AWS_ENDPOINT_URL")
        monkeypatch.delenv("DMD_AWS_CONNECT_TIMEOUT_SECONDS")
        get_settings.cache_clear()

    assert result.exit_code == 1
    assert result.stderr.startswith("dmd: cannot reach a service") and result.stderr.count("\n") == 1


def test_a_campaign_is_put_from_a_json_file_shown_and_a_sale_created_for_it(settings, stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    DemandTable(settings).put_items(
        [as_item(Event(id=f"ev{run}", name="Show", url="https://www.ticketmaster.com/e/1"))]
    )
    document = {
        "saleId": f"sale{run}",
        "eventId": f"ev{run}",
        "template": "{{ event_name }}: {{ short_url }}",
        "window": {"start": "09:00", "end": "21:00"},
        "ratePerSecond": 5,
    }
    path = tmp_path / "campaign.json"
    path.write_text(json.dumps(document))

    put = CliRunner().invoke(main, ["campaign", "put", str(path)])
    shown = CliRunner().invoke(main, ["campaign", "show", f"sale{run}"])
    created = CliRunner().invoke(
        main, ["sale", "create", "--sale", f"sale{run}", "--event", f"ev{run}", "--at", "2030-01-01T10:00:00-05:00"]
    )

    assert put.exit_code == 0 and "SMS part" in put.stdout, put.output
    assert json.loads(shown.stdout)["ratePerSecond"] == 5 and json.loads(shown.stdout)["eventId"] == f"ev{run}"
    assert created.exit_code == 0, created.output
    stored = SaleRecords(DemandTable(settings)).get(f"sale{run}")
    assert stored is not None and stored["status"] == "waiting" and stored["notifyAt"] == "2030-01-01T15:00:00Z"


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"saleId": "s1", "eventId": "e1", "template": "{{ nope }}"}), "invalid campaign: template"),
        (json.dumps({"saleId": "s1", "eventId": "e1", "template": "x", "ratePerSecond": -1}), "ratePerSecond"),
        (json.dumps({"saleId": "s1", "eventId": "e1", "template": "€" * 500}), "SMS parts"),
    ],
)
def test_a_bad_campaign_is_refused_with_a_precise_error(stack, tmp_path: Path, document: str, error: str) -> None:
    path = tmp_path / "campaign.json"
    path.write_text(document)
    result = CliRunner().invoke(main, ["campaign", "put", str(path)])
    assert result.exit_code == 1 and error in result.stderr, result.output
    assert "Traceback" not in result.output


def test_a_sale_for_an_event_or_campaign_that_does_not_exist_is_refused(stack) -> None:
    create = ["sale", "create", "--sale", "s1x", "--event", "nope"]
    result = CliRunner().invoke(main, [*create, "--at", "2030-01-01T10:00Z"])
    assert result.exit_code == 1 and "event nope does not exist" in result.stderr, result.output
    bad_time = CliRunner().invoke(main, [*create, "--at", "soon"])
    assert bad_time.exit_code == 1 and "invalid sale: notifyAt" in bad_time.stderr, bad_time.output


def test_dlq_replay_asks_first_and_a_queue_without_a_dlq_is_a_usage_error(queues) -> None:
    declined = CliRunner().invoke(main, ["dlq", "replay", "query"], input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    unknown = CliRunner().invoke(main, ["dlq", "list", "nope"])
    assert unknown.exit_code == 2 and "has no dead-letter queue" in unknown.output


def test_dlq_list_prints_one_json_object_per_dead_letter(settings, queues) -> None:
    # Given two dead letters of the query queue
    marker = uuid.uuid4().hex
    DeadLetters(settings).send_batch(
        "query", [DeadLetter(f"{marker} one", {"n": 1}), DeadLetter(f"{marker} two", {"n": 2})]
    )
    try:
        result = CliRunner().invoke(main, ["dlq", "list", "query", "--max", "100"])

        # Then every line is a JSON object, ours among them
        assert result.exit_code == 0, result.output
        letters = [json.loads(line) for line in result.output.splitlines()]
        mine = sorted((d["reason"], d["payload"]) for d in letters if marker in d.get("reason", ""))
        assert mine == [(f"{marker} one", {"n": 1}), (f"{marker} two", {"n": 2})]
    finally:
        taken = queues.take(topology.dlq_url(settings, "query"), lambda body: marker in body)
    # And listing consumed nothing: both letters were still there to take back
    assert len(taken) == 2


def test_dlq_replay_dry_run_prints_what_it_would_do_and_a_count(settings, queues) -> None:
    event_id = f"ev{uuid.uuid4().hex[:10]}"
    letter = DeadLetter("TransientError: boom", {"task": WARM_EVENT_DETAILS, "args": [event_id], "kwargs": {}})
    DeadLetters(settings).send_batch("query", [letter])
    try:
        result = CliRunner().invoke(main, ["dlq", "replay", "query", "--dry-run", "--max", "100"])
    finally:
        taken = queues.take(topology.dlq_url(settings, "query"), lambda body: event_id in body)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"would {WARM_EVENT_DETAILS}('{event_id}',) -> re-published (was: TransientError: boom)" in lines
    assert re.fullmatch(r"\d+ dead letters examined \(dry run\)", lines[-1])
    assert int(lines[-1].split()[0]) == len(lines) - 1
    assert len(taken) == 1  # a dry run leaves the letter where it was


def test_provision_prints_its_report_as_json(settings, stack) -> None:
    result = CliRunner().invoke(main, ["provision", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["table"]["name"] == settings.table_name
    assert report["checkpoint_table"]["name"] == settings.checkpoint_table_name
    assert set(report["queues"]) == set(DLQ_OWNERS)
    assert [s["name"] for s in report["streams"]] == [settings.sms_status_stream_name]


def test_sales_rerun_reruns_an_ended_sale_and_refuses_anything_else(settings, stack) -> None:
    sales = SaleRecords(DemandTable(settings))
    ended, waiting = f"cli{uuid.uuid4().hex[:8]}", f"cli{uuid.uuid4().hex[:8]}"
    sales.put(Sale(id=ended, eventId="e1", notifyAt="1971-01-01T00:00:00Z"))
    assert sales.claim(ended, 31_536_000, 60) == "claimed"
    lease = sales.get(ended)["leaseUntil"]  # type: ignore[index]
    assert sales.finish(ended, lease, 31_536_001)
    sales.put(Sale(id=waiting, eventId="e1", notifyAt="2999-01-01T00:00:00Z"))

    result = CliRunner().invoke(main, ["sales", "rerun", ended])
    assert result.exit_code == 0, result.output
    assert sales.get(ended)["status"] == "waiting"  # type: ignore[index]

    refused = CliRunner().invoke(main, ["sales", "rerun", waiting])
    assert refused.exit_code == 1
    assert "not re-run" in refused.output
    assert CliRunner().invoke(main, ["sales", "rerun", "no-such-sale"]).exit_code == 1


def test_reconcile_prints_what_one_pass_did_as_json(stack) -> None:
    result = CliRunner().invoke(main, ["reconcile"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["reconcile"]["sales"] >= 0


def test_flower_on_a_network_address_needs_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMD_FLOWER_HOST", "0.0.0.0")
    monkeypatch.delenv("DMD_FLOWER_BASIC_AUTH", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["flower"])
    finally:
        monkeypatch.delenv("DMD_FLOWER_HOST")
        get_settings.cache_clear()
    assert result.exit_code == 1 and "needs DMD_FLOWER_BASIC_AUTH" in result.stderr, result.output


def test_provision_says_one_line_per_kind_of_resource(settings, stack) -> None:
    result = CliRunner().invoke(main, ["provision"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "table: ok" in lines and f"queues: {len(DLQ_OWNERS)} ok" in lines and "streams: 1 ok" in lines
