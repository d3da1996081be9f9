"""AWS End User Messaging SMS (``pinpoint-sms-voice-v2``): ``SendTextMessage`` over its JSON 1.0
protocol, so that the project's client is boto3's own.

- ``POST /`` with ``X-Amz-Target: PinpointSMSVoiceV2.SendTextMessage`` and a SigV4
  ``Authorization`` header (its signature is not checked; an unsigned call is refused).
- The request is checked as the service checks it: an E.164 destination, a body of 1 to
  1,600 characters, ``MessageType``, ``TimeToLive`` (5 to 259,200 s), at most 5 ``Context``
  entries; a failed check is a ``ValidationException`` (HTTP 400).
- There is no idempotency token: every accepted call is a new message at the fan. The
  messages are counted with the HTTP provider's (``SmsSimulator``), per recipient and per
  sale, so a fan messaged twice, by either provider or by both, is a duplicate.
- Numbers opted out at the provider (``{"eum": {"opted_out": [...]}}``) are refused with a
  ``ConflictException`` (reason ``DESTINATION_PHONE_NUMBER_OPTED_OUT``), as the service does.
- Faults from its own ``Faults`` (``POST /_sim/config {"eum": {...}}``): a rate limit or a
  throttle answered ``ThrottlingException`` (HTTP 400, no Retry-After: the service gives
  none), errors answered ``InternalServerException`` (HTTP 500), timeouts that accept the
  message but answer too late (an ambiguous send).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from typing import Any

from flask import Blueprint, Response, request

from simulators.faults import SLOW, Faults
from simulators.sms import SmsSimulator

TARGET = "PinpointSMSVoiceV2.SendTextMessage"
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_IDENTITY = re.compile(r"^[A-Za-z0-9_:/+-]{1,256}$")
_CONTENT_TYPE = "application/x-amz-json-1.0"


class EumSimulator:
    def __init__(self, sms: SmsSimulator) -> None:
        self._sms = sms
        self.faults = Faults()
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        #: the last requests accepted, by message id (what tests read: context, TTL, identity)
        self._messages: dict[str, dict[str, Any]] = {}
        self._opted_out: set[str] = set()

    # ---- configuration and counters -----------------------------------------------------------

    def configure(self, values: dict[str, Any]) -> None:
        """Faults, and ``opted_out``: numbers the service refuses (ConflictException, opted out)."""
        self.faults.update(values)
        if isinstance(values.get("opted_out"), list):
            with self._lock:
                self._opted_out = {str(n) for n in values["opted_out"]}

    def public_config(self) -> dict[str, float]:
        return self.faults.public()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **dict(self._counters),
                "max_requests_per_second": self.faults.max_requests_per_second,
                **{f"responses_{k}": v for k, v in self.faults.counters.items()},
            }

    def message(self, message_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._messages.get(message_id)
            return dict(found) if found is not None else None

    def reset(self) -> None:
        with self._lock:
            self._counters.clear()
            self._messages.clear()
            self._opted_out.clear()
            self.faults = Faults()

    # ---- the API --------------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        bp = Blueprint("eum", __name__)

        @bp.post("/")
        def call() -> Response:
            if request.headers.get("X-Amz-Target") != TARGET:
                return _error(400, "UnknownOperationException", "only SendTextMessage is simulated")
            if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
                return _error(400, "MissingAuthenticationTokenException", "the request is not signed")
            arrived_at = self.faults.arrived()
            body = request.get_json(silent=True, force=True)
            problem = _invalid(body)
            if problem is not None or not isinstance(body, dict):
                self._count("validation_errors")
                return _error(400, "ValidationException", problem or "invalid", Reason="FIELD_VALIDATION_FAILED")
            if body["DestinationPhoneNumber"] in self._opted_out:
                return _error(
                    400,
                    "ConflictException",
                    "the destination phone number is opted out",
                    Reason="DESTINATION_PHONE_NUMBER_OPTED_OUT",
                    ResourceType="opt-out-list",
                    ResourceId="Default",
                )
            failure = self.faults.apply(timeouts_accept=True, arrived_at=arrived_at)
            if isinstance(failure, tuple):
                status, _headers = failure
                if status == 429:
                    return _error(400, "ThrottlingException", "Rate exceeded")
                return _error(500, "InternalServerException", "internal error", RequestId=uuid.uuid4().hex)
            message_id = self._accept(body, arrived_at)
            if failure == SLOW:
                time.sleep(self.faults.timeout_ms / 1000)  # sent, but the client has given up by now
            return _json(200, {"MessageId": message_id})

        return bp

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def _accept(self, body: dict[str, Any], arrived_at: float) -> str:
        message_id = str(uuid.uuid4())
        context = body.get("Context") or {}
        # the sale and fan the pipeline put in Context, for the per-sale counts (else: unknown)
        reference = str(context.get("notificationId") or f"unknown:{message_id}")
        self._sms.record_unkeyed(reference, body["DestinationPhoneNumber"], arrived_at)
        with self._lock:
            self._counters["accepted"] += 1
            if len(self._messages) >= 100_000:
                self._messages.pop(next(iter(self._messages)))
            self._messages[message_id] = {
                "destination": body["DestinationPhoneNumber"],
                "origination": body.get("OriginationIdentity"),
                "configurationSet": body.get("ConfigurationSetName"),
                "messageType": body.get("MessageType"),
                "timeToLive": body.get("TimeToLive"),
                "context": context,
            }
        return message_id


def _invalid(body: Any) -> str | None:
    """What the service would refuse in this request, or None."""
    if not isinstance(body, dict):
        return "the request body is not a JSON object"
    to = body.get("DestinationPhoneNumber")
    if not isinstance(to, str) or not _E164.match(to):
        return "DestinationPhoneNumber is not an E.164 number"
    text = body.get("MessageBody")
    if not isinstance(text, str) or not text.strip() or len(text) > 1600:
        return "MessageBody must have 1 to 1600 characters"
    identity = body.get("OriginationIdentity")
    if identity is not None and (not isinstance(identity, str) or not _IDENTITY.match(identity)):
        return "OriginationIdentity is not a phone number, sender id, pool id or ARN"
    if body.get("MessageType") not in (None, "TRANSACTIONAL", "PROMOTIONAL"):
        return "MessageType must be TRANSACTIONAL or PROMOTIONAL"
    ttl = body.get("TimeToLive")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 5 <= ttl <= 259_200):
        return "TimeToLive must be 5 to 259200 seconds"
    context = body.get("Context")
    if context is not None:
        if not isinstance(context, dict) or len(context) > 5:
            return "Context takes at most 5 entries"
        for key, value in context.items():
            if not (isinstance(value, str) and 1 <= len(key) <= 100 and 1 <= len(value) <= 800):
                return "a Context entry is 1-100 characters of key and 1-800 of value"
    return None


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=_CONTENT_TYPE)


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    """An error in the JSON 1.0 protocol's form: botocore reads the code from ``__type``."""
    return _json(status, {"__type": code, "Message": message, **extra})
