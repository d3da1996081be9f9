"""The End User Messaging SMS client: boto3's own ``pinpoint-sms-voice-v2`` client against the
simulator's JSON 1.0 face of the service (and a canned upstream for an answer it never gives)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    SSLError,
)

from dmd_tasks.clients.eum import CONTEXT_KEY, EumSmsClient, client_config
from dmd_tasks.domain.errors import OutcomeUnknown, PermanentError, RateLimited, TransientError
from dmd_tasks.infra.aws import session_for
from dmd_tasks.ops.stack import free_port


def _client(settings: Any, url: str, timeout: float = 5.0) -> EumSmsClient:
    boto = session_for(settings).client("pinpoint-sms-voice-v2", endpoint_url=url, config=client_config(timeout))
    return EumSmsClient(boto, origination_identity="pool-0123456789abcdef", configuration_set="dmd-events")


@pytest.fixture()
def eum(settings, stack, sim) -> Iterator[EumSmsClient]:
    yield _client(settings, settings.sms_base_url)
    sim.configure(eum={"throttle_rate": 0, "error_rate": 0, "timeout_rate": 0})


def new_phone() -> str:
    return f"+1334{int(uuid.uuid4().hex[:7], 16) % 10_000_000:07d}"


def new_key() -> str:
    return f"sale{uuid.uuid4().hex[:8]}:fan1"


def test_a_message_carries_its_notification_id_in_context_and_its_validity_as_ttl(eum, sim) -> None:
    phone, key = new_phone(), new_key()

    message_id = eum.send(phone, "Tickets: https://bit.ly/x", idempotency_key=key, validity_seconds=7200)

    seen = sim.eum_message(message_id)
    assert seen is not None
    assert seen["context"] == {CONTEXT_KEY: key}
    assert seen["timeToLive"] == 7200
    assert seen["origination"] == "pool-0123456789abcdef"
    assert seen["configurationSet"] == "dmd-events"
    assert seen["messageType"] == "TRANSACTIONAL"
    assert sim.sms_messages_to(phone) == 1


def test_the_service_has_no_idempotency_a_second_call_is_a_second_sms(eum, sim) -> None:
    # This is why the send path must never repeat a call whose outcome it does not know.
    phone, key = new_phone(), new_key()
    first = eum.send(phone, "hi", idempotency_key=key)
    second = eum.send(phone, "hi", idempotency_key=key)
    assert first != second
    assert sim.sms_messages_to(phone) == 2


@pytest.mark.parametrize(("validity", "ttl"), [(1, 5), (10**9, 259_200), (90.7, 90)])
def test_the_ttl_is_kept_within_what_the_service_takes(eum, sim, validity: float, ttl: int) -> None:
    message_id = eum.send(new_phone(), "hi", idempotency_key=new_key(), validity_seconds=validity)
    assert sim.eum_message(message_id)["timeToLive"] == ttl


def test_a_number_the_service_refuses_is_this_messages_fault(eum, sim) -> None:
    with pytest.raises(PermanentError, match="ValidationException"):
        eum.send("+0123", "hi", idempotency_key=new_key())


def test_throttling_sends_nothing_and_says_so(eum, sim) -> None:
    sim.configure(eum={"throttle_rate": 1.0})
    before = sim.stats()["eum"].get("responses_429", 0)
    phone = new_phone()
    with pytest.raises(RateLimited, match="ThrottlingException"):
        eum.send(phone, "hi", idempotency_key=new_key())
    assert sim.sms_messages_to(phone) == 0
    assert sim.stats()["eum"]["responses_429"] - before == 1  # one call: botocore retried nothing


def test_a_service_error_is_transient_and_sent_nothing(eum, sim) -> None:
    sim.configure(eum={"error_rate": 1.0})
    phone = new_phone()
    with pytest.raises(TransientError) as raised:
        eum.send(phone, "hi", idempotency_key=new_key())
    assert not isinstance(raised.value, OutcomeUnknown)
    assert sim.sms_messages_to(phone) == 0


def test_no_answer_is_an_unknown_outcome_and_the_client_does_not_repeat_the_call(settings, stack, sim) -> None:
    # Given a service that sends the SMS but answers only after the client has given up
    sim.configure(eum={"timeout_rate": 1.0, "timeout_ms": 2500})
    impatient = _client(settings, settings.sms_base_url, timeout=1.0)
    phone = new_phone()
    try:
        with pytest.raises(OutcomeUnknown):
            impatient.send(phone, "hi", idempotency_key=new_key())
    finally:
        sim.configure(eum={"timeout_rate": 0})

    # Then the fan got it once: botocore did not retry the call on its own
    assert sim.sms_messages_to(phone) == 1


@pytest.mark.stack  # a real socket: a connection refused on loopback
def test_an_endpoint_that_cannot_be_reached_sent_nothing(settings) -> None:
    unreachable = _client(settings, f"http://127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(TransientError) as raised:
        unreachable.send(new_phone(), "hi", idempotency_key=new_key())
    assert not isinstance(raised.value, OutcomeUnknown)


def test_a_success_without_a_message_id_is_an_unknown_outcome(settings, canned) -> None:
    canned.answer("POST", "/", 200, {})
    with pytest.raises(OutcomeUnknown, match="no MessageId"):
        _client(settings, canned.url).send(new_phone(), "hi", idempotency_key=new_key())


def test_a_number_opted_out_at_the_provider_is_this_messages_fault(eum, sim) -> None:
    phone = new_phone()
    sim.configure(eum={"opted_out": [phone]})
    with pytest.raises(PermanentError, match="DESTINATION_PHONE_NUMBER_OPTED_OUT"):
        eum.send(phone, "hi", idempotency_key=new_key())
    assert sim.sms_messages_to(phone) == 0


# ---- answers the simulator never gives: a client that raises what botocore raises ------------------


class _Raising:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def send_text_message(self, **_request: Any) -> dict[str, Any]:
        raise self.exc


def _client_error(status: int, body: dict[str, Any]) -> ClientError:
    return ClientError({**body, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendTextMessage")  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (SSLError(endpoint_url="https://sms-voice", error="EOF in violation of protocol"), OutcomeUnknown),  # type: ignore[arg-type]
        (ConnectionClosedError(endpoint_url="https://sms-voice"), OutcomeUnknown),
        (HTTPClientError(error="RemoteDisconnected"), OutcomeUnknown),
        (_client_error(502, {"Error": {"Code": "502", "Message": "Bad Gateway"}}), OutcomeUnknown),
        (_client_error(504, {"Error": {"Code": "504", "Message": "Gateway Timeout"}}), OutcomeUnknown),
        (NoCredentialsError(), TransientError),
        (
            _client_error(400, {"Error": {"Code": "ValidationException"}, "Reason": "SENDER_ID_NOT_REGISTERED"}),
            TransientError,
        ),
        (_client_error(400, {"Error": {"Code": "AccessDeniedException"}}), TransientError),
        (_client_error(500, {"Error": {"Code": "InternalServerException"}}), TransientError),
        (
            _client_error(400, {"Error": {"Code": "ValidationException"}, "Reason": "DESTINATION_COUNTRY_BLOCKED"}),
            PermanentError,
        ),
        (ParamValidationError(report="Invalid type for parameter TimeToLive"), PermanentError),
    ],
)
def test_each_failure_says_whether_the_sms_may_have_gone(exc: Exception, expected: type[Exception]) -> None:
    client = EumSmsClient(_Raising(exc), origination_identity="pool-1")
    with pytest.raises(expected) as raised:
        client.send(new_phone(), "hi", idempotency_key=new_key())
    if expected is TransientError:  # not the unknown kind: nothing was sent, a retry is safe
        assert not isinstance(raised.value, OutcomeUnknown)
