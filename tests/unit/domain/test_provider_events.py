"""Provider events: delivery statuses and inbound replies, validated with a reason."""

from __future__ import annotations

import pytest

from dmd_tasks.domain.provider_events import InboundEvent, StatusEvent, parse_eum_event, parse_event


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


# ---- End User Messaging SMS ---------------------------------------------------------------------

#: The service's documented example of an SMS event, with our Context.
EUM_EXAMPLE = {
    "eventType": "TEXT_SUCCESSFUL",
    "eventVersion": "1.0",
    "eventTimestamp": 1686975103470,
    "isFinal": True,
    "originationPhoneNumber": "+12065550152",
    "destinationPhoneNumber": "+14255550156",
    "isoCountryCode": "US",
    "mcc": "310",
    "mnc": "800",
    "messageId": "862a8790-60c0-4430-9b2b-658bdexample",
    "messageRequestTimestamp": 1686975103170,
    "messageEncoding": "GSM",
    "messageType": "PROMOTIONAL",
    "messageStatus": "SUCCESSFUL",
    "messageStatusDescription": "Message has been accepted by phone carrier",
    "context": {"notificationId": "sale1:fan1"},
    "totalMessageParts": 1,
    "totalMessagePrice": 0.09582,
    "totalCarrierFee": 0.0,
}


def test_an_end_user_messaging_event_is_a_status_of_its_message_and_notification() -> None:
    event = parse_eum_event(EUM_EXAMPLE)
    assert isinstance(event, StatusEvent)
    assert (event.message_id, event.status, event.reference) == (EUM_EXAMPLE["messageId"], "delivered", "sale1:fan1")
    assert event.timestamp == "2023-06-17T04:11:43.470000+00:00"


@pytest.mark.parametrize(
    "kind, status",
    [
        ("TEXT_DELIVERED", "delivered"),
        ("TEXT_CARRIER_BLOCKED", "failed"),
        ("TEXT_INVALID", "failed"),
        ("TEXT_UNREACHABLE", "undelivered"),
        ("TEXT_TTL_EXPIRED", "undelivered"),
        ("TEXT_UNKNOWN", "undelivered"),
        ("TEXT_QUEUED", "queued"),  # intermediate: stage 5 ignores it
        ("TEXT_PENDING", "pending"),
    ],
)
def test_each_end_user_messaging_event_type_means_one_status(kind: str, status: str) -> None:
    assert parse_eum_event({**EUM_EXAMPLE, "eventType": kind}).status == status  # type: ignore[union-attr]


def test_a_temporary_error_the_service_still_retries_is_not_final() -> None:
    event = parse_eum_event({**EUM_EXAMPLE, "eventType": "TEXT_CARRIER_UNREACHABLE", "isFinal": False})
    assert isinstance(event, StatusEvent) and event.status == "pending"


@pytest.mark.parametrize("kind", ["TEXT_DELIVERED", "TEXT_BLOCKED", "TEXT_UNKNOWN"])
def test_an_event_the_service_calls_not_final_is_never_a_final_status(kind: str) -> None:
    event = parse_eum_event({**EUM_EXAMPLE, "eventType": kind, "isFinal": False})
    assert isinstance(event, StatusEvent) and event.status == "pending"


def test_an_event_without_our_context_still_names_its_message() -> None:
    event = parse_eum_event({k: v for k, v in EUM_EXAMPLE.items() if k != "context"})
    assert isinstance(event, StatusEvent) and event.reference is None and event.message_id


def test_a_reply_through_two_way_sms_is_an_inbound_event() -> None:
    reply = {
        "originationNumber": "+14255550182",
        "destinationNumber": "+12125550101",
        "messageKeyword": "JOIN",
        "messageBody": "STOP",
        "inboundMessageId": "cae173d2-66b9-564c-8309-21f858e9fb84",
        "previousPublishedMessageId": "wJ0kSPHUYWY9b8SJy2T0Np9uUBIL9AdVESTy8qJQPhQEXAMPLE",
    }
    event = parse_eum_event(reply, received_at="2026-12-05T10:00:00Z")
    assert isinstance(event, InboundEvent) and event.is_stop and event.sender == "+14255550182"


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("TEXT_DELIVERED", "not an object"),
        ({**EUM_EXAMPLE, "eventType": None}, "no eventType"),
        ({**EUM_EXAMPLE, "messageId": ""}, "no messageId"),
        ({**EUM_EXAMPLE, "eventType": "TEXT_SOMETHING_NEW"}, "unknown End User Messaging event type"),
        ({**EUM_EXAMPLE, "eventTimestamp": "yesterday"}, "eventTimestamp"),
        ({**EUM_EXAMPLE, "eventTimestamp": 1e300}, "eventTimestamp is out of range"),
        ({**EUM_EXAMPLE, "eventType": "TEXT_FAILED", "isFinal": False}, "unknown End User Messaging event type"),
        ({**EUM_EXAMPLE, "messageId": "m" * 300}, "message_id"),
        ({"originationNumber": "+14255550182"}, "messageBody"),
    ],
)
def test_an_end_user_messaging_event_that_cannot_be_read_says_why(raw: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_eum_event(raw)
