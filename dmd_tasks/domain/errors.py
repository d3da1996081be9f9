"""The errors of dmd: one root, and each branch says what the caller should do (retry, or not)."""

from __future__ import annotations


class DmdError(Exception):
    """Root of every error dmd raises on purpose."""


class TransientError(DmdError):
    """The operation may succeed if retried later (timeouts, 5xx, throttling, a lock held elsewhere)."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class NotAttempted(TransientError):
    """The call was never made (no rate-limit slot in time, a dependency of ours down): a retry that
    does not count as an attempt against the provider."""


class RateLimited(TransientError):
    """The upstream said 429; retry after the time it gave."""


class OutcomeUnknown(TransientError):
    """The request left and no answer came back (a read timeout): the SMS may have been sent. With
    a provider without idempotency, never resend it without the provider's word (its event, matched
    by the notification id the request carried); with one that has it, resend it there only."""

    #: set by the send path: the provider's circuit counts this failure as the provider's (an
    #: outage), not the message's
    providers_fault: bool = False


class PermanentError(DmdError):
    """Retrying cannot help (bad input, refused credentials, missing entity); dead-letter it."""


class InvalidRecord(PermanentError):
    """A stream record or message that cannot be parsed or routed."""


class DisallowedUrl(PermanentError):
    """A URL that is not http(s) or not on the allowed hosts, so it is never sent to a provider."""


class InvalidTemplate(PermanentError, ValueError):
    """A campaign template that uses unknown variables or anything but plain placeholders.

    Also a ValueError, so pydantic reports it as a validation error of the campaign.
    """


class InvalidCampaign(PermanentError):
    """A stored campaign that no longer validates (written around the API, or by an older version)."""
