"""Ids and the notification id: what is accepted where an id enters, and what is refused (no network)."""

from __future__ import annotations

import pytest

from dmd_tasks.domain.ids import ID_RULE, check_id, is_valid_id, notification_id, split_notification_id


@pytest.mark.parametrize("value", ["a", "Z", "0", "fan_001", "sale-2026-11", "A-z_9", "x" * 64])
def test_letters_digits_underscore_and_dash_up_to_64_characters_are_ids(value: str) -> None:
    assert is_valid_id(value)
    assert check_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 65,
        "fan 1",
        "sale:fan",
        "../../etc",
        "a/b",
        "a.b",
        "fän",
        "fan\u0661",  # a non-ASCII digit
        "fan1\n",  # a trailing newline must not pass (``$`` alone would admit it)
        "\nfan1",
        "fan1\r",
        " fan1",
    ],
)
def test_anything_else_is_not_an_id(value: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(ValueError, match="ids are 1-64 characters"):
        check_id(value)


@pytest.mark.parametrize("value", [None, 12, b"fan1", ["fan1"]])
def test_non_strings_are_not_ids(value: object) -> None:
    assert not is_valid_id(value)


def test_check_id_states_the_rule_it_enforces() -> None:
    with pytest.raises(ValueError) as raised:
        check_id("bad id")
    assert ID_RULE in str(raised.value)


def test_notification_id_is_sale_and_fan_joined_by_a_colon_and_splits_back() -> None:
    nid = notification_id("sale_1", "fan-0042")
    assert nid == "sale_1:fan-0042"
    assert split_notification_id(nid) == ("sale_1", "fan-0042")


@pytest.mark.parametrize(
    "value",
    [
        "no-colon",
        ":fan1",
        "sale1:",
        ":",
        "sale1:fan1:extra",  # the fan part "fan1:extra" is not an id
        "sale 1:fan1",
        "sale1:fan1\n",
        "x" * 65 + ":fan1",
        "",
    ],
)
def test_split_refuses_what_is_not_a_notification_id(value: str) -> None:
    with pytest.raises(ValueError, match="not a notification id"):
        split_notification_id(value)


def test_split_refuses_a_non_string() -> None:
    with pytest.raises(ValueError, match="is a string"):
        split_notification_id(123)  # type: ignore[arg-type]


def test_split_quotes_at_most_80_characters_of_the_refused_value() -> None:
    with pytest.raises(ValueError) as raised:
        split_notification_id("y" * 500)
    assert "y" * 80 in str(raised.value)
    assert "y" * 81 not in str(raised.value)
