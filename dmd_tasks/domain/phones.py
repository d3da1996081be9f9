"""Phone numbers: every number that enters the pipeline is normalized to E.164 with ``phonenumbers``.

A fan's number is compared with other fans' (one SMS per phone per sale) and with the
opt-out list (a STOP from any format of the number is honoured) only in its normalized form.

What counts as a number: one that parses (a national format needs a default region: the
campaign's ``phoneRegion`` or the ``DMD_PHONE_DEFAULT_REGION`` setting) and has a possible
length for its country (``is_possible_number``). Number-plan *validity*
(``is_valid_number``) is not required: its metadata lags new ranges, and refusing a real
fan because the library is a release behind is worse than letting the provider refuse an
unassigned number (a permanent error: the notification ends ``failed`` with the reason).
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

#: Longer input is refused before parsing (an E.164 number has at most 15 digits; formats add a few characters).
MAX_PHONE_INPUT_CHARS = 64

_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short for its country",
    ValidationResult.TOO_LONG: "too long for its country",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number without its area code",
    ValidationResult.INVALID_LENGTH: "a length its country does not use",
}


class InvalidPhone(ValueError):
    """A phone number that cannot be messaged; ``str()`` is the reason (it never contains the number)."""


def normalize_phone(raw: object, default_region: str | None = None) -> str:
    """``raw`` in E.164 (``+`` and digits), or InvalidPhone with the reason.

    ``default_region`` (ISO 3166 alpha-2, e.g. ``US``) reads national formats; without it a
    number must carry its country code.
    """
    if not isinstance(raw, str):
        raise InvalidPhone(f"invalid phone number: a {type(raw).__name__}, not a string")
    text = raw.strip()
    if not text:
        raise InvalidPhone("invalid phone number: empty")
    if len(text) > MAX_PHONE_INPUT_CHARS:
        raise InvalidPhone(f"invalid phone number: longer than {MAX_PHONE_INPUT_CHARS} characters")
    return _normalize(text, (default_region or "").upper() or None)


@lru_cache(maxsize=4096)
def _normalize(text: str, region: str | None) -> str:
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            if text.startswith("+"):
                raise InvalidPhone("invalid phone number: unknown country code") from None
            raise InvalidPhone("invalid phone number: no country code, and no default region to read it in") from None
        raise InvalidPhone("invalid phone number: not a phone number") from None
    result = phonenumbers.is_possible_number_with_reason(number)
    if result != ValidationResult.IS_POSSIBLE:
        raise InvalidPhone(f"invalid phone number: {_REASONS.get(result, 'not possible')}")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def try_normalize(raw: object, default_region: str | None = None) -> str | None:
    """``normalize_phone`` or None."""
    try:
        return normalize_phone(raw, default_region)
    except InvalidPhone:
        return None


def is_region(code: object) -> bool:
    """Whether ``code`` is a region ``phonenumbers`` knows (``US``, ``GB``, …)."""
    return isinstance(code, str) and code.upper() in phonenumbers.SUPPORTED_REGIONS
