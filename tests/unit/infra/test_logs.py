from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest

from dmd_tasks.infra import logs


def test_redact_masks_phones_tokens_and_keys_but_not_other_numbers() -> None:
    text = logs.redact("to +14155550123 via Bearer sekrit.tok apikey=K3Y&x=1 table 123456789012 seq 4959012345678")
    assert "+14155550123" not in text and "+1*****23" in text
    assert "sekrit.tok" not in text and "K3Y" not in text
    assert "123456789012" in text and "4959012345678" in text


def test_json_lines_carry_correlation_id_and_masked_message() -> None:
    stream = io.StringIO()
    logs.configure("INFO", json_lines=True, process="test")
    handler = logging.getLogger().handlers[0]
    handler.stream = stream  # type: ignore[attr-defined]
    token = logs.correlation_id.set("corr-1")
    try:
        logging.getLogger("x").info("sending to %s", "+447700900123")
    finally:
        logs.correlation_id.reset(token)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["correlation_id"] == "corr-1"
    assert line["message"] == "sending to +4*****23"
    assert line["process_name"] == "test"


def test_celery_style_extra_data_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    logs.configure("INFO", json_lines=True)
    handler = logging.getLogger().handlers[0]
    handler.stream = stream  # type: ignore[attr-defined]
    log = logging.getLogger("celery.app.trace")
    log.info(
        "Task %(name)s received",
        {"name": "t"},
        extra={"data": {"args": "([{'sender': '+447700900123', 'body': 'STOP'}],)", "id": "x"}},
    )
    try:
        raise ConnectionError("GET https://app.example.com/e.json?apikey=SEKRIT failed")
    except ConnectionError:
        log.exception("boom")
    text = stream.getvalue()
    assert "+447700900123" not in text and "SEKRIT" not in text
    first, second = (json.loads(line) for line in text.strip().splitlines()[-2:])
    assert first["data"]["args"] == "([{'sender': '+4*****23', 'body': 'STOP'}],)"
    assert "apikey=[redacted]" in second["exc_info"]


def test_masked_hides_phone_numbers_and_message_bodies_at_any_depth() -> None:
    letter = {
        "reason": "failed for +14155550123",
        "payload": {
            "args": [[{"type": "inbound", "sender": "+14155550123", "body": "STOP"}]],
            "event": {"destinationPhoneNumber": "+442071838750", "messageBody": "hi", "eventType": "TEXT_DELIVERED"},
        },
        "count": 3,
    }
    shown = logs.masked(letter)
    text = json.dumps(shown)
    assert "4155550123" not in text and "2071838750" not in text and "STOP" not in text
    assert shown["payload"]["args"][0][0]["sender"] == "+1********23"
    assert shown["payload"]["args"][0][0]["body"] == "[4 characters]"
    assert shown["payload"]["event"]["eventType"] == "TEXT_DELIVERED" and shown["count"] == 3
    # the original is untouched
    assert letter["payload"]["args"][0][0]["sender"] == "+14155550123"  # type: ignore[index]


def test_log_times_are_utc_iso_8601_to_the_millisecond() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1_765_108_800.123456  # 2025-12-07 12:00:00.123456 UTC
    assert logs.utc_time(record) == "2025-12-07T12:00:00.123Z"
    assert datetime.fromisoformat(logs.utc_time(record)).timestamp() == pytest.approx(record.created, abs=0.001)
