"""What every end-to-end module shares: a fresh stack under its processes, and after them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import fresh_stack


@pytest.fixture(scope="module", autouse=True)
def fresh_world(settings, stack) -> Iterator[None]:
    """Each module's processes start on an empty moto and Redis database (``fresh_stack``): the
    tests before it in this session (stack-backed ones, another module's sales) leave due sales,
    active sales and queued messages that a beat and workers started now would otherwise run too.
    And the tests after it find none of its own: its beat's last ticks, still queued, would be
    run by the next in-process worker on the schedule queue, over every sale of the table."""
    fresh_stack(settings)
    yield
    fresh_stack(settings)
