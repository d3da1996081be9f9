"""The answers of the query surface that are not data: a bad argument, nothing found, an
upstream down with no copy to serve. The GraphQL layer maps each to its ``errorType``."""

from __future__ import annotations

from dmd_tasks.domain.errors import DmdError
from dmd_tasks.domain.ids import ID_RULE, is_valid_id


class InvalidArgument(DmdError, ValueError):
    """A query argument that does not have the documented format; nothing is called upstream."""


class NotFound(DmdError):
    """The upstream has no such entity."""


class Unavailable(DmdError):
    """The upstream failed and there is no copy to fall back on."""


def check_argument_id(value: object, what: str) -> str:
    """``value`` if it is a well-formed TM id; InvalidArgument naming the argument otherwise."""
    if not is_valid_id(value):
        raise InvalidArgument(f"{what} must be {ID_RULE}")
    return value  # type: ignore[return-value]
