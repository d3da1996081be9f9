"""What a stage's work came to, by name: the words in task results, logs and span attributes.

String enums: a member is its string (``SendOutcome.SENT == "sent"``), so results keep the
words operators already read in Flower and the logs.
"""

from __future__ import annotations

from enum import StrEnum


class SendOutcome(StrEnum):
    """One notification in a send batch."""

    SENT = "sent"
    #: accepted by the provider, but its ``sent`` write found the lease gone (taken back)
    LEASE_LOST = "lease-lost"
    #: the fan's send window was closed: waits for it to open
    QUIET_HOURS = "quiet-hours"
    #: the outcome of a call to a provider without idempotency is unknown: waits for its event
    UNCONFIRMED = "unconfirmed"
    FAILED = "failed"
    #: nothing reached the provider (no slot in time, the lease or the batch out of time, a
    #: dependency down, the provider's circuit open): scheduled again, no attempt spent
    NOT_ATTEMPTED = "not-attempted"
    #: the call failed: scheduled again after a backoff, an attempt spent
    RETRY = "retry"
    #: not ``scheduled`` any more when the batch came (sent, failed, or owned elsewhere)
    SKIPPED = "skipped"
    INVALID_ID = "invalid-id"
    #: a dependency failed after the claim: the lease expires and the reconciler resends
    ERROR = "error"


class GenerateOutcome(StrEnum):
    """One generator run over a sale."""

    DONE = "done"
    #: handed the rest of the sale to a fresh message (the run's time or chunk budget)
    CONTINUE = "continue"
    OWNED_ELSEWHERE = "owned-elsewhere"
    ALREADY_GENERATED = "already-generated"
    NOT_CLAIMED = "not-claimed"
