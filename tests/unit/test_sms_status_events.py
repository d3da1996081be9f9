from __future__ import annotations

import pytest

from bridges.kinesis_sms_status import plan_status_page
from dmd_tasks.sms_status import InboundEvent, StatusEvent, parse_event


def test_parse_status_and_inbound() -> None:
    event = parse_event({"type": "status", "message_id": "SM1", "status": "delivered", "timestamp": "t",
                         "reference": "s:f"})
    assert isinstance(event, StatusEvent) and event.reference == "s:f"
    inbound = parse_event({"type": "inbound", "sender": "+15550001111", "body": "STOP", "timestamp": "t"})
    assert isinstance(inbound, InboundEvent)


@pytest.mark.parametrize("raw, reason", [
    ([], "not an object"),
    ({"type": "bounce"}, "unknown event type"),
    ({"type": "status", "status": "delivered", "timestamp": "t"}, "message_id"),
])
def test_invalid_events(raw: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_event(raw)


def test_status_page_batches_valid_events_and_dead_letters_the_rest() -> None:
    good = b'{"type": "status", "message_id": "SM1", "status": "delivered", "timestamp": "t"}'
    records = [{"SequenceNumber": str(i), "Data": good} for i in range(30)]
    records.insert(5, {"SequenceNumber": "x", "Data": b"\x00garbage"})
    records.insert(9, {"SequenceNumber": "y", "Data": b'{"type": "status"}'})
    calls, letters = plan_status_page(records, batch_size=25)
    assert [len(c.args[0]) for c in calls] == [25, 5]
    assert [letter.reason for letter in letters][0] == "record is not JSON"
    assert "invalid status event" in letters[1].reason


def test_oversize_records_are_dead_lettered_and_the_letter_fits_in_sqs() -> None:
    from dmd_tasks.deadletter import SQS_MAX_MESSAGE_BYTES

    huge = {"SequenceNumber": "1", "Data": b'{"type": "status", "pad": "' + b"x" * 600_000 + b'"}'}
    calls, letters = plan_status_page([huge], batch_size=25)
    assert calls == []
    assert letters[0].reason.startswith("record is 600")
    body = letters[0].to_body()
    assert len(body.encode()) < SQS_MAX_MESSAGE_BYTES
    assert "(payload truncated)" in body
