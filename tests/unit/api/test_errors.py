"""Query arguments are checked before anything is called: a TM id, or InvalidArgument naming the argument."""

from __future__ import annotations

import pytest

from dmd_tasks.api.errors import InvalidArgument, check_argument_id


@pytest.mark.parametrize("value", ["e1", "G5vYZ4F1-_x", "x" * 64, "0"])
def test_a_well_formed_id_is_returned_as_given(value: str) -> None:
    assert check_argument_id(value, "eventId") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 65,
        "a b",
        "ev1\n",
        "\nev1",
        "ev1\r",
        "../etc/passwd",
        "ev%2F1",
        "ev.1",
        "évé",
        None,
        42,
        b"ev1",
        ["e1"],
    ],
)
def test_anything_else_is_an_invalid_argument_naming_the_argument(value: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_argument_id(value, "accountId")
    assert str(raised.value).startswith("accountId must be 1-64 characters")
    assert isinstance(raised.value, ValueError)  # GraphQL reports it as a bad request
