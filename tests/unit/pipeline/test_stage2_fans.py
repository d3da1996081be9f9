"""Stage 2 with real-world demand rows: phone formats, shared numbers, bad fields, offset notify times.

Called directly against moto (no workers): one SMS per phone per sale, and a bad row is one
fan's problem, never the sale's.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.entities import Event, Sale, parse_instant
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.pipeline.stage2_generate import claim_due_sales, generate_sale
from dmd_tasks.services import Services
from dmd_tasks.store.codec import iso
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import demand_key, sale_key
from tests.queues import Queues
from tests.unit.pipeline.conftest import ALWAYS_OPEN, notifications_of


def _event(services: Services) -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    event = Event(id=f"ev{run}", name="Show", url=f"https://www.ticketmaster.com/e/{run}", shortUrl="https://bit.ly/x")
    services.table.put_items([item(event)])
    return run, event.id


def _sale(services: Services, run: str, event_id: str, **campaign: Any) -> str:
    sale_id = f"sale{run}"
    services.campaigns.put(
        Campaign(saleId=sale_id, eventId=event_id, template="{{ short_url }}", window=ALWAYS_OPEN, **campaign)
    )
    services.table.put_items([item(Sale(id=sale_id, eventId=event_id, notifyAt=iso(time.time() - 1)))])
    return sale_id


def _raw_rows(services: Services, event_id: str, rows: dict[str, dict[str, Any]]) -> None:
    """Demand rows exactly as written here, whatever their attributes hold (the product is not us)."""
    services.table.put_items(
        {**demand_key(event_id, key), "entity": "DEMAND", "eventId": event_id, **attributes}
        for key, attributes in rows.items()
    )


def _generate(services: Services, sale_id: str) -> dict[str, dict[str, Any]]:
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    while (result := generate_sale(sale_id, services)).outcome == "continue":
        pass
    assert result.outcome == "done"
    assert services.sales.get(sale_id)["status"] == "generated"  # type: ignore[index]
    return {i["fanId"]: i for i in notifications_of(services, sale_id)}


@pytest.fixture()
def services(stack) -> Services:
    return Services(load_settings(generate_chunk_size=5, generate_chunks_per_run=2))


def test_fans_sharing_a_number_in_any_format_get_one_sms_across_chunks_and_reruns(services: Services) -> None:
    # Given one number written four ways by four fans, spread over several chunks of five rows
    run, event_id = _event(services)
    area = int(run, 16) % 800 + 200
    shared = f"+1{area}5550100"
    forms = [shared, f"+1 {area} 555 0100", f"{shared}\n", f"({area}) 555-0100"]
    rows = {f"fan{i:03d}": {"fanId": f"fan{i:03d}", "phone": f"+1{area}555{1000 + i:04d}"} for i in range(12)}
    for n, form in zip((0, 4, 7, 11), forms, strict=True):
        rows[f"fan{n:03d}"]["phone"] = form
    _raw_rows(services, event_id, rows)
    sale_id = _sale(services, run, event_id, phoneRegion="US")

    # When the sale is generated
    by_fan = _generate(services, sale_id)

    # Then the first fan gets the SMS, in E.164; the three others are duplicates naming that fan
    assert by_fan["fan000"]["status"] == "pending" and by_fan["fan000"]["phone"] == shared
    for fan in ("fan004", "fan007", "fan011"):
        assert by_fan[fan]["status"] == "duplicate", fan
        assert by_fan[fan]["duplicateOf"] == "fan000"
        assert "fan000" in by_fan[fan]["reason"]
    assert sum(1 for i in by_fan.values() if i["status"] == "pending") == 9

    # And an operator's re-run (every fan checked again) changes nothing
    assert services.sales.rerun(sale_id, time.time())
    again = _generate(services, sale_id)
    assert {f: i["status"] for f, i in again.items()} == {f: i["status"] for f, i in by_fan.items()}


def test_an_opt_out_is_found_whatever_the_format_of_the_number(services: Services) -> None:
    run, event_id = _event(services)
    area = int(run, 16) % 800 + 200
    _raw_rows(
        services,
        event_id,
        {
            "fan1": {"fanId": "fan1", "phone": f"+1{area}5550111\n"},  # stored with a trailing newline
            "fan2": {"fanId": "fan2", "phone": f"+1 {area} 555 0122"},
        },
    )
    services.demand.add_optout(f"+1{area}5550111", time.time())
    services.demand.add_optout(f"+1{area}5550122", time.time())
    by_fan = _generate(services, _sale(services, run, event_id))
    assert by_fan == {}


def test_a_bad_row_is_one_fans_problem(services: Services, queues: Queues) -> None:
    # Given twenty good fans and rows with a numeric time zone, a list for a phone, an unknown zone,
    # a national number with no region to read it, and rows with no usable fan id
    services = Services(
        load_settings(
            generate_chunk_size=5, generate_chunks_per_run=2, queue_name_prefix=queues.settings.queue_name_prefix
        )
    )
    run, event_id = _event(services)
    area = int(run, 16) % 800 + 200
    rows: dict[str, dict[str, Any]] = {
        f"good{i:02d}": {"fanId": f"good{i:02d}", "phone": f"+1{area}555{2000 + i:04d}", "timezone": "Europe/Paris"}
        for i in range(20)
    }
    rows["bad-tz"] = {"fanId": "bad-tz", "phone": f"+1{area}5553001", "timezone": Decimal(5)}
    rows["bad-list"] = {"fanId": "bad-list", "phone": [f"+1{area}5553002"]}
    rows["bad-zone"] = {"fanId": "bad-zone", "phone": f"+1{area}5553003", "timezone": "Mars/Olympus"}
    rows["bad-national"] = {"fanId": "bad-national", "phone": f"({area}) 555-3004"}
    rows["bad-id"] = {"fanId": "bad.id", "phone": f"+1{area}5553005"}
    rows["no-fan"] = {"phone": f"+1{area}5553006"}
    rows["num-fan"] = {"fanId": Decimal(7), "phone": f"+1{area}5553007"}
    _raw_rows(services, event_id, rows)
    sale_id = _sale(services, run, event_id)

    # When the sale is generated
    by_fan = _generate(services, sale_id)

    # Then every good fan is pending, each bad one failed with its own reason, and the sale is done
    assert {by_fan[f"good{i:02d}"]["status"] for i in range(20)} == {"pending"}
    reasons = {fan: by_fan[fan]["reason"] for fan in ("bad-tz", "bad-list", "bad-zone", "bad-national", "bad.id")}
    assert {by_fan[fan]["status"] for fan in reasons} == {"failed"}
    assert "time zone" in reasons["bad-tz"] and "Decimal" in reasons["bad-tz"]
    assert "phone" in reasons["bad-list"] and "list" in reasons["bad-list"]
    assert "time zone" in reasons["bad-zone"]
    assert "country code" in reasons["bad-national"]
    assert "fan id" in reasons["bad.id"]
    assert len(by_fan) == 25

    # And the rows without a usable fan id are dead letters with the reason and the row's key, no number
    letters = queues.dead_letters("generate")
    assert sorted(letter["payload"]["key"]["sk"] for letter in letters) == ["DEMAND#no-fan", "DEMAND#num-fan"]
    assert all("fanId" in letter["reason"] and sale_id in letter["reason"] for letter in letters)
    assert not any(f"{area}5553006" in str(letter) or f"{area}5553007" in str(letter) for letter in letters)


def test_a_notify_time_with_an_offset_is_compared_as_an_instant(services: Services) -> None:
    run, event_id = _event(services)
    now = time.time()
    in_two_hours = time.strftime("%Y-%m-%dT%H:%M:%S-05:00", time.gmtime(now + 2 * 3600 - 5 * 3600))
    sale = Sale(id=f"sale{run}", eventId=event_id, notifyAt=in_two_hours)
    assert sale.notify_at == iso(now + 2 * 3600)  # stored normalized to UTC
    # written raw by the product, in offset form: the index sorts it three hours "earlier"
    services.table.put_items([{**item(sale), "notifyAt": in_two_hours, "gsi1sk": in_two_hours}])
    assert sale.id not in {s["id"] for s in services.sales.due(now)}
    assert sale.id in {s["id"] for s in services.sales.due(now + 2 * 3600 + 1)}
    # east of UTC it sorts later than its instant, and is still found once due
    east = time.strftime("%Y-%m-%dT%H:%M:%S+09:00", time.gmtime(now - 60 + 9 * 3600))
    services.table.put_items(
        [{**item(sale), "id": f"east{run}", **sale_key(f"east{run}"), "notifyAt": east, "gsi1sk": east}]
    )
    assert f"east{run}" in {s["id"] for s in services.sales.due(now)}


def test_an_unreadable_notify_time_fails_the_sale_with_the_reason(services: Services) -> None:
    run, event_id = _event(services)
    sale_id = f"sale{run}"
    services.table.put_items(
        [{**item(Sale(id=sale_id, eventId=event_id, notifyAt=iso(time.time()))), "notifyAt": "soon", "gsi1sk": "2000"}]
    )
    claim_due_sales.run()
    sale = services.sales.get(sale_id)
    assert sale is not None and sale["status"] == "failed"
    assert "ISO-8601" in sale["reason"]
    assert sale_id not in {s["id"] for s in services.sales.due(time.time())}


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00Z"),
        ("2026-11-25T10:00:00-05:00", "2026-11-25T15:00:00Z"),
        ("2026-11-25T10:00:00+05:30", "2026-11-25T04:30:00Z"),
        ("2026-11-25T10:00:00.250+00:00", "2026-11-25T10:00:00Z"),
        ("2026-11-25T10:00:00", "2026-11-25T10:00:00Z"),
    ],
)
def test_notify_times_parse_with_any_offset(written: str, utc: str) -> None:
    assert Sale(id="s", eventId="e", notifyAt=written).notify_at == utc


@pytest.mark.parametrize("bad", ["soon", "2026-11-25", "", 1764064800, "2026-13-01T00:00:00Z"])
def test_unreadable_notify_times_are_refused_with_the_reason(bad: object) -> None:
    with pytest.raises(ValueError, match="notifyAt"):
        parse_instant(bad)
