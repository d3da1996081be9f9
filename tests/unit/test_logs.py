from __future__ import annotations

import io
import json
import logging

from dmd_tasks import logs


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
