"""Stage 4, sending, called directly against moto, Redis and the SMS simulator: claims, each send's
outcome and what it leaves in the table, and the rate limit every sender shares."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from datetime import time as clock
from typing import Any

import pytest
import redis
from botocore.exceptions import EndpointConnectionError
from prometheus_client import REGISTRY

from dmd_tasks.domain.campaigns import SendWindow
from dmd_tasks.domain.entities import Event
from dmd_tasks.infra.circuit import Permit, ProviderCircuit
from dmd_tasks.infra.deadline import Deadline
from dmd_tasks.infra.ratelimit import SharedRateLimiter, SmsThrottle
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.pipeline.send_outcomes import retry_delay
from dmd_tasks.pipeline.send_step import send_claimed
from dmd_tasks.pipeline.stage4_send import claim_batch, send_notifications
from dmd_tasks.services import Services, sms_account
from dmd_tasks.store.items import item as as_item
from tests.helpers import clear_circuits

Outboxes = Callable[..., Any]


def healthy(services: Services, calls: int = 10) -> None:
    """Calls the provider answered well, in its circuit's window: a failure now is the message's own."""
    for _ in range(calls):
        services.sms_circuit.succeeded(services.sms_circuit.before_call())


def provider_errors(sim) -> int:
    """5xx answers the SMS simulator gave so far."""
    return sum(v for k, v in sim.stats()["sms"].items() if k.startswith("responses_5"))


def claim_one(services: Services, notification_id: str) -> dict[str, Any]:
    owned = claim_batch(services, [notification_id])
    assert [nid for nid, _ in owned] == [notification_id]
    return owned[0][1]


# --- retry_delay ------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "ceiling"), [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0)])
def test_retry_delay_is_jittered_below_the_exponential_ceiling(attempts: int, ceiling: float) -> None:
    delays = [retry_delay(attempts, 2.0, 30.0, None) for _ in range(300)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling / 2  # full jitter spreads over the whole range (fails with odds 2^-300)


def test_retry_delay_waits_at_least_the_providers_retry_after_and_never_beyond_the_cap() -> None:
    assert retry_delay(1, 2.0, 30.0, 7.0) == 7.0
    assert retry_delay(1, 2.0, 30.0, 90.0) == 30.0
    assert all(retry_delay(12, 2.0, 30.0, None) <= 30.0 for _ in range(100))


# --- claim_batch --------------------------------------------------------------------------------


def test_only_scheduled_notifications_are_claimed_and_only_once(services: Services, outbox: Outboxes) -> None:
    box = outbox()
    scheduled, _ = box.add("ready")
    pending, _ = box.add("early", status="pending")
    owned_elsewhere, _ = box.add("taken", status="sending")
    never_generated = f"{box.sale_id}:ghost"
    before = time.time()

    owned = claim_batch(services, [scheduled, pending, owned_elsewhere, never_generated])

    assert [nid for nid, _ in owned] == [scheduled]
    claimed = owned[0][1]
    assert claimed["status"] == "sending"
    lease = services.settings.send_lease_seconds
    assert int(before) + lease <= claimed["leaseUntil"] <= time.time() + lease
    assert box.item("ready")["leaseToken"] == claimed["leaseToken"]  # every later write of this send is fenced by it
    assert box.item("early")["status"] == "pending"
    # a repeated message finds nothing left to claim
    assert claim_batch(services, [scheduled]) == []


# --- send_claimed -------------------------------------------------------------------------------


def test_a_send_stores_the_providers_message_id(services: Services, outbox: Outboxes, sim) -> None:
    box = outbox()
    nid, phone = box.add("fan1")

    assert send_claimed(services, nid, claim_one(services, nid), set()) == "sent"

    sent = box.item("fan1")
    assert sent["status"] == "sent"
    assert sent["providerMessageId"].startswith("SM")
    assert "leaseUntil" not in sent
    assert services.notifications.find_by_message_id(sent["providerMessageId"]) == (box.sale_id, "fan1")
    assert sim.sms_messages_to(phone) == 1


def test_an_opted_out_fan_is_failed_with_the_reason_and_not_messaged(services: Services, outbox: Outboxes, sim) -> None:
    box = outbox()
    nid, phone = box.add("fan1")

    assert send_claimed(services, nid, claim_one(services, nid), {phone}) == "failed"

    failed = box.item("fan1")
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "opted out" in failed["reason"]
    assert sim.sms_messages_to(phone) == 0


def test_a_number_the_provider_refuses_fails_at_once(services: Services, outbox: Outboxes) -> None:
    box = outbox()
    nid, _ = box.add("fan1", phone="+12")  # not E.164: the provider answers 400

    assert send_claimed(services, nid, claim_one(services, nid), set()) == "failed"

    failed = box.item("fan1")
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "refused with 400" in failed["reason"]


def test_a_sale_without_a_campaign_fails_its_notifications(services: Services, outbox: Outboxes) -> None:
    box = outbox(campaign=False)
    nid, _ = box.add("fan1")

    assert send_claimed(services, nid, claim_one(services, nid), set()) == "failed"
    assert "no campaign" in box.item("fan1")["reason"]


def test_a_provider_error_schedules_a_retry_with_one_more_attempt(
    services: Services, outbox: Outboxes, faults, sim
) -> None:
    box = outbox()
    nid, phone = box.add("fan1")
    healthy(services)  # the provider answers other calls well
    faults("sms", error_rate=1.0)
    before = time.time()

    assert send_claimed(services, nid, claim_one(services, nid), set()) == "retry"

    retry = box.item("fan1")
    assert (retry["status"], retry["attempts"]) == ("scheduled", 1)
    # first retry: full jitter under send_retry_base_seconds (2 s), rounded up to a second
    assert int(before) <= retry["notBefore"] <= time.time() + services.settings.send_retry_base_seconds + 1
    assert "upstream error 50" in retry["lastError"]
    assert "leaseUntil" not in retry
    assert sim.sms_messages_to(phone) == 0


def test_a_send_past_its_batchs_deadline_calls_nobody_and_goes_back_to_scheduled(
    services: Services, outbox: Outboxes, sim
) -> None:
    # Given a batch held up by a slow dependency until its work budget ran out
    box = outbox()
    nid, phone = box.add("fan1")

    # When its next send comes up, then no call is begun: back to scheduled, no attempt spent
    assert send_claimed(services, nid, claim_one(services, nid), set(), deadline=Deadline.after(0)) == "not-attempted"
    back = box.item("fan1")
    assert (back["status"], back["attempts"]) == ("scheduled", 0)
    assert "out of time" in back["lastError"] and "leaseToken" not in back
    assert sim.sms_messages_to(phone) == 0


def test_a_batch_out_of_time_gives_its_sends_back_in_one_request_and_publishes_them(
    services: Services, outbox: Outboxes, sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch of five whose time a slow dependency used up before its sends
    box = outbox()
    sent = [box.add(f"fan{n}") for n in range(5)]
    monkeypatch.setattr("dmd_tasks.pipeline.stage4_send.Deadline", Expired)
    writes: list[str] = []
    client = services.table._client
    for name in ("transact_write_items", "update_item"):
        real = getattr(client, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            writes.append(f"{_name}:{len(kwargs.get('TransactItems', [None]))}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(client, name, counted)
    published: list[list[tuple[str, float]]] = []
    monkeypatch.setattr("dmd_tasks.pipeline.stage4_send.publish_due", lambda app, settings, due: published.append(due))

    # When the batch runs
    outcomes = send_notifications.run([nid for nid, _ in sent])

    # Then nobody is called and all five go back to scheduled, no attempt spent, in one write
    # after the claim's (a write each took longer than a slow table left the batch), and their
    # send tasks are published for when each is due
    assert outcomes == {"skipped": 0, "not-attempted": 5}
    assert writes == ["transact_write_items:5", "transact_write_items:5"]
    assert {(box.item(f"fan{n}")["status"], box.item(f"fan{n}")["attempts"]) for n in range(5)} == {("scheduled", 0)}
    assert sorted(nid for nid, _ in published[0]) == sorted(nid for nid, _ in sent)
    assert all(sim.sms_messages_to(phone) == 0 for _, phone in sent)


def test_what_a_batch_claimed_is_sent_though_its_claim_took_a_whole_work_budget(
    outbox: Outboxes, sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a work budget of 1 s (a soft time limit of 3 s), and a claim a slow table held up 1.5 s
    slow = Services(load_settings(task_soft_time_limit_seconds=3, task_time_limit_seconds=5))
    box = outbox()
    sent = [box.add(f"fan{n}") for n in range(2)]
    real = claim_batch

    def held_up(services: Services, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        owned = real(services, ids)
        time.sleep(1.5)
        return owned

    monkeypatch.setattr("dmd_tasks.pipeline.stage4_send.get_services", lambda: slow)
    monkeypatch.setattr("dmd_tasks.pipeline.stage4_send.claim_batch", held_up)

    # When the batch runs, then what it claimed is sent, not given back: sends may start until two
    # budgets, the last third of the soft limit left for the records
    assert send_notifications.run([nid for nid, _ in sent]) == {"skipped": 0, "sent": 2}
    assert all(sim.sms_messages_to(phone) == 1 for _, phone in sent)


class Expired:
    """A ``Deadline`` whose time is already over (``send_notifications``'s work budget, spent)."""

    @staticmethod
    def after(_seconds: float) -> Deadline:
        return Deadline.after(0)


def test_a_throttled_send_spends_no_attempt_and_pauses_every_sender(
    services: Services, outbox: Outboxes, faults, sim
) -> None:
    # Given a provider that answers 429 with Retry-After: 7
    box = outbox()
    nid, _ = box.add("fan1")
    other, other_phone = box.add("fan2")
    faults("sms", throttle_rate=1.0, throttle_retry_after=7)
    before = time.time()

    # When one send meets it
    assert send_claimed(services, nid, claim_one(services, nid), set()) == "not-attempted"

    # Then the notification waits the provider's time without spending an attempt
    retry = box.item("fan1")
    assert (retry["status"], retry["attempts"]) == ("scheduled", 0)
    assert retry["notBefore"] >= before + 7
    assert "429" in retry["lastError"]
    # and every sender (another process here) pauses: the next send does not call the provider
    assert Services(services.settings).sms_circuit.state() == "open"
    faults("sms", throttle_rate=0.0)
    assert send_claimed(Services(services.settings), other, claim_one(services, other), set()) == "not-attempted"
    assert "paused" in box.item("fan2")["lastError"]
    assert box.item("fan2")["attempts"] == 0
    assert sim.sms_messages_to(other_phone) == 0


def test_a_provider_failing_most_calls_spends_no_attempt_and_a_probe_closes_its_circuit(
    stack, outbox: Outboxes, faults, sim
) -> None:
    # Given senders whose circuit opens after 4 failures at half the calls or more, for one second,
    # and a provider that answered the last four calls well
    services = Services(load_settings(circuit_min_calls=4, circuit_open_seconds=1.0))
    box = outbox()
    ids = [box.add(f"fan{i}")[0] for i in range(8)]
    healthy(services, calls=4)
    faults("sms", error_rate=1.0)

    # When the provider fails every call
    errors_before = provider_errors(sim)
    outcomes = [send_claimed(services, nid, claim_one(services, nid), set()) for nid in ids[:6]]

    # Then the first two failures, while most calls still succeeded, are the messages' own (an
    # attempt each); the third in a row is the provider's (DMD_CIRCUIT_STREAK_FAILURES, default 3:
    # no attempt); the fourth makes failures half the calls and four in all: the provider's too,
    # and it opens the circuit; the fifth and sixth do not reach the provider at all
    assert services.settings.circuit_streak_failures == 3
    assert outcomes == ["retry", "retry", "not-attempted", "not-attempted", "not-attempted", "not-attempted"]
    assert [box.item(f"fan{i}")["attempts"] for i in range(6)] == [1, 1, 0, 0, 0, 0]
    assert services.sms_circuit.state() == "open"
    assert "paused" in box.item("fan5")["lastError"]
    assert provider_errors(sim) - errors_before == 4

    # And once it answers again, after the pause one probe goes through and closes the circuit
    faults("sms", error_rate=0.0)
    time.sleep(1.1)
    assert services.sms_circuit.state() == "half-open"
    assert send_claimed(services, ids[6], claim_one(services, ids[6]), set()) == "sent"
    assert services.sms_circuit.state() == "closed"
    assert send_claimed(services, ids[7], claim_one(services, ids[7]), set()) == "sent"


def test_a_send_that_would_land_in_quiet_hours_waits_for_the_window(services: Services, outbox: Outboxes, sim) -> None:
    # Given a notification scheduled while its fan's window was open, sent after it closed
    hour = datetime.now(UTC).hour
    window = SendWindow(start=clock((hour + 2) % 24), end=clock((hour + 3) % 24))
    box = outbox(window=window)
    nid, phone = box.add("fan1", attempts=1)
    before = time.time()

    # Then it is not sent: it goes back to pending until the window opens, attempts unchanged
    assert send_claimed(services, nid, claim_one(services, nid), set()) == "quiet-hours"
    back = box.item("fan1")
    assert (back["status"], back["attempts"]) == ("pending", 1)
    assert back["sendAfter"] == int(window.next_open_ts(before, "UTC"))
    assert back["gsi1pk"].startswith("PENDING#")
    assert not {"leaseUntil", "leaseToken"} & set(back)
    assert sim.sms_messages_to(phone) == 0


def test_a_notification_past_its_validity_ends_expired(services: Services, outbox: Outboxes, sim) -> None:
    box = outbox()
    nid, phone = box.add("fan1", expires_at=time.time() - 1)
    assert send_claimed(services, nid, claim_one(services, nid), set()) == "failed"
    failed = box.item("fan1")
    assert failed["status"] == "failed" and failed["reason"].startswith("expired")
    assert sim.sms_messages_to(phone) == 0


@pytest.mark.parametrize(
    ("template", "encoding", "parts"),
    [
        ("{{ event_name }}: {{ short_url }}", "GSM-7", 1),
        ("{{ event_name }} \u2764 {{ short_url }}", "UCS-2", 1),
        ("{{ short_url }} " + "x" * 200, "GSM-7", 2),
        ("{{ short_url }} \u2764" + "x" * 60, "UCS-2", 2),
    ],
)
def test_a_sent_notification_records_its_parts_and_encoding(
    services: Services, outbox: Outboxes, template: str, encoding: str, parts: int
) -> None:
    box = outbox(template=template.encode().decode("unicode_escape"))
    nid, _ = box.add("fan1")
    account = {"provider": sms_account(services.settings)}  # as its cap and circuit name it
    parts_before = REGISTRY.get_sample_value("dmd_sms_parts_sent_total", account) or 0
    sends_before = REGISTRY.get_sample_value("dmd_send_delay_seconds_count", account) or 0
    late_before = REGISTRY.get_sample_value("dmd_send_delay_seconds_sum", account) or 0
    assert send_claimed(services, nid, claim_one(services, nid), set()) == "sent"
    sent = box.item("fan1")
    assert (sent["encoding"], sent["parts"]) == (encoding, parts)
    assert REGISTRY.get_sample_value("dmd_sms_parts_sent_total", account) == parts_before + parts
    # counted from its sendAfter (a second or two before: the outbox writes it due already)
    assert REGISTRY.get_sample_value("dmd_send_delay_seconds_count", account) == sends_before + 1
    late = (REGISTRY.get_sample_value("dmd_send_delay_seconds_sum", account) or 0) - late_before
    assert 1 <= late < 30


def test_a_message_over_the_part_limit_fails_with_the_reason(stack, outbox: Outboxes, sim) -> None:
    services = Services(load_settings(max_message_parts=1))
    box = outbox(template="{{ short_url }} " + "x" * 200)
    nid, phone = box.add("fan1")
    assert send_claimed(services, nid, claim_one(services, nid), set()) == "failed"
    assert "2 SMS parts" in box.item("fan1")["reason"]
    assert sim.sms_messages_to(phone) == 0


def test_the_last_attempt_fails_for_good(services: Services, outbox: Outboxes, faults) -> None:
    box = outbox()
    nid, _ = box.add("fan1", attempts=services.settings.max_send_attempts - 1)
    faults("sms", error_rate=1.0)
    healthy(services)

    assert send_claimed(services, nid, claim_one(services, nid), set()) == "failed"

    failed = box.item("fan1")
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["reason"].startswith("gave up after 3 attempts")


def test_a_send_whose_lease_was_taken_back_is_resent_with_the_same_key(
    services: Services, outbox: Outboxes, sim
) -> None:
    # Given worker A that owns a notification, but so slowly that its lease expired, the reconciler
    # took it back, and worker B claimed it again
    box = outbox()
    nid, phone = box.add("fan1")
    stale = claim_one(services, nid)
    expired = int(stale["leaseUntil"]) + 1
    assert services.notifications.take_back(box.sale_id, "fan1", stale["leaseToken"], 1, expired, "send lease expired")
    fresh = claim_one(services, nid)
    assert fresh["leaseToken"] != stale["leaseToken"]

    # When A's send goes through, it cannot mark it sent: the lease is B's now
    assert send_claimed(services, nid, stale, set()) == "lease-lost"
    taken = box.item("fan1")
    assert (taken["status"], taken["leaseToken"], taken["attempts"]) == ("sending", fresh["leaseToken"], 1)
    assert "providerMessageId" not in taken

    # Then B's send is answered with the first message (same idempotency key): the fan gets one SMS
    assert send_claimed(services, nid, fresh, set()) == "sent"
    assert box.item("fan1")["status"] == "sent"
    assert sim.sms_messages_to(phone) == 1


def test_a_send_with_its_lease_nearly_over_is_given_back_without_an_attempt(
    services: Services, outbox: Outboxes, sim
) -> None:
    # Given a claim whose lease ends before a provider call could time out (the worker was paused)
    box = outbox()
    nid, phone = box.add("fan1", attempts=1)
    item = claim_one(services, nid)
    late = {**item, "leaseUntil": int(time.time() + services.settings.sms_timeout_seconds - 1)}

    # When it is sent, the provider is not called: the notification goes back to scheduled as it was
    assert send_claimed(services, nid, late, set()) == "not-attempted"
    back = box.item("fan1")
    assert (back["status"], back["attempts"], back["round"]) == ("scheduled", 1, 2)
    assert "lease nearly over" in back["lastError"]
    assert not {"leaseUntil", "leaseToken"} & set(back)
    assert sim.sms_messages_to(phone) == 0


@pytest.mark.parametrize(
    "down",
    [
        pytest.param("redis", id="redis-down-at-the-rate-limit"),
        pytest.param("dynamodb", id="dynamodb-down-reading-the-event"),
    ],
)
def test_a_dependency_down_before_the_provider_call_spends_no_attempt(
    services: Services, outbox: Outboxes, sim, monkeypatch: pytest.MonkeyPatch, down: str
) -> None:
    # Given a notification on its second attempt, and one of our own dependencies failing before the send
    box = outbox()
    nid, phone = box.add("fan1", attempts=1)
    item = claim_one(services, nid)

    def fail(*args: Any, **kwargs: Any) -> None:
        if down == "redis":
            raise redis.exceptions.ConnectionError("Error 111 connecting to redis")
        raise EndpointConnectionError(endpoint_url="http://dynamodb.invalid")

    if down == "redis":
        monkeypatch.setattr(services.sms_throttle, "acquire", fail)
    else:
        monkeypatch.setattr(services.events, "get", fail)
    before = time.time()

    # When it is sent
    assert send_claimed(services, nid, item, set()) == "not-attempted"

    # Then it is back to scheduled for a retry soon, its attempts unchanged, the provider never called
    back = box.item("fan1")
    assert (back["status"], back["attempts"], back["round"]) == ("scheduled", 1, 2)
    expected = "ConnectionError" if down == "redis" else "EndpointConnectionError"
    assert back["lastError"].startswith(expected)
    assert int(before) <= back["notBefore"] <= time.time() + services.settings.send_retry_base_seconds + 1
    assert sim.sms_messages_to(phone) == 0


# --- the shared rate limit -----------------------------------------------------------------------


def test_every_send_takes_a_slot_of_the_limit_all_senders_share(
    services: Services, outbox: Outboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = outbox()
    ids = [box.add(f"fan{i}")[0] for i in range(3)]
    owned = claim_batch(services, ids)
    reserved: list[tuple[str, float, list[int]]] = []
    real_reserve = SmsThrottle.reserve

    def spy(throttle: SmsThrottle, sale_id: str, rate: float, parts: Any, timeout_seconds: float) -> list[float]:
        reserved.append((sale_id, rate, list(parts)))
        return real_reserve(throttle, sale_id, rate, parts, timeout_seconds)

    monkeypatch.setattr(SmsThrottle, "reserve", spy)
    seconds, micros = services.redis.time()
    before_us = seconds * 1_000_000 + micros

    assert [send_claimed(services, nid, item, set()) for nid, item in owned] == ["sent"] * 3

    # each send on its own: one reservation of one message at the sale's rate (the outbox: 50/s)
    assert reserved == [(box.sale_id, 50, [1])] * 3
    # ... on both paces: the sale's moved by 3 × 1/50 s, the account's by 3 × (1 + headroom) / cap
    settings = services.settings
    campaign_next = int(services.redis.get(f"dmd:rate:sale:{box.sale_id}") or 0)
    account_next = int(services.redis.get(f"dmd:rate:sms:{sms_account(settings)}") or 0)
    assert campaign_next - before_us >= 3 * 20_000
    spacing_us = (1 + settings.sms_account_headroom) * 1_000_000 / settings.sms_account_parts_per_second
    assert account_next - before_us >= 3 * spacing_us - 1


def test_a_batch_asks_the_circuit_once_reserves_once_and_tells_its_successes_together(
    services: Services, outbox: Outboxes, sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch of five scheduled notifications of one sale, and a closed circuit
    box = outbox()
    ids = [box.add(f"fan{i}")[0] for i in range(5)]
    circuit = services.sms_router.primary.circuit
    clear_circuits()
    reserved: list[list[int]] = []
    asked: list[int] = []
    recorded: list[int] = []
    real_reserve, real_before, real_outcome = SmsThrottle.reserve, ProviderCircuit.before_call, ProviderCircuit._outcome

    def spy_reserve(throttle: SmsThrottle, sale_id: str, rate: float, parts: Any, timeout: float) -> list[float]:
        reserved.append(list(parts))
        return real_reserve(throttle, sale_id, rate, parts, timeout)

    def spy_before(self: ProviderCircuit) -> Permit:
        asked.append(1)
        return real_before(self)

    def spy_outcome(self: ProviderCircuit, permit: Permit, ok: bool, earlier: int = 0) -> int:
        recorded.append(earlier + 1)
        return real_outcome(self, permit, ok, earlier)

    monkeypatch.setattr(SmsThrottle, "reserve", spy_reserve)
    monkeypatch.setattr(ProviderCircuit, "before_call", spy_before)
    monkeypatch.setattr(ProviderCircuit, "_outcome", spy_outcome)

    account = {"provider": sms_account(services.settings)}
    delays_before = REGISTRY.get_sample_value("dmd_send_delay_seconds_count", account) or 0

    # When the send task runs it
    assert send_notifications.run(ids) == {"sent": 5, "skipped": 0}

    # Then one reservation covered the five, the circuit was asked once, and told of five
    # successes in one round trip (its window counts them all)
    assert reserved == [[1] * 5]
    assert len(asked) == 1
    assert recorded == [5]
    assert circuit.window_counts() == (5, 0)
    assert all(box.item(f"fan{i}")["status"] == "sent" for i in range(5))
    # what the claim read back was enough to count how late each went after it was due
    assert REGISTRY.get_sample_value("dmd_send_delay_seconds_count", account) == delays_before + 5


def test_a_batch_reserves_its_slots_a_pool_width_ahead_not_all_at_once(
    services: Services, outbox: Outboxes, sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch of 20 sends of one sale, on a pool of 8 threads
    box = outbox()
    ids = [box.add(f"fan{i}")[0] for i in range(20)]
    clear_circuits()
    reserved: list[int] = []
    real_reserve = SmsThrottle.reserve

    def spy_reserve(throttle: SmsThrottle, sale_id: str, rate: float, parts: Any, timeout: float) -> list[float]:
        reserved.append(len(parts))
        return real_reserve(throttle, sale_id, rate, parts, timeout)

    monkeypatch.setattr(SmsThrottle, "reserve", spy_reserve)

    # When the send task runs it, then every send went, on slots reserved at most 8 ahead (the
    # sends that run at once), in a few requests rather than one per send
    assert send_notifications.run(ids) == {"sent": 20, "skipped": 0}
    assert services.settings.aws_io_threads == 8
    assert sum(reserved) == 20 and max(reserved) <= 8 and len(reserved) <= 5, reserved


def test_a_send_with_no_slot_in_time_is_retried_without_calling_the_provider(stack, outbox: Outboxes, sim) -> None:
    # Given a campaign of 1 SMS a second, and a sender that waits at most half a second for a slot
    impatient = Services(load_settings(send_rate_wait_seconds=0.5))
    box = outbox(rate=1)
    nid, phone = box.add("fan1")
    item = claim_one(impatient, nid)
    # When another process (another Services) has just taken this second's slot
    Services(impatient.settings).sms_throttle.campaign(box.sale_id).acquire(1, timeout_seconds=5)
    before = time.time()

    # Then this send is not made now but scheduled again, without spending an attempt (nothing reached the provider)
    assert send_claimed(impatient, nid, item, set()) == "not-attempted"
    assert time.time() - before < 1.5  # it waited for a slot no longer than it may
    retry = box.item("fan1")
    assert (retry["status"], retry["attempts"], retry["round"]) == ("scheduled", 0, 2)
    assert "rate limit" in retry["lastError"]
    assert int(before) <= retry["notBefore"] <= time.time() + impatient.settings.send_retry_base_seconds + 1
    assert not {"leaseUntil", "leaseToken"} & set(retry)
    assert sim.sms_messages_to(phone) == 0


def test_a_send_does_not_wait_for_a_slot_past_its_batchs_time(stack, outbox: Outboxes, sim) -> None:
    # Given a campaign of 1 SMS a second whose next slot another process has just taken, and a
    # batch with 0.3 s of its time left (a slow dependency held it up)
    services = Services(load_settings(send_rate_wait_seconds=5))
    box = outbox(rate=1)
    nid, phone = box.add("fan1")
    item = claim_one(services, nid)
    Services(services.settings).sms_throttle.campaign(box.sale_id).acquire(1, timeout_seconds=5)
    key = f"dmd:rate:sale:{box.sale_id}"
    taken = services.redis.get(key)
    before = time.monotonic()

    # When it is sent, then it goes back at once without spending an attempt: no slot a second
    # away is reserved (it would be wasted: the batch's time is over by then) and none waited for
    assert send_claimed(services, nid, item, set(), deadline=Deadline.after(0.3)) == "not-attempted"
    assert time.monotonic() - before < 0.6
    assert services.redis.get(key) == taken
    retry = box.item("fan1")
    assert (retry["status"], retry["attempts"]) == ("scheduled", 0)
    assert sim.sms_messages_to(phone) == 0


def test_the_shared_rate_limit_holds_across_concurrent_callers(services: Services) -> None:
    # (SharedRateLimiter's own module: a fit for tests/unit/infra/test_ratelimit.py; kept here beside
    # the sends that rely on it.)
    limiter = SharedRateLimiter(services.redis, f"dmd:test:rate:{uuid.uuid4().hex}", window_seconds=1.0)
    grants: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(6):
            limiter.acquire(10, timeout_seconds=10)
            with lock:
                grants.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants.sort()
    assert len(grants) == 30
    busiest = max(sum(1 for g in grants if start <= g < start + 0.95) for start in grants)
    assert busiest <= 10
    assert grants[-1] - grants[0] >= 1.9  # 30 grants at 10/s need at least two full windows


# --- the task -------------------------------------------------------------------------------------


def test_the_task_sends_a_batch_where_each_id_has_its_own_outcome(services: Services, outbox: Outboxes, sim) -> None:
    box = outbox()
    ready, phone = box.add("ready")
    stopped, stopped_phone = box.add("stopped")
    services.demand.add_optout(stopped_phone, time.time())
    pending, _ = box.add("early", status="pending")

    outcomes = send_notifications.run(["not an id", ready, stopped, pending])

    assert outcomes == {"invalid-id": 1, "skipped": 1, "sent": 1, "failed": 1}
    assert box.item("ready")["status"] == "sent" and sim.sms_messages_to(phone) == 1
    assert box.item("stopped")["status"] == "failed" and sim.sms_messages_to(stopped_phone) == 0
    assert box.item("early")["status"] == "pending"


# --- a provider without idempotency (End User Messaging) ----------------------------------------


@pytest.fixture()
def eum(stack, settings) -> Services:
    return Services(
        load_settings(
            sms_provider="eum",
            eum_origination_identity="+18005550142",
            eum_endpoint_url=f"http://{settings.simulator_host}:{settings.simulator_port}",
            sms_timeout_seconds=1,
        )
    )


def test_a_send_through_a_provider_without_idempotency_records_its_call_first(
    eum: Services, outbox: Outboxes, sim
) -> None:
    box = outbox()
    nid, phone = box.add("fan1")
    assert send_claimed(eum, nid, claim_one(eum, nid), set()) == "sent"
    item = box.item("fan1")
    assert (item["status"], item["provider"]) == ("sent", "eum") and "callStartedAt" in item
    assert sim.eum_message(item["providerMessageId"])["context"] == {"notificationId": nid}
    assert sim.sms_messages_to(phone) == 1


def test_a_send_without_an_answer_waits_unconfirmed_and_is_never_sent_again(
    eum: Services, outbox: Outboxes, sim, faults
) -> None:
    # Given a service that accepts the message but answers after the client gave up
    faults("eum", timeout_rate=1.0, timeout_ms=1500)
    box = outbox()
    nid, phone = box.add("fan1")

    # When it is sent
    assert send_claimed(eum, nid, claim_one(eum, nid), set()) == "unconfirmed"

    # Then it waits for the service's event, no attempt spent, and nothing can claim it again
    item = box.item("fan1")
    assert (item["status"], item["attempts"]) == ("unconfirmed", 0)
    assert "no answer" in item["lastError"] and not {"leaseToken", "leaseUntil"} & set(item)
    assert claim_batch(eum, [nid]) == []
    assert sim.sms_messages_to(phone) == 1


def test_a_worker_that_lost_its_lease_makes_no_call_to_a_provider_without_idempotency(
    eum: Services, outbox: Outboxes, sim
) -> None:
    box = outbox()
    nid, phone = box.add("fan1")
    stale = claim_one(eum, nid)
    expired = int(stale["leaseUntil"]) + 1
    assert eum.notifications.take_back(box.sale_id, "fan1", stale["leaseToken"], 1, expired, "send lease expired")
    fresh = claim_one(eum, nid)

    assert send_claimed(eum, nid, stale, set()) == "not-attempted"
    assert sim.sms_messages_to(phone) == 0
    assert send_claimed(eum, nid, fresh, set()) == "sent"
    assert sim.sms_messages_to(phone) == 1


def test_an_answer_that_comes_after_the_reconciler_made_the_send_unconfirmed_settles_it(
    eum: Services, outbox: Outboxes, sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = outbox()
    nid, _ = box.add("fan1")
    claim = claim_one(eum, nid)
    real = eum.sms.send

    def answered_late(*args: Any, **kwargs: Any) -> str:
        message_id = real(*args, **kwargs)
        # meanwhile the lease expired and the reconciler moved the send to unconfirmed
        assert eum.notifications.mark_unconfirmed(
            box.sale_id, "fan1", time.time() + 60, "lease expired during the call", lease_token=claim["leaseToken"]
        )
        return message_id

    monkeypatch.setattr(eum.sms, "send", answered_late)
    assert send_claimed(eum, nid, claim, set()) == "sent"
    item = box.item("fan1")
    assert item["status"] == "sent" and item["providerMessageId"] and "gsi1pk" not in item


# --- two providers ------------------------------------------------------------------------------


@pytest.fixture()
def two(stack, settings) -> Services:
    """The HTTP provider, with End User Messaging as its standby."""
    return Services(
        load_settings(
            sms_failover_provider="eum",
            sms_failover_weight=0.0,
            eum_origination_identity="+18005550143",
            eum_endpoint_url=f"http://{settings.simulator_host}:{settings.simulator_port}",
            sms_timeout_seconds=1,
        )
    )


def test_with_two_providers_a_call_without_an_answer_is_sent_again_through_the_same_one_only(
    two: Services, outbox: Outboxes, sim, faults
) -> None:
    # Given an HTTP provider that takes the message but answers after the client gave up
    faults("sms", timeout_rate=1.0, timeout_ms=1500)
    box = outbox()
    nid, phone = box.add("fan1")
    assert send_claimed(two, nid, claim_one(two, nid), set()) == "retry"
    item = box.item("fan1")
    assert (item["pinnedProvider"], item["provider"]) == ("http", "http") and "callStartedAt" in item

    # When the HTTP provider is paused (its circuit open), the pinned send waits: the healthy
    # standby could send a second SMS
    faults("sms", timeout_rate=0.0)
    for _ in range(20):
        two.sms_circuit.failed(Permit(probe=False, token=uuid.uuid4().hex))
    assert two.sms_circuit.state() == "open"
    assert send_claimed(two, nid, claim_one(two, nid), set()) == "not-attempted"

    # Then once it is back, the send goes through it with the same key: one SMS, none through the other
    clear_circuits()
    assert send_claimed(two, nid, claim_one(two, nid), set()) == "sent"
    assert sim.sms_messages_to(phone) == 1
    assert box.item("fan1")["providerMessageId"].startswith("SM")  # the HTTP provider's id, not the service's


def test_with_two_providers_a_send_that_meets_a_paused_circuit_takes_the_other(
    two: Services, outbox: Outboxes, sim, faults
) -> None:
    faults("sms")  # (closes every circuit before and after)
    for _ in range(20):
        two.sms_circuit.failed(Permit(probe=False, token=uuid.uuid4().hex))
    box = outbox()
    nid, phone = box.add("fan1")
    assert send_claimed(two, nid, claim_one(two, nid), set()) == "sent"
    item = box.item("fan1")
    assert item["provider"] == "eum" and sim.eum_message(item["providerMessageId"]) is not None
    assert sim.sms_messages_to(phone) == 1


# --- the link in the message ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "outcome"),
    [
        ("https://www.ticketmaster.com/e/unshortened", "sent"),
        ("https://evil.com\\.ticketmaster.com/", "failed"),  # a browser would open evil.com
    ],
)
def test_without_a_short_url_only_an_allowed_long_url_is_sent(
    services: Services, outbox: Outboxes, sim, url: str, outcome: str
) -> None:
    box = outbox(template="{{ short_url }}")
    services.table.put_items([as_item(Event(id=box.event_id, name="Show", url=url))])  # never shortened
    nid, phone = box.add("fan1")
    assert send_claimed(services, nid, claim_one(services, nid), set()) == outcome
    if outcome == "failed":
        assert "backslash" in box.item("fan1")["reason"]
        assert sim.sms_messages_to(phone) == 0
    else:
        assert sim.sms_messages_to(phone) == 1
