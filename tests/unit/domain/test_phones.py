"""Phone numbers normalized to E.164 with phonenumbers; the reason for each refusal, never the number."""

from __future__ import annotations

import re

import pytest

from dmd_tasks.domain.phones import InvalidPhone, is_region, normalize_phone


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+12125550100", None, "+12125550100"),
        ("+1 212 555 0100", None, "+12125550100"),
        ("+12125550100\n", None, "+12125550100"),  # a trailing newline is not part of the number
        ("  +1 (212) 555-0100 ", None, "+12125550100"),
        ("(212) 555-0100", "US", "+12125550100"),
        ("(212) 555-0100", "us", "+12125550100"),
        ("07700 900123", "GB", "+447700900123"),
        ("+44 7700 900123", "US", "+447700900123"),  # a country code wins over the default region
        ("+15550001111", None, "+15550001111"),  # possible (length), even if not assigned
    ],
)
def test_numbers_are_normalized(raw: str, region: str | None, e164: str) -> None:
    assert normalize_phone(raw, region) == e164


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("(212) 555-0100", None, "no country code"),
        ("555-0100", "US", "without its area code"),
        ("+999123", None, "unknown country code"),
        ("+1212555010000000", None, "too long"),
        ("+1212", None, "too short"),
        ("abc", "US", "not a phone number"),
        ("", None, "empty"),
        ("  ", None, "empty"),
        (["+12125550100"], None, "a list"),
        (12125550100, None, "a int"),
        (None, None, "a NoneType"),
        ("+1" + "2" * 80, None, "longer than"),
    ],
)
def test_invalid_numbers_are_refused_with_the_reason(raw: object, region: str | None, reason: str) -> None:
    with pytest.raises(InvalidPhone) as raised:
        normalize_phone(raw, region)
    assert reason in str(raised.value)
    assert "0100" not in str(raised.value) and "2125" not in str(raised.value)


def test_regions() -> None:
    assert is_region("US") and is_region("gb")
    assert not is_region("XX") and not is_region(None) and not is_region("")


E164 = re.compile(r"\+[1-9][0-9]{7,14}")  # ASCII digits only


@pytest.mark.parametrize(
    "raw",
    [
        "+1555\u0660\u0660\u06601234",  # Arabic-Indic zeros
        "+1\uff15\uff15\uff15\uff10\uff10\uff10\uff11\uff12\uff13\uff14",  # full-width digits
        "+1-555-000-1234",
        "+1.555.000.1234",
        "tel:+1-555-000-1234",
    ],
)
def test_what_comes_out_is_always_ascii_e164(raw: str) -> None:
    assert E164.fullmatch(normalize_phone(raw)) is not None
    assert normalize_phone(raw) == "+15550001234"
