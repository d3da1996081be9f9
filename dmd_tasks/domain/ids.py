"""Ids, and the one notification id.

Ids (event, fan, sale, account) travel in keys, URLs and message bodies: letters, digits,
``_`` and ``-`` only, 1 to 64 characters. A notification's id is ``<saleId>:<fanId>``,
derived from the sale and the fan, so generating twice names the same notification; it is
also the reference (idempotency key) the SMS provider echoes in delivery receipts.
"""

from __future__ import annotations

import re

#: Ids travel in keys and URLs: letters, digits, ``_`` and ``-`` only, bounded length.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ID_RULE = "1-64 characters of letters, digits, '_' or '-'"


def is_valid_id(value: object) -> bool:
    """True for a string that is a well-formed id (``$`` alone would admit a trailing newline)."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: str) -> str:
    """``value`` if it is a well-formed id; ValueError otherwise (usable as a pydantic validator)."""
    if not is_valid_id(value):
        raise ValueError(f"ids are {ID_RULE}")
    return value


def notification_id(sale_id: str, fan_id: str) -> str:
    """The notification's id, also the SMS provider's idempotency key."""
    return f"{sale_id}:{fan_id}"


def split_notification_id(value: str) -> tuple[str, str]:
    """(sale id, fan id) of a notification id; ValueError if ``value`` is not one."""
    if not isinstance(value, str):
        raise ValueError("a notification id is a string")
    sale_id, sep, fan_id = value.partition(":")
    if not sep or not is_valid_id(sale_id) or not is_valid_id(fan_id):
        raise ValueError(f"not a notification id: {value[:80]!r}")
    return sale_id, fan_id
