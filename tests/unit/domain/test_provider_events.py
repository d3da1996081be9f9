"""Provider events: delivery statuses and inbound replies, validated with a reason."""

from __future__ import annotations

import pytest

from dmd_tasks.domain.provider_events import InboundEvent, StatusEvent, parse_event


def test_parse_status_and_inbound() -> None:
    event = parse_event(
        {"type": "status", "message_id": "SM1", "status": "delivered", "timestamp": "t", "reference": "s:f"}
    )
    assert isinstance(event, StatusEvent) and event.reference == "s:f"
    inbound = parse_event({"type": "inbound", "sender": "+15550001111", "body": "STOP", "timestamp": "t"})
    assert isinstance(inbound, InboundEvent)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ([], "not an object"),
        ({"type": "bounce"}, "unknown event type"),
        ({"type": "status", "status": "delivered", "timestamp": "t"}, "message_id"),
    ],
)
def test_invalid_events(raw: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_event(raw)


@pytest.mark.parametrize(
    "body, stop", [("STOP", True), ("  stop \n", True), ("Unsubscribe", True), ("stop please", False), ("hello", False)]
)
def test_only_a_stop_word_opts_out(body: str, stop: bool) -> None:
    assert InboundEvent(type="inbound", sender="+15550001111", body=body, timestamp="t").is_stop is stop
