"""What every end-to-end module shares: a fresh stack under its processes."""

from __future__ import annotations

import pytest

from tests.helpers import fresh_stack


@pytest.fixture(scope="module", autouse=True)
def fresh_world(settings, stack) -> None:  # type: ignore[no-untyped-def]
    """Each module's processes start on an empty moto and Redis database (``fresh_stack``): the
    tests before it in this session (stack-backed ones, another module's sales) leave due sales,
    active sales and queued messages that a beat and workers started now would otherwise run too."""
    fresh_stack(settings)
