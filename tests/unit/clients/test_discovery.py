"""The Discovery client against the Discovery simulator (and a canned upstream for answers it never gives)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dmd_tasks.clients.discovery import DiscoveryClient, EventNotFound
from dmd_tasks.clients.http import UpstreamRefused
from dmd_tasks.domain.errors import PermanentError, RateLimited, TransientError


@pytest.fixture()
def discovery(settings, stack) -> DiscoveryClient:
    return DiscoveryClient.from_settings(settings)


def new_id() -> str:
    return f"ev{uuid.uuid4().hex[:10]}"


def test_an_event_is_normalized_from_discoverys_document(discovery: DiscoveryClient, sim) -> None:
    event_id = new_id()
    details = discovery.event(event_id)

    assert details.id == event_id and details.name == f"Simulated Event {event_id}"
    assert details.url == f"https://www.ticketmaster.com/event/{event_id}"
    assert (details.startLocalTime, details.timezone) == ("19:30:00", "America/New_York")
    assert details.startDateTime is not None and details.startDateTime.endswith("T23:30:00Z")
    assert details.venue is not None
    assert (details.venue.name, details.venue.city, details.venue.stateCode, details.venue.countryCode) == (
        "Simulated Arena",
        "New York",
        "NY",
        "US",
    )
    assert details.venue.address == "4 Penn Plaza"
    assert details.sales is not None and details.sales.publicStartDateTime == "2026-12-01T15:00:00Z"
    assert [p.name for p in details.sales.presales] == ["Fan presale"]
    assert sim.stats()["discovery"]["calls_by_event"][event_id] == 1


def test_an_unknown_event_is_event_not_found(discovery: DiscoveryClient) -> None:
    with pytest.raises(EventNotFound, match="not found") as raised:
        discovery.event(f"missing{uuid.uuid4().hex[:8]}")
    assert isinstance(raised.value, PermanentError)


def test_a_refused_api_key_is_permanent_and_not_in_the_message(settings, stack) -> None:
    client = DiscoveryClient(settings.discovery_base_url, "leaked-discovery-key")
    with pytest.raises(UpstreamRefused) as raised:
        client.event(new_id())
    assert raised.value.status_code == 401
    assert not isinstance(raised.value, EventNotFound)
    assert "leaked-discovery-key" not in str(raised.value)


def test_a_server_error_is_transient(discovery: DiscoveryClient, faults) -> None:
    faults("discovery", error_rate=1.0)
    with pytest.raises(TransientError, match="upstream error 50") as raised:
        discovery.event(new_id())
    assert not isinstance(raised.value, RateLimited)


def test_a_quota_violation_is_rate_limited_with_its_retry_after(discovery: DiscoveryClient, faults) -> None:
    faults("discovery", throttle_rate=1.0, throttle_retry_after=5)
    with pytest.raises(RateLimited) as raised:
        discovery.event(new_id())
    assert raised.value.retry_after_seconds == 5.0


def test_a_call_that_outlasts_the_timeout_is_transient(settings, faults) -> None:
    client = DiscoveryClient(
        settings.discovery_base_url, settings.discovery_api_key.get_secret_value(), timeout_seconds=0.2
    )
    faults("discovery", timeout_rate=1.0, timeout_ms=1000)
    with pytest.raises(TransientError, match=r"timed out after 0\.2s") as raised:
        client.event(new_id())
    assert settings.discovery_api_key.get_secret_value() not in str(raised.value)


def test_a_sparse_event_is_normalized_with_what_it_has(canned) -> None:
    canned.answer("GET", "/discovery/v2/events/e1.json", 200, {"id": "e1"})
    details = DiscoveryClient(canned.url, "k").event("e1")
    assert (details.id, details.name, details.venue, details.startDateTime) == ("e1", "", None, None)
    assert details.sales is not None and details.sales.presales == []


@pytest.mark.parametrize("body", [{"name": "no id"}, b"<html>maintenance</html>", {"id": "e1", "url": 5}])
def test_an_answer_that_is_not_an_event_is_permanent(canned, body: Any) -> None:
    canned.answer("GET", "/discovery/v2/events/e1.json", 200, body)
    with pytest.raises(PermanentError, match="discovery event: unexpected response"):
        DiscoveryClient(canned.url, "k").event("e1")


@pytest.mark.parametrize(
    "body",
    [
        [{"id": "e1"}],
        {"id": "e1", "dates": "2027-03-01"},
        {"id": "e1", "_embedded": {"venues": ["Simulated Arena"]}},
    ],
    ids=["array-body", "dates-not-an-object", "venue-not-an-object"],
)
def test_an_answer_with_the_wrong_shape_is_permanent(canned, body: Any) -> None:
    canned.answer("GET", "/discovery/v2/events/e1.json", 200, body)
    with pytest.raises(PermanentError, match="discovery event: unexpected response"):
        DiscoveryClient(canned.url, "k").event("e1")
