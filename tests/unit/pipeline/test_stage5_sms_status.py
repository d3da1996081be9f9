"""Stage 5, delivery receipts and replies, applied directly against moto (no bridge, no worker)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dmd_tasks.domain.provider_events import InboundEvent, StatusEvent
from dmd_tasks.infra import topology
from dmd_tasks.pipeline.stage2_generate import generate_sale
from dmd_tasks.pipeline.stage5_sms_status import apply_event, apply_events, record_sms_status
from dmd_tasks.services import Services, get_services
from dmd_tasks.store.codec import iso
from tests.queues import Queues


def receipt(message_id: str, status: str = "delivered", reference: str | None = None) -> StatusEvent:
    return StatusEvent(
        type="status", message_id=message_id, status=status, timestamp=iso(time.time()), reference=reference
    )


def new_phone() -> str:
    return f"+1444{int(uuid.uuid4().hex[:7], 16) % 10_000_000:07d}"


def test_a_receipt_before_our_sent_write_is_kept_until_it_applies(
    services: Services,
    seed_sale: Callable[..., str],
    sale_notifications: Callable[[Services, str], list[dict[str, Any]]],
) -> None:
    sale_id = seed_sale(services, 1)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    generate_sale(sale_id, services)
    fan = sale_notifications(services, sale_id)[0]["fanId"]
    services.notifications.schedule(sale_id, fan, time.time())
    claim = services.notifications.claim_for_send(sale_id, fan, time.time(), 60)
    assert claim is not None
    delivered = receipt("SMabc", reference=f"{sale_id}:{fan}")
    # the provider was faster than our write: the receipt cannot apply yet (its notification is in flight)
    assert apply_event(services, delivered) == "early"
    assert services.notifications.mark_sent(sale_id, fan, "SMabc", time.time(), lease_token=claim["leaseToken"])
    # a receipt for another message id never applies to it
    other = delivered.model_copy(update={"message_id": "SMzzz"})
    assert apply_event(services, other) == "unresolved"
    assert apply_event(services, delivered) == "delivered"
    assert apply_event(services, delivered) == "duplicate"
    assert services.notifications.status_of(sale_id, fan) == "delivered"


def test_a_receipt_without_our_reference_is_found_by_its_message_id(
    services: Services, outbox: Callable[..., Any]
) -> None:
    box = outbox()
    box.add("fan1", status="sending")
    message_id = f"SM{uuid.uuid4().hex}"
    token = box.item("fan1")["leaseToken"]
    assert services.notifications.mark_sent(box.sale_id, "fan1", message_id, time.time(), lease_token=token)

    assert apply_event(services, receipt(message_id, "undelivered")) == "undelivered"
    assert box.item("fan1")["status"] == "undelivered"
    # once final, the message id is out of the index: a late copy matches nothing
    assert services.notifications.find_by_message_id(message_id) is None


def test_intermediate_statuses_change_nothing(services: Services, outbox: Callable[..., Any]) -> None:
    box = outbox()
    box.add("fan1", status="sending")
    message_id = f"SM{uuid.uuid4().hex}"
    token = box.item("fan1")["leaseToken"]
    assert services.notifications.mark_sent(box.sale_id, "fan1", message_id, time.time(), lease_token=token)

    assert apply_event(services, receipt(message_id, "queued", f"{box.sale_id}:fan1")) == "intermediate-ignored"
    assert box.item("fan1")["status"] == "sent"


def unconfirmed(services: Services, box: Any, fan_id: str) -> None:
    """``fan_id`` of ``box`` sent through a provider without idempotency, with no answer."""
    box.add(fan_id, status="sending")
    token = box.item(fan_id)["leaseToken"]
    assert services.notifications.mark_calling(box.sale_id, fan_id, "eum", time.time(), token)
    assert services.notifications.mark_unconfirmed(
        box.sale_id, fan_id, time.time() + 3600, "eum send: no answer", lease_token=token
    )


def test_the_providers_final_event_settles_an_unconfirmed_send_by_the_id_it_carried(
    services: Services, outbox: Callable[..., Any]
) -> None:
    # Given a send through End User Messaging that got no answer (so no message id of ours)
    box = outbox()
    unconfirmed(services, box, "fan1")
    final = receipt("eum-msg-1", "delivered", f"{box.sale_id}:fan1").model_copy(update={"provider": "eum"})

    # When the service's final event comes, matched by the notification id in its Context
    assert apply_event(services, final) == "delivered"

    # Then it is delivered, with the service's message id, out of the unconfirmed index; once only
    item = box.item("fan1")
    assert (item["status"], item["providerMessageId"]) == ("delivered", "eum-msg-1")
    assert "gsi1pk" not in item
    assert apply_event(services, final) == "duplicate"


def test_an_intermediate_event_confirms_an_unconfirmed_send_and_a_late_final_one_settles_unknown(
    services: Services, outbox: Callable[..., Any]
) -> None:
    box = outbox()
    unconfirmed(services, box, "fan1")
    unconfirmed(services, box, "fan2")
    ref1, ref2 = f"{box.sale_id}:fan1", f"{box.sale_id}:fan2"

    # an HTTP provider's intermediate status is ignored without a write, whatever it names
    assert apply_event(services, receipt("m1", "queued", ref1)) == "intermediate-ignored"
    assert box.item("fan1")["status"] == "unconfirmed"
    # End User Messaging's TEXT_PENDING says the message is there: the send went
    pending = receipt("m1", "pending", ref1).model_copy(update={"provider": "eum"})
    assert apply_event(services, pending) == "confirmed"
    assert (box.item("fan1")["status"], box.item("fan1")["providerMessageId"]) == ("sent", "m1")
    assert apply_event(services, pending) == "intermediate-ignored"
    # its final event then applies as to any sent notification
    assert apply_event(services, receipt("m1", "delivered").model_copy(update={"provider": "eum"})) == "delivered"

    # a send that ended unknown (no event in its window) still takes the provider's late word
    item = box.item("fan2")
    assert services.notifications.mark_unknown(box.sale_id, "fan2", "no event", item["gsi1sk"])
    late = receipt("m2", "undelivered", ref2).model_copy(update={"provider": "eum"})
    assert apply_event(services, late) == "undelivered"
    assert box.item("fan2")["status"] == "undelivered"


def test_a_final_event_settles_a_send_whose_worker_died_after_its_call_without_waiting_for_the_lease(
    services: Services, outbox: Callable[..., Any]
) -> None:
    box = outbox()
    for fan_id, called in (("called", True), ("uncalled", False)):
        box.add(fan_id, status="sending")
        if called:
            token = box.item(fan_id)["leaseToken"]
            assert services.notifications.mark_calling(box.sale_id, fan_id, "eum", time.time(), token)

    def final(fan_id: str, provider: str | None) -> StatusEvent:
        return receipt(f"m-{fan_id}", "delivered", f"{box.sale_id}:{fan_id}").model_copy(update={"provider": provider})

    # the HTTP provider's receipt waits for our own sent write (it deduplicates: no hurry)
    assert apply_event(services, final("called", None)) == "early"
    # End User Messaging's event for a recorded call settles it at once, lease and all
    assert apply_event(services, final("called", "eum")) == "delivered"
    item = box.item("called")
    assert item["status"] == "delivered" and not {"leaseToken", "leaseUntil", "gsi1pk"} & set(item)
    # a send whose call was never recorded cannot have been answered: the event waits
    assert apply_event(services, final("uncalled", "eum")) == "early"
    assert box.item("uncalled")["status"] == "sending"


def test_a_stop_reply_opts_the_sender_out_and_other_replies_do_not(services: Services) -> None:
    stopping, chatty, malformed = new_phone(), new_phone(), "12345"

    def reply(sender: str, body: str) -> InboundEvent:
        return InboundEvent(type="inbound", sender=sender, body=body, timestamp=iso(time.time()))

    assert apply_event(services, reply(stopping, " stop ")) == "opted-out"
    assert apply_event(services, reply(chatty, "see you there")) == "inbound-ignored"
    assert apply_event(services, reply(malformed, "STOP")) == "inbound-ignored"
    assert services.demand.opted_out([stopping, chatty, malformed]) == {stopping}


def test_the_task_applies_a_batch_and_counts_what_it_could_not_parse(services: Services) -> None:
    stopping = new_phone()
    batch = [
        {"type": "inbound", "sender": stopping, "body": "STOP", "timestamp": iso(time.time())},
        {"type": "status", "message_id": "SMx", "status": "queued", "timestamp": iso(time.time())},
        {"type": "status"},
        "not an event",
    ]
    assert record_sms_status.run(batch) == {"opted-out": 1, "intermediate-ignored": 1, "invalid": 2}
    assert services.demand.opted_out([stopping]) == {stopping}


def test_a_stop_from_any_format_of_the_number_is_honoured(services: Services) -> None:
    digits = new_phone()[2:]
    written = f"+1 ({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    event = InboundEvent(type="inbound", sender=written, body="STOP", timestamp=iso(time.time()))
    assert apply_event(services, event) == "opted-out"
    assert services.demand.opted_out([f"+1{digits}"]) == {f"+1{digits}"}


def test_a_receipt_waits_as_long_as_its_notification_is_in_flight_and_a_stray_one_becomes_a_dead_letter(
    services: Services, outbox: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a notification still sending (its answer timed out: the provider's receipt came first)
    box = outbox()
    box.add("fan1", status="sending")
    now = iso(time.time())
    early = {"type": "status", "message_id": "SMearly", "status": "delivered", "timestamp": now}
    early["reference"] = f"{box.sale_id}:fan1"
    stray_id = f"SMstray{uuid.uuid4().hex}"  # no reference, and no notification has this message id
    stray = {"type": "status", "message_id": stray_id, "status": "delivered", "timestamp": now}
    published: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        record_sms_status, "apply_async", lambda args, kwargs, countdown: published.append((args, kwargs, countdown))
    )
    settings = get_services().settings

    # When the batch arrives, each goes again in a task of its own, a second later (one missed)
    assert record_sms_status.run([early, stray]) == {"early": 1, "unresolved": 1}
    assert published == [(([early],), {"waits": 1, "misses": 0}, 1), (([stray],), {"waits": 1, "misses": 1}, 1)]

    # When they have gone again more times than a task retries, the notification still in flight
    published.clear()
    outcome = record_sms_status.run([early, stray], waits=20, misses=settings.status_max_retries)
    # Then the stray receipt is a dead letter with the reason, and the early one goes on waiting
    assert outcome == {"early": 1, "unresolved": 1, "dead-lettered": 1}
    waited = min(30, settings.max_countdown_seconds)
    assert published == [(([early],), {"waits": 21, "misses": 0}, waited)]
    letters = [
        letter for letter in Queues(settings).drain(topology.dlq_url(settings, "sms-status")) if stray_id in letter
    ]
    assert len(letters) == 1 and "matched no notification in flight" in letters[0]
    assert "SMearly" not in letters[0]

    # When our sent write is done, the early receipt applies and nothing goes again
    token = box.item("fan1")["leaseToken"]
    assert services.notifications.mark_sent(box.sale_id, "fan1", "SMearly", time.time(), lease_token=token)
    published.clear()
    assert record_sms_status.run([early], waits=21) == {"delivered": 1}
    assert published == [] and box.item("fan1")["status"] == "delivered"


def test_a_batch_of_receipts_moves_its_sent_notifications_together_and_the_rest_as_one_by_one(
    services: Services, outbox: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three sent notifications, one still sending, and a receipt of each (one twice, one
    # without our reference)
    box = outbox()
    ids: dict[str, str] = {}
    for fan in ("a", "b", "c", "d"):
        box.add(fan, status="sending")
    for fan in ("a", "b", "c"):
        ids[fan] = f"SM{uuid.uuid4().hex}"
        token = box.item(fan)["leaseToken"]
        assert services.notifications.mark_sent(box.sale_id, fan, ids[fan], time.time(), lease_token=token)
    events = [
        receipt(ids["a"], reference=f"{box.sale_id}:a"),
        receipt(ids["b"], "undelivered", reference=f"{box.sale_id}:b"),
        receipt(ids["a"], reference=f"{box.sale_id}:a"),  # the provider's duplicate
        receipt(ids["c"]),  # no reference: found by its message id
        receipt(f"SM{uuid.uuid4().hex}", reference=f"{box.sale_id}:d"),  # before our sent write
    ]
    transactions: list[int] = []
    real = services.table._client.transact_write_items

    def counted(**kwargs: Any) -> Any:
        transactions.append(len(kwargs["TransactItems"]))
        return real(**kwargs)

    monkeypatch.setattr(services.table._client, "transact_write_items", counted)

    # When they are applied as one batch
    outcomes = apply_events(services, events)  # type: ignore[arg-type]

    # Then each gets its outcome, the referenced ones in one request (a duplicate of an item in
    # a transaction of its own), and every notification is where its receipt put it
    assert outcomes == ["delivered", "undelivered", "duplicate", "delivered", "early"]
    assert transactions[0] == 2
    assert {fan: box.item(fan)["status"] for fan in "abcd"} == {
        "a": "delivered",
        "b": "undelivered",
        "c": "delivered",
        "d": "sending",
    }
