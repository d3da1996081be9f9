"""AWS End User Messaging SMS: ``SendTextMessage`` through boto3's ``pinpoint-sms-voice-v2`` client.

The service has no idempotency token: a repeated call is a second SMS at the fan. So this
client never repeats a call on its own (botocore's retries are off), and it tells a call that
certainly did not send from one whose outcome is unknown:

- ``RateLimited``: ``ThrottlingException`` (the account's message parts per second), or a
  quota (``ServiceQuotaExceededException``, a spend limit): nothing was sent.
- ``TransientError``: the connection could not be opened, or the service answered an error
  that is not this message's (``InternalServerException``; refused credentials, an unknown
  origination identity, an unregistered sender id: every call fails alike, and the
  provider's circuit pauses sending): nothing was sent.
- ``PermanentError``: this message's own fault: ``ValidationException`` (but for the
  account's setup, ``ACCOUNT_REASONS``), or a ``ConflictException`` about this number (opted
  out at the provider, blocked: ``NUMBER_REASONS``).
- ``OutcomeUnknown``: the request was sent and no answer came (a read timeout, a dropped
  connection, a TLS error, a gateway's 502/504): the SMS may be on its way. It must not be
  sent again blindly.

The notification's id travels in ``Context`` (``notificationId``), and the service writes
it into every delivery event, so an event can be matched to its notification even when the
send's answer (the message id) was lost.
"""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ParamValidationError,
    ProxyConnectionError,
    SSLError,
)

from dmd_tasks.domain.errors import OutcomeUnknown, PermanentError, RateLimited, TransientError
from dmd_tasks.infra.metrics import PROVIDER_RESPONSES

SERVICE = "pinpoint-sms-voice-v2"
#: Context key carrying the notification id into the delivery events.
CONTEXT_KEY = "notificationId"
#: The range the service takes for ``TimeToLive`` (seconds).
TTL_RANGE = (5, 259_200)
_THROTTLED = {"ThrottlingException", "ServiceQuotaExceededException"}
#: ValidationException reasons that are the account's setup, not the message: every send fails
#: alike (the provider's circuit pauses sending; no fan is failed for it).
ACCOUNT_REASONS = frozenset(
    {
        "SENDER_ID_NOT_REGISTERED",
        "SENDER_ID_REQUIRES_REGISTRATION",
        "RESOURCE_NOT_ACCESSIBLE",
        "INVALID_ARN",
        "CHANNEL_NOT_ENABLED",
        "INVALID_REGISTRATION_ASSOCIATION",
    }
)
#: ConflictException reasons about this destination number: this message will not go.
NUMBER_REASONS = frozenset(
    {
        "DESTINATION_PHONE_NUMBER_OPTED_OUT",
        "DESTINATION_PHONE_NUMBER_NOT_VERIFIED",
        "DESTINATION_PHONE_NUMBER_BLOCKED_BY_PROTECT_NUMBER_OVERRIDE",
        "DESTINATION_COUNTRY_BLOCKED_BY_PROTECT_CONFIGURATION",
    }
)
#: Answers of a gateway in front of the service: the request may have reached it.
_GATEWAY = {"502", "504", "BadGateway", "GatewayTimeout"}
#: A quota (a spend limit, say) does not clear within a second: pause at least this long.
QUOTA_PAUSE_SECONDS = 60.0


def client_config(timeout_seconds: float, max_pool_connections: int = 20) -> Config:
    """botocore's settings for a non-idempotent API: one attempt, the send path's timeout."""
    return Config(
        connect_timeout=min(timeout_seconds, 5.0),
        read_timeout=timeout_seconds,
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "total_max_attempts": 1},
    )


class EumSmsClient:
    """One End User Messaging SMS account's sender: an origination identity (phone number,
    sender id or pool), a configuration set (whose event destination carries the delivery
    events) and a message type."""

    def __init__(
        self,
        client: Any,
        *,
        origination_identity: str,
        configuration_set: str | None = None,
        message_type: str = "TRANSACTIONAL",
    ) -> None:
        self._client = client
        self._identity = origination_identity
        self._configuration_set = configuration_set
        self._message_type = message_type

    def send(self, to: str, body: str, *, idempotency_key: str, validity_seconds: float | None = None) -> str:
        """Send one SMS; return the service's message id. ``idempotency_key`` (the notification
        id) is not a token here: it goes into ``Context`` for the delivery events."""
        request: dict[str, Any] = {
            "DestinationPhoneNumber": to,
            "OriginationIdentity": self._identity,
            "MessageBody": body,
            "MessageType": self._message_type,
            "Context": {CONTEXT_KEY: idempotency_key},
        }
        if self._configuration_set:
            request["ConfigurationSetName"] = self._configuration_set
        if validity_seconds is not None:
            low, high = TTL_RANGE
            request["TimeToLive"] = int(min(max(validity_seconds, low), high))
        try:
            response = self._client.send_text_message(**request)
        except ClientError as exc:
            raise _mapped(exc) from exc
        except ParamValidationError as exc:  # refused by botocore before anything was sent
            raise PermanentError("eum send: the request is not valid for the service") from exc
        except (ConnectTimeoutError, EndpointConnectionError, ProxyConnectionError) as exc:
            PROVIDER_RESPONSES.labels("eum", "connection").inc()
            raise TransientError("eum send: could not connect") from exc
        except (SSLError, HTTPClientError) as exc:
            # the request may have left: a read timeout, a dropped connection, a TLS error after
            # the request was written (an SSL error during the handshake lands here too: unknown
            # errs on the side of no second SMS)
            PROVIDER_RESPONSES.labels("eum", "timeout").inc()
            raise OutcomeUnknown("eum send: no answer (the SMS may have been sent)") from exc
        except BotoCoreError as exc:  # no credentials, say: nothing was sent
            PROVIDER_RESPONSES.labels("eum", "client").inc()
            raise TransientError(f"eum send: {type(exc).__name__}") from exc
        PROVIDER_RESPONSES.labels("eum", "200").inc()
        message_id = response.get("MessageId")
        if not isinstance(message_id, str) or not message_id:
            # It answered success: the SMS is on its way, only its id is missing.
            raise OutcomeUnknown("eum send: the answer has no MessageId")
        return message_id


def _mapped(exc: ClientError) -> Exception:
    """The dmd error for an error answer (the code only: messages can echo the request)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    PROVIDER_RESPONSES.labels("eum", str(status or code)).inc()
    reason = str(exc.response.get("Reason") or "")[:80]
    detail = f"{code} {reason}".strip()
    if code in _THROTTLED:
        pause = QUOTA_PAUSE_SECONDS if code == "ServiceQuotaExceededException" else None
        return RateLimited(f"eum send: {code}", retry_after_seconds=pause)
    if code in _GATEWAY or str(status) in _GATEWAY:
        return OutcomeUnknown(f"eum send: gateway answered {status} (the SMS may have been sent)")
    if code == "ValidationException" and reason not in ACCOUNT_REASONS:
        return PermanentError(f"eum send: refused ({detail})")
    if code == "ConflictException" and reason in NUMBER_REASONS:
        return PermanentError(f"eum send: refused ({detail})")
    return TransientError(f"eum send: {detail} ({status})")
