"""Entities: id validation where they are built, notify times, and the status sets (no network)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dmd_tasks.domain.entities import (
    TERMINAL_STATUSES,
    Demand,
    Entity,
    Event,
    NotificationStatus,
    Sale,
    SaleStatus,
    ShortenRequest,
)


def test_event_reads_its_stored_item_by_alias_and_ignores_the_keys() -> None:
    stored = {
        "pk": "EVENT#ev1",
        "sk": "EVENT",
        "entity": "EVENT",
        "id": "ev1",
        "url": "https://t.co/e",
        "shortUrl": "s",
    }
    event = Event.model_validate(stored)
    assert (event.id, event.url, event.short_url, event.name) == ("ev1", "https://t.co/e", "s", "")
    assert Event(id="ev1", url="u", short_url="by-name").short_url == "by-name"  # type: ignore[call-arg]


@pytest.mark.parametrize("bad", ["ev 1", "ev1\n", "", "x" * 65, "EVENT#ev1"])
def test_event_refuses_a_malformed_id(bad: str) -> None:
    with pytest.raises(ValidationError, match="ids are"):
        Event(id=bad, url="https://t.co/e")


def test_demand_is_built_by_alias_or_by_name_and_its_id_joins_event_and_fan() -> None:
    by_alias = Demand.model_validate({"eventId": "ev1", "fanId": "fan1", "phone": "+15550001234"})
    by_name = Demand(event_id="ev1", fan_id="fan1", phone="+15550001234", timezone="Europe/Paris")  # type: ignore[call-arg]
    assert by_alias.id == by_name.id == "ev1:fan1"
    assert by_alias.timezone == "UTC"
    assert by_name.timezone == "Europe/Paris"


@pytest.mark.parametrize(("event_id", "fan_id"), [("ev 1", "fan1"), ("ev1", "fan1\n"), ("ev1", ""), ("ev1", "a:b")])
def test_demand_refuses_malformed_event_or_fan_ids(event_id: str, fan_id: str) -> None:
    with pytest.raises(ValidationError, match="ids are"):
        Demand(eventId=event_id, fanId=fan_id, phone="+15550001234")


def test_shorten_request_refuses_a_malformed_event_id() -> None:
    assert ShortenRequest(event_id="ev_1").event_id == "ev_1"
    with pytest.raises(ValidationError, match="ids are"):
        ShortenRequest(event_id="ev1/../x")


def test_a_new_sale_is_waiting_with_nothing_generated() -> None:
    sale = Sale(id="sale1", eventId="ev1", notifyAt="2026-11-25T10:00:00Z")
    assert sale.status is SaleStatus.WAITING
    assert (sale.cursor, sale.generated) == (None, 0)


def test_a_stored_sale_reads_its_status_from_the_string() -> None:
    sale = Sale.model_validate(
        {"id": "sale1", "eventId": "ev1", "notifyAt": "2026-11-25T10:00:00Z", "status": "generating", "cursor": "f9"}
    )
    assert sale.status is SaleStatus.GENERATING
    assert sale.cursor == "f9"
    with pytest.raises(ValidationError):
        Sale(id="sale1", eventId="ev1", notifyAt="2026-11-25T10:00:00Z", status="paused")  # type: ignore[arg-type]


@pytest.mark.parametrize(("sale_id", "event_id"), [("sale 1", "ev1"), ("sale1", "ev1\n"), ("", "ev1")])
def test_sale_refuses_malformed_sale_or_event_ids(sale_id: str, event_id: str) -> None:
    with pytest.raises(ValidationError, match="ids are"):
        Sale(id=sale_id, eventId=event_id, notifyAt="2026-11-25T10:00:00Z")


def test_only_delivered_undelivered_failed_duplicate_and_unknown_are_terminal() -> None:
    assert {
        NotificationStatus.DELIVERED,
        NotificationStatus.UNDELIVERED,
        NotificationStatus.FAILED,
        NotificationStatus.DUPLICATE,
        NotificationStatus.UNKNOWN,
    } == TERMINAL_STATUSES
    for status in (
        NotificationStatus.PENDING,
        NotificationStatus.SCHEDULED,
        NotificationStatus.SENDING,
        NotificationStatus.UNCONFIRMED,
    ):
        assert status not in TERMINAL_STATUSES
    assert NotificationStatus.SENT not in TERMINAL_STATUSES  # a receipt still moves it


def test_status_and_entity_values_are_the_strings_stored_in_the_table() -> None:
    assert [s.value for s in NotificationStatus] == [
        "pending",
        "scheduled",
        "sending",
        "unconfirmed",
        "sent",
        "delivered",
        "undelivered",
        "failed",
        "duplicate",
        "unknown",
    ]
    assert [s.value for s in SaleStatus] == ["waiting", "generating", "generated", "failed"]
    assert {e.value for e in Entity} == {
        "EVENT",
        "DEMAND",
        "SALE",
        "SALE_RUN",
        "NOTIFICATION",
        "OPTOUT",
        "PHONE_CLAIM",
    }
    assert NotificationStatus("sent") == "sent"  # StrEnum: compares equal to what DynamoDB returns
