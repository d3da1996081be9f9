"""JSON log lines with the correlation id, and masking of phone numbers and secrets.

A bridge assigns a correlation id per stream record; it travels in the Celery message
headers (``dmd_correlation_id``: Celery's own ``correlation_id`` is the task id) so every
task down the chain logs the same id.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

#: Celery message header carrying the correlation id down the chain.
CORRELATION_HEADER = "dmd_correlation_id"

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
task_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("task_context", default=None)

# E.164 phone numbers (the only form dmd stores): keep "+", the first digit and the last two.
_PHONE = re.compile(r"(?<![\w+])(\+\d)\d{5,12}(\d{2})(?!\d)")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_KEY_PARAM = re.compile(r"(?i)((?:apikey|api_key|token|secret|password|client_secret)=)[^&\s\"']+")


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def mask_phone(phone: str) -> str:
    """``+14155550123`` → ``+1*******23``: enough to tell numbers apart in a log, not to dial."""
    digits = phone.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    return digits[:2] + "*" * (len(digits) - 4) + digits[-2:]


def redact(text: str) -> str:
    """Mask phone numbers, bearer tokens and key-like query parameters in free text."""
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _KEY_PARAM.sub(r"\1[redacted]", text)
    return _PHONE.sub(lambda m: m.group(1) + "*****" + m.group(2), text)


#: Keys whose values are a phone number, in dmd's own records and the providers' events.
PHONE_KEYS = frozenset(
    {
        "phone",
        "sender",
        "to",
        "originationNumber",
        "destinationNumber",
        "destinationPhoneNumber",
        "DestinationPhoneNumber",
        "originationPhoneNumber",
    }
)
#: Keys whose values are what a fan wrote or was sent.
BODY_KEYS = frozenset({"body", "messageBody", "MessageBody"})


def masked(value: Any) -> Any:
    """``value`` (task arguments, a dead letter, an event) with phone numbers and message bodies
    masked as logs mask them, at any depth: for Flower's events and ``dmd dlq list``."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if key in PHONE_KEYS and isinstance(item, str):
                out[key] = mask_phone(item)
            elif key in BODY_KEYS and isinstance(item, str):
                out[key] = f"[{len(item)} characters]"
            else:
                out[key] = masked(item)
        return out
    if isinstance(value, list | tuple):
        return type(value)(masked(item) for item in value)
    if isinstance(value, str):
        return redact(value)
    return value


#: The correlation id of lines logged outside any record, task or request (start-up, idling):
#: the process itself, so that every line carries one.
_process_correlation_id = f"proc-{os.getpid()}"


class ContextFilter(logging.Filter):
    """Adds the correlation id and task fields to every record, and redacts the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get() or _process_correlation_id
        ctx = task_context.get()
        if ctx:
            for key, value in ctx.items():
                setattr(record, key, value)
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        record.msg = redact(str(record.msg))
        data = getattr(record, "data", None)
        if isinstance(data, dict):  # Celery's task logs carry args/kwargs/results here
            record.data = {k: redact(v) if isinstance(v, str) else v for k, v in data.items()}
        if record.exc_info:
            # Tracebacks quote exception messages (a URL with its apikey, say): redact them too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def utc_time(record: logging.LogRecord) -> str:
    """A log line's time: ISO-8601 in UTC, to the millisecond (``2026-12-07T12:00:00.123Z``),
    the same on every machine whatever its time zone."""
    return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _UtcJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return utc_time(record)


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return utc_time(record)


def configure(level: str = "INFO", *, json_lines: bool = True, process: str | None = None) -> None:
    """Send every log line of this process to stderr, as JSON unless told otherwise."""
    global _process_correlation_id
    _process_correlation_id = f"{process or 'proc'}-{os.getpid()}"
    logging.captureWarnings(True)  # Python warnings become log lines too (JSON, redacted)
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        static = {"process_name": process} if process else None
        handler.setFormatter(
            _UtcJsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields=static,
            )
        )
    else:
        handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log request bodies or headers at DEBUG stay at INFO.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
