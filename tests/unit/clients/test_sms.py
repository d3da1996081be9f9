"""The SMS client against the SMS simulator (and a canned upstream for answers it never gives)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dmd_tasks.clients.http import UpstreamRefused
from dmd_tasks.clients.sms import SmsClient
from dmd_tasks.domain.errors import PermanentError, RateLimited, TransientError
from dmd_tasks.ops.stack import free_port


@pytest.fixture()
def sms(settings, stack) -> SmsClient:
    return SmsClient.from_settings(settings)


def new_phone() -> str:
    return f"+1333{int(uuid.uuid4().hex[:7], 16) % 10_000_000:07d}"


def new_key() -> str:
    return f"sale{uuid.uuid4().hex[:8]}:fan1"


def test_a_message_is_sent_once_per_idempotency_key(sms: SmsClient, sim) -> None:
    phone, key = new_phone(), new_key()
    message_id = sms.send(phone, "Tickets: https://bit.ly/x", idempotency_key=key)
    assert message_id.startswith("SM")
    # the same key again is answered with the first message, and nothing new is sent
    assert sms.send(phone, "Tickets: https://bit.ly/x", idempotency_key=key) == message_id
    assert sim.sms_messages_to(phone) == 1
    # another key is another message
    assert sms.send(phone, "Tickets: https://bit.ly/x", idempotency_key=new_key()) != message_id
    assert sim.sms_messages_to(phone) == 2


def test_a_refused_api_key_is_permanent_and_not_in_the_message(settings, stack) -> None:
    client = SmsClient(settings.sms_base_url, "leaked-sms-key")
    with pytest.raises(UpstreamRefused) as raised:
        client.send(new_phone(), "hi", idempotency_key=new_key())
    assert raised.value.status_code == 401
    assert "leaked-sms-key" not in str(raised.value)


@pytest.mark.parametrize(
    ("to", "body", "reason"),
    [("+12", "hi", "recipient is not an E.164 number"), ("+13335550100", "", "invalid_body")],
)
def test_a_message_the_provider_refuses_is_permanent_with_its_reason(
    sms: SmsClient, sim, to: str, body: str, reason: str
) -> None:
    with pytest.raises(UpstreamRefused, match=reason) as raised:
        sms.send(to, body, idempotency_key=new_key())
    assert raised.value.status_code == 400
    assert sim.sms_messages_to(to) == 0


def test_a_provider_error_is_transient_and_sends_nothing(sms: SmsClient, faults, sim) -> None:
    phone = new_phone()
    faults("sms", error_rate=1.0)
    with pytest.raises(TransientError, match="upstream error 50") as raised:
        sms.send(phone, "hi", idempotency_key=new_key())
    assert not isinstance(raised.value, RateLimited)
    assert sim.sms_messages_to(phone) == 0


def test_a_429_is_rate_limited_with_the_providers_retry_after(sms: SmsClient, faults) -> None:
    faults("sms", throttle_rate=1.0, throttle_retry_after=4)
    with pytest.raises(RateLimited) as raised:
        sms.send(new_phone(), "hi", idempotency_key=new_key())
    assert raised.value.retry_after_seconds == 4.0


def test_a_timed_out_send_retried_with_its_key_reaches_the_fan_once(settings, faults, sim) -> None:
    # Given a provider that accepts the message but answers after the client gave up
    client = SmsClient(settings.sms_base_url, settings.sms_api_key.get_secret_value(), timeout_seconds=0.3)
    phone, key = new_phone(), new_key()
    faults("sms", timeout_rate=1.0, timeout_ms=1500)
    with pytest.raises(TransientError, match="timed out"):
        client.send(phone, "hi", idempotency_key=key)

    # When the send is retried with the same key
    faults("sms", timeout_rate=0.0)
    message_id = client.send(phone, "hi", idempotency_key=key)

    # Then the provider answers with the message it accepted the first time
    assert message_id.startswith("SM")
    assert sim.sms_messages_to(phone) == 1


@pytest.mark.stack  # a real socket: a connection refused on loopback
def test_a_provider_that_does_not_answer_the_connection_is_transient() -> None:
    client = SmsClient(f"http://127.0.0.1:{free_port()}", "k", timeout_seconds=1)
    with pytest.raises(TransientError, match="connection failed"):
        client.send(new_phone(), "hi", idempotency_key=new_key())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"status": "accepted"}, "no message_id"),
        (b"accepted", "no message_id"),
        ([], "no message_id"),
        ({"message_id": ""}, "empty message_id"),
        ({"message_id": 17}, "empty message_id"),
    ],
)
def test_an_answer_without_a_message_id_is_permanent(canned, body: Any, reason: str) -> None:
    canned.answer("POST", "/sms/v1/messages", 202, body)
    with pytest.raises(PermanentError, match=reason):
        SmsClient(canned.url, "k").send(new_phone(), "hi", idempotency_key=new_key())
