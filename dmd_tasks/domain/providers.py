"""The SMS providers dmd can send through, and what each can promise (docs/operations.md,
"SMS providers").

Every provider answers ``send`` with its message id or raises one of dmd's errors
(``RateLimited``, ``TransientError``, ``PermanentError``; ``OutcomeUnknown`` when the request
left and no answer came). What differs is what the send path and the reconciler may do
after a crash or a timeout:

- an **idempotent** provider deduplicates on the notification id: an unfinished send is
  simply sent again (exactly once at the fan);
- a provider **without idempotency** would send a second SMS: the send path records that the
  call started, and a send whose outcome is unknown waits, ``unconfirmed``, for the
  provider's event instead (at most once at the fan; ``unknown`` when no event comes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Capabilities:
    name: str
    #: a repeated send of one notification id reaches the fan once
    idempotent: bool
    #: how delivery events come back to dmd
    delivery: str
    #: what a fan gets when a worker dies during the call
    on_crash: str


HTTP = Capabilities(
    "http",
    idempotent=True,
    delivery="Kinesis status stream (bridge-sms-status)",
    on_crash="exactly once: the send is repeated with the same idempotency key",
)
EUM = Capabilities(
    "eum",
    idempotent=False,
    delivery="event destination → SNS → SQS intake queue (bridge-sqs)",
    on_crash="at most once: the send waits unconfirmed for the provider's event, else ends unknown",
)
CAPABILITIES = {c.name: c for c in (HTTP, EUM)}


def capabilities_of(name: str | None) -> Capabilities:
    """A provider's capabilities by name; an unknown name is taken as not idempotent (the safe
    side: nothing is sent twice on its account)."""
    return CAPABILITIES.get(name or "", Capabilities(name or "?", False, "?", "at most once"))


class SmsProvider(Protocol):
    capabilities: Capabilities

    def send(self, to: str, body: str, *, notification_id: str, validity_seconds: float | None = None) -> str:
        """Send one SMS for ``notification_id``; return the provider's message id."""
