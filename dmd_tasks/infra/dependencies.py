"""What a dependency of ours failing looks like: the exceptions AWS (botocore) and Redis raise
when they are unreachable, frozen or throttling. A task that meets one has not done its work:
it is retried (``celery_app.base``), never acknowledged and forgotten."""

from __future__ import annotations

import redis.exceptions
from botocore.exceptions import BotoCoreError, ClientError

#: Exceptions that mean "a dependency did not answer (well) this time".
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def describe(exc: BaseException) -> str:
    """A short reason naming the failing dependency's error (never a secret: botocore and redis-py
    messages carry endpoints and error codes, not credentials)."""
    return f"{type(exc).__name__}: {exc}"[:300]
