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
- Configuration sets and their SNS event destinations (``CreateConfigurationSet``,
  ``DescribeConfigurationSets``, ``CreateEventDestination``): a message sent with a
  configuration set that has one gets its events published to that topic, as the service
  does: ``TEXT_DELIVERED``, ``TEXT_UNREACHABLE`` or ``TEXT_BLOCKED`` after ``status_delay_ms``
  by the rates of ``{"eum": {"undelivered_rate": ..., "failed_rate": ...}}``, some duplicated,
  some followed by a stale ``TEXT_PENDING``; each carries the request's ``Context``. A fan's
  ``STOP`` reply (``stop_reply_rate``) is a two-way SMS message on the same topic (on AWS the
  number's two-way channel names its own topic; dmd reads both from one intake queue).
- Faults from its own ``Faults`` (``POST /_sim/config {"eum": {...}}``): a rate limit or a
  throttle answered ``ThrottlingException`` (HTTP 400, no Retry-After: the service gives
  none), errors answered ``InternalServerException`` (HTTP 500), timeouts that accept the
  message but answer too late (an ambiguous send).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from typing import Any

from flask import Blueprint, Response, request

from simulators.faults import SLOW, Faults
from simulators.sms import EventEmitter, SmsSimulator, StatusBehaviour

PREFIX = "PinpointSMSVoiceV2."
TARGET = f"{PREFIX}SendTextMessage"
#: The simulated account (what ARNs name).
ACCOUNT = "123456789012"
#: The event type each final status of the shared behaviour is reported as.
FINAL_EVENT = {"delivered": "TEXT_DELIVERED", "undelivered": "TEXT_UNREACHABLE", "failed": "TEXT_BLOCKED"}
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_IDENTITY = re.compile(r"^[A-Za-z0-9_:/+-]{1,256}$")
_CONTENT_TYPE = "application/x-amz-json-1.0"


class SnsEmitter(EventEmitter):
    """Publishes End User Messaging events to their configuration set's SNS topic (PublishBatch,
    10 a call). Each scheduled event names its topic under ``_topic``."""

    batch_size = 100
    name = "eum-events"

    def __init__(self, sns: Any) -> None:
        self._sns = sns
        super().__init__()

    def _deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        failed: list[dict[str, Any]] = []
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_topic.setdefault(event["_topic"], []).append(event)
        for topic, batch in by_topic.items():
            for start in range(0, len(batch), 10):
                chunk = batch[start : start + 10]
                entries = [
                    {"Id": str(n), "Message": json.dumps({k: v for k, v in e.items() if k != "_topic"})}
                    for n, e in enumerate(chunk)
                ]
                response = self._sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
                failed.extend(chunk[int(f["Id"])] for f in response.get("Failed", []))
        return failed

    @staticmethod
    def _label(event: dict[str, Any]) -> str:
        return str(event.get("eventType") or "TWO_WAY")


class EumSimulator:
    def __init__(self, sms: SmsSimulator, emitter: EventEmitter | None = None) -> None:
        self._sms = sms
        self.emitter = emitter
        self.behaviour = StatusBehaviour()
        #: configuration set → its SNS event destinations (name → destination as created)
        self._config_sets: dict[str, dict[str, dict[str, Any]]] = {}
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
        self.behaviour.update(values)
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
            self.behaviour = StatusBehaviour()

    # ---- the API --------------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        bp = Blueprint("eum", __name__)

        @bp.post("/")
        def call() -> Response:
            target = request.headers.get("X-Amz-Target", "")
            if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
                return _error(400, "MissingAuthenticationTokenException", "the request is not signed")
            if target == TARGET:
                return send()
            operation = self._setup_operations().get(target.removeprefix(PREFIX))
            if operation is None or not target.startswith(PREFIX):
                return _error(400, "UnknownOperationException", f"{target[:80]} is not simulated")
            body = request.get_json(silent=True, force=True)
            return operation(body if isinstance(body, dict) else {})

        def send() -> Response:
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

    # ---- configuration sets and event destinations ----------------------------------------------

    def _setup_operations(self) -> dict[str, Any]:
        return {
            "CreateConfigurationSet": self._create_configuration_set,
            "DescribeConfigurationSets": self._describe_configuration_sets,
            "CreateEventDestination": self._create_event_destination,
        }

    @staticmethod
    def _set_arn(name: str) -> str:
        return f"arn:aws:sms-voice:us-east-1:{ACCOUNT}:configuration-set/{name}"

    def _create_configuration_set(self, body: dict[str, Any]) -> Response:
        name = body.get("ConfigurationSetName")
        if not isinstance(name, str) or not _IDENTITY.match(name):
            return _error(
                400, "ValidationException", "ConfigurationSetName is invalid", Reason="FIELD_VALIDATION_FAILED"
            )
        with self._lock:
            if name in self._config_sets:
                return _error(
                    400, "ConflictException", "the configuration set exists", Reason="RESOURCE_ALREADY_EXISTS"
                )
            self._config_sets[name] = {}
        return _json(200, {"ConfigurationSetArn": self._set_arn(name), "ConfigurationSetName": name})

    def _describe(self, name: str) -> dict[str, Any]:
        return {
            "ConfigurationSetArn": self._set_arn(name),
            "ConfigurationSetName": name,
            "EventDestinations": list(self._config_sets[name].values()),
            "CreatedTimestamp": 0,
        }

    def _describe_configuration_sets(self, body: dict[str, Any]) -> Response:
        names = body.get("ConfigurationSetNames")
        with self._lock:
            wanted = list(self._config_sets) if not isinstance(names, list) else [str(n) for n in names]
            missing = [n for n in wanted if n not in self._config_sets]
            if missing:
                return _error(
                    400,
                    "ResourceNotFoundException",
                    "no such configuration set",
                    ResourceType="configuration-set",
                    ResourceId=missing[0],
                )
            return _json(200, {"ConfigurationSets": [self._describe(n) for n in wanted]})

    def _create_event_destination(self, body: dict[str, Any]) -> Response:
        name, dest = body.get("ConfigurationSetName"), body.get("EventDestinationName")
        sns = body.get("SnsDestination")
        types = body.get("MatchingEventTypes")
        if not isinstance(dest, str) or not isinstance(types, list) or not types:
            return _error(400, "ValidationException", "an event destination needs a name and event types")
        if not isinstance(sns, dict) or not isinstance(sns.get("TopicArn"), str):
            return _error(400, "ValidationException", "only SNS event destinations are simulated")
        with self._lock:
            if name not in self._config_sets:
                return _error(400, "ResourceNotFoundException", "no such configuration set", ResourceId=str(name))
            if dest in self._config_sets[name]:
                return _error(
                    400, "ConflictException", "the event destination exists", Reason="RESOURCE_ALREADY_EXISTS"
                )
            destination = {
                "EventDestinationName": dest,
                "Enabled": True,
                "MatchingEventTypes": [str(t) for t in types],
                "SnsDestination": {"TopicArn": sns["TopicArn"]},
            }
            self._config_sets[name][dest] = destination
        return _json(
            200,
            {"ConfigurationSetArn": self._set_arn(name), "ConfigurationSetName": name, "EventDestination": destination},
        )

    def _topics_for(self, config_set: Any, event_type: str) -> list[str]:
        with self._lock:
            destinations = self._config_sets.get(config_set, {}) if isinstance(config_set, str) else {}
            return [
                d["SnsDestination"]["TopicArn"]
                for d in destinations.values()
                if d["Enabled"] and (event_type == "TWO_WAY" or _matches(d["MatchingEventTypes"], event_type))
            ]

    def _plan_events(self, message_id: str, body: dict[str, Any]) -> None:
        """The events the service would publish for one accepted message (see the module docstring)."""
        if self.emitter is None:
            return
        b = self.behaviour
        final = b.final_status()
        due = time.time() + b.status_delay_ms / 1000
        to = body["DestinationPhoneNumber"]

        def event(kind: str, at: float) -> dict[str, Any]:
            return {
                "eventType": kind,
                "eventVersion": "1.0",
                "eventTimestamp": int(at * 1000),
                "isFinal": kind != "TEXT_PENDING",
                "originationPhoneNumber": body.get("OriginationIdentity"),
                "destinationPhoneNumber": to,
                "messageId": message_id,
                "messageType": body.get("MessageType") or "TRANSACTIONAL",
                "messageStatus": kind.removeprefix("TEXT_"),
                "context": dict(body.get("Context") or {}),
            }

        planned: list[tuple[float, dict[str, Any]]] = [(due, event(FINAL_EVENT[final], due))]
        if random.random() < b.duplicate_status_rate:
            planned.append((due + 0.05, event(FINAL_EVENT[final], due)))
        if random.random() < b.out_of_order_rate:
            planned.append((due + 0.02, event("TEXT_PENDING", due - 0.1)))
        if final == "delivered" and random.random() < b.stop_reply_rate:
            reply = {
                "originationNumber": to,
                "destinationNumber": body.get("OriginationIdentity"),
                "messageKeyword": "STOP",
                "messageBody": "STOP",
                "inboundMessageId": str(uuid.uuid4()),
                "previousPublishedMessageId": message_id,
            }
            planned.append((due + 0.1, {"eventType": "TWO_WAY", **reply}))
        config_set = body.get("ConfigurationSetName")
        for at, planned_event in planned:
            kind = str(planned_event["eventType"])
            if kind == "TWO_WAY":
                planned_event = {k: v for k, v in planned_event.items() if k != "eventType"}
            for topic in self._topics_for(config_set, kind):
                self.emitter.schedule(at, {**planned_event, "_topic": topic})

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
        self._plan_events(message_id, body)
        return message_id


def _matches(types: list[str], event_type: str) -> bool:
    """Whether an event destination's ``MatchingEventTypes`` take this event type."""
    return bool({"ALL", "TEXT_ALL", event_type} & set(types))


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
