"""NOTIFICATION items against moto: every move of the status machine, the indexes behind it, the counter.

Each move is conditional on the current status, so a repeated move returns False and changes
nothing; each move that wins counts once in ``dmd_notification_transitions_total``.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import epoch_key, iso
from dmd_tasks.store.keys import pending_index, pending_sort, sending_index
from dmd_tasks.store.notifications import NotificationRecords
from dmd_tasks.store.table import DemandTable

NOW = 1_795_600_800.0
LEASE = 60


@pytest.fixture()
def table(stack: object, settings: Settings) -> DemandTable:
    return DemandTable(settings)


@pytest.fixture()
def records(table: DemandTable, settings: Settings) -> NotificationRecords:
    return NotificationRecords(table, settings.pending_shards)


def transitions(source: str, target: str) -> float:
    value = REGISTRY.get_sample_value(
        "dmd_notification_transitions_total", {"from_status": source, "to_status": target}
    )
    return value or 0.0


def new_sale() -> str:
    return f"sale{uuid.uuid4().hex[:12]}"


def pending(
    table: DemandTable, records: NotificationRecords, sale_id: str, fan_id: str = "fan1", send_after: float = NOW
) -> dict[str, Any]:
    item = records.new_item(
        sale_id=sale_id,
        event_id="ev1",
        fan_id=fan_id,
        phone="+15550001234",
        tz="Europe/Paris",
        send_after=send_after,
        now=NOW - 100,
    )
    table.put_items([item])
    return item


def test_a_new_notification_is_pending_in_its_shard_of_the_pending_index(records: NotificationRecords) -> None:
    item = records.new_item(
        sale_id="s1", event_id="ev1", fan_id="fan7", phone="+15550001234", tz="UTC", send_after=NOW + 0.9, now=NOW
    )
    assert item["pk"] == "SALE#s1" and item["sk"] == "NOTIFICATION#fan7"
    assert (item["entity"], item["id"], item["status"], item["attempts"]) == ("NOTIFICATION", "s1:fan7", "pending", 0)
    assert (item["saleId"], item["eventId"], item["fanId"], item["timezone"]) == ("s1", "ev1", "fan7", "UTC")
    assert item["createdAt"] == iso(NOW)
    assert item["sendAfter"] == int(NOW)
    assert item["gsi1pk"] == pending_index("s1", records.shard_of("fan7"))
    assert item["gsi1sk"] == pending_sort(NOW, "fan7")


def test_failed_at_birth_is_out_of_every_index_with_its_reason(records: NotificationRecords) -> None:
    item = records.new_item(sale_id="s1", event_id="ev1", fan_id="fan7", phone="bad", tz="UTC", send_after=NOW, now=NOW)
    failed = NotificationRecords.failed_at_birth(item, "invalid phone")
    assert failed["status"] == "failed" and failed["reason"] == "invalid phone"
    assert "gsi1pk" not in failed and "gsi1sk" not in failed
    assert item["status"] == "pending" and "gsi1pk" in item  # the original is left as it was


def test_shards_cover_every_fan(table: DemandTable) -> None:
    four = NotificationRecords(table, 4)
    assert four.shards() == range(4)
    assert {four.shard_of(f"fan{i}") for i in range(100)} == {0, 1, 2, 3}


def test_due_pending_takes_the_due_ones_oldest_first_up_to_the_limit(table: DemandTable) -> None:
    # Given one shard, and notifications due at different times
    one = NotificationRecords(table, 1)
    sale_id = new_sale()
    for fan, after in [("late", NOW + 5), ("b", NOW - 10), ("a", NOW - 10), ("first", NOW - 300), ("now", NOW)]:
        pending(table, one, sale_id, fan, after)
    # Then the due ones come oldest first (fan id breaks ties); the one due later is not taken
    due = one.due_pending(sale_id, 0, NOW, limit=10)
    assert [i["fanId"] for i in due] == ["first", "a", "b", "now"]
    assert [i["fanId"] for i in one.due_pending(sale_id, 0, NOW, limit=2)] == ["first", "a"]
    assert one.due_pending(sale_id, 0, NOW, limit=0) == []
    assert [i["fanId"] for i in one.due_pending(sale_id, 0, NOW + 5, limit=10)][-1] == "late"


def test_existing_fans_names_the_fans_that_have_a_notification(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id = new_sale()
    for fan in ("f1", "f3"):
        pending(table, records, sale_id, fan)
    assert records.existing_fans(sale_id, ["f1", "f2", "f3", "f4"]) == {"f1", "f3"}
    assert records.existing_fans(new_sale(), ["f1"]) == set()


def test_schedule_moves_pending_to_scheduled_once_and_counts_it(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    before = transitions("pending", "scheduled")
    assert records.schedule(sale_id, "fan1", NOW)
    assert not records.schedule(sale_id, "fan1", NOW)  # a repeated move changes nothing
    assert transitions("pending", "scheduled") == before + 1
    item = table.get({"pk": f"SALE#{sale_id}", "sk": "NOTIFICATION#fan1"}, what="get")
    assert item is not None
    assert item["status"] == "scheduled" and item["scheduledAt"] == iso(NOW)
    assert "gsi1pk" not in item and "gsi1sk" not in item
    assert records.due_pending(sale_id, records.shard_of("fan1"), NOW, limit=10) == []


def test_defer_keeps_it_pending_under_a_later_time_and_is_not_a_transition(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    shard = records.shard_of("fan1")
    before = transitions("pending", "pending")
    assert records.defer(sale_id, "fan1", NOW + 3600.5)
    assert transitions("pending", "pending") == before == 0
    assert records.due_pending(sale_id, shard, NOW, limit=10) == []
    [due] = records.due_pending(sale_id, shard, NOW + 3601, limit=10)
    assert due["sendAfter"] == int(NOW + 3600) and due["gsi1sk"] == pending_sort(NOW + 3600, "fan1")
    assert records.schedule(sale_id, "fan1", NOW)
    assert not records.defer(sale_id, "fan1", NOW + 7200)  # only a pending notification is deferred


def test_claim_for_send_takes_a_lease_once(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    assert records.claim_for_send(sale_id, "fan1", NOW, LEASE) is None  # not scheduled yet
    records.schedule(sale_id, "fan1", NOW)
    before = transitions("scheduled", "sending")
    item = records.claim_for_send(sale_id, "fan1", NOW + 0.5, LEASE)
    assert item is not None
    assert item["status"] == "sending" and item["phone"] == "+15550001234"
    assert item["leaseUntil"] == int(NOW + 0.5 + LEASE) and item["sendingAt"] == iso(NOW)
    assert item["gsi1pk"] == sending_index(sale_id, records.shard_of("fan1"))
    assert item["gsi1sk"] == epoch_key(NOW + 0.5 + LEASE)
    assert records.claim_for_send(sale_id, "fan1", NOW + 1, LEASE) is None  # only one worker wins
    assert transitions("scheduled", "sending") == before + 1


def test_expired_leases_are_found_only_after_they_expire(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    for fan in ("f1", "f2"):
        pending(table, records, sale_id, fan)
        records.schedule(sale_id, fan, NOW)
    records.claim_for_send(sale_id, "f1", NOW, LEASE)
    records.claim_for_send(sale_id, "f2", NOW + 100, LEASE)
    shard1, shard2 = records.shard_of("f1"), records.shard_of("f2")

    def expired(at: float) -> set[str]:
        return {i["fanId"] for s in {shard1, shard2} for i in records.expired_leases(sale_id, s, at)}

    assert expired(NOW + LEASE) == set()
    assert expired(NOW + LEASE + 1) == {"f1"}
    assert expired(NOW + 100 + LEASE + 1) == {"f1", "f2"}
    assert records.mark_sent(sale_id, "f1", "SM-a", NOW + 2)
    assert expired(NOW + 1000) == {"f2"}  # a sent notification leaves the sending index


def test_mark_sent_records_the_message_id_and_indexes_it(table: DemandTable, records: NotificationRecords) -> None:
    sale_id, message_id = new_sale(), f"SM{uuid.uuid4().hex}"
    pending(table, records, sale_id, "fan-9")
    records.schedule(sale_id, "fan-9", NOW)
    assert not records.mark_sent(sale_id, "fan-9", message_id, NOW)  # not sending yet
    records.claim_for_send(sale_id, "fan-9", NOW, LEASE)
    before = transitions("sending", "sent")
    assert records.mark_sent(sale_id, "fan-9", message_id, NOW + 1, traceparent="00-abc-def-01")
    assert not records.mark_sent(sale_id, "fan-9", "SM-other", NOW + 2)
    assert transitions("sending", "sent") == before + 1
    item = table.get({"pk": f"SALE#{sale_id}", "sk": "NOTIFICATION#fan-9"}, what="get")
    assert item is not None
    assert (item["status"], item["providerMessageId"], item["traceparent"]) == ("sent", message_id, "00-abc-def-01")
    assert not {"gsi1pk", "gsi1sk", "leaseUntil"} & set(item)
    assert records.find_by_message_id(message_id) == (sale_id, "fan-9")
    assert records.find_by_message_id(f"SM{uuid.uuid4().hex}") is None


def test_mark_retry_puts_it_back_to_scheduled_with_one_more_attempt(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    records.schedule(sale_id, "fan1", NOW)
    records.claim_for_send(sale_id, "fan1", NOW, LEASE)
    before = transitions("sending", "scheduled")
    assert records.mark_retry(sale_id, "fan1", 1, NOW + 29.2, "HTTP 503 " + "x" * 800)
    assert not records.mark_retry(sale_id, "fan1", 1, NOW + 29.2, "again")
    assert transitions("sending", "scheduled") == before + 1
    item = table.get({"pk": f"SALE#{sale_id}", "sk": "NOTIFICATION#fan1"}, what="get")
    assert item is not None
    assert (item["status"], item["attempts"], item["notBefore"]) == ("scheduled", 1, int(NOW) + 30)
    assert item["lastError"].startswith("HTTP 503") and len(item["lastError"]) == 500
    assert not {"gsi1pk", "gsi1sk", "leaseUntil"} & set(item)
    # and it can be claimed again
    assert records.claim_for_send(sale_id, "fan1", NOW + 30, LEASE) is not None


def test_mark_failed_from_the_given_status_only(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    records.schedule(sale_id, "fan1", NOW)
    records.claim_for_send(sale_id, "fan1", NOW, LEASE)
    assert not records.mark_failed(sale_id, "fan1", "wrong source", source="scheduled")
    before = transitions("sending", "failed")
    assert records.mark_failed(sale_id, "fan1", "HTTP 400 invalid number", source="sending", attempts=3)
    assert not records.mark_failed(sale_id, "fan1", "again", source="sending", attempts=4)
    assert transitions("sending", "failed") == before + 1
    item = table.get({"pk": f"SALE#{sale_id}", "sk": "NOTIFICATION#fan1"}, what="get")
    assert item is not None
    assert (item["status"], item["reason"], item["attempts"]) == ("failed", "HTTP 400 invalid number", Decimal(3))
    assert not {"gsi1pk", "gsi1sk", "leaseUntil"} & set(item)


def test_mark_failed_without_attempts_leaves_the_count(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    assert records.mark_failed(sale_id, "fan1", "opted out", source="pending")
    item = table.get({"pk": f"SALE#{sale_id}", "sk": "NOTIFICATION#fan1"}, what="get")
    assert item is not None and (item["status"], item["attempts"]) == ("failed", 0)
    assert records.due_pending(sale_id, records.shard_of("fan1"), NOW, limit=10) == []


def sent(table: DemandTable, records: NotificationRecords, sale_id: str, message_id: str) -> None:
    pending(table, records, sale_id)
    records.schedule(sale_id, "fan1", NOW)
    records.claim_for_send(sale_id, "fan1", NOW, LEASE)
    assert records.mark_sent(sale_id, "fan1", message_id, NOW)


@pytest.mark.parametrize("status", ["delivered", "undelivered", "failed"])
def test_a_receipt_moves_sent_to_its_final_status_once(
    table: DemandTable, records: NotificationRecords, status: str
) -> None:
    sale_id, message_id = new_sale(), f"SM{uuid.uuid4().hex}"
    sent(table, records, sale_id, message_id)
    before = transitions("sent", status)
    item = records.record_delivery(sale_id, "fan1", message_id, status, "2026-11-25T10:00:05Z")
    assert item is not None
    assert (item["status"], item["deliveredAt"]) == (status, "2026-11-25T10:00:05Z")
    assert "gsi2pk" not in item and "gsi2sk" not in item
    assert records.find_by_message_id(message_id) is None
    # a duplicate receipt changes nothing
    assert records.record_delivery(sale_id, "fan1", message_id, "delivered", "2026-11-25T10:00:09Z") is None
    assert transitions("sent", status) == before + 1
    assert records.status_of(sale_id, "fan1") == status


def test_a_receipt_for_another_message_id_changes_nothing(table: DemandTable, records: NotificationRecords) -> None:
    sale_id, message_id = new_sale(), f"SM{uuid.uuid4().hex}"
    sent(table, records, sale_id, message_id)
    assert records.record_delivery(sale_id, "fan1", "SM-not-ours", "delivered", "t") is None
    assert records.status_of(sale_id, "fan1") == "sent"
    assert records.find_by_message_id(message_id) == (sale_id, "fan1")


def test_a_receipt_before_the_sent_write_changes_nothing(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    records.schedule(sale_id, "fan1", NOW)
    records.claim_for_send(sale_id, "fan1", NOW, LEASE)
    assert records.record_delivery(sale_id, "fan1", "SM1", "delivered", "t") is None
    assert records.status_of(sale_id, "fan1") == "sending"


def test_status_of_a_missing_notification_is_none(records: NotificationRecords) -> None:
    assert records.status_of(new_sale(), "fan1") is None


def test_any_pending_or_sending_follows_the_notification_through_the_indexes(table: DemandTable) -> None:
    # Given a sale over four shards
    records = NotificationRecords(table, 4)
    sale_id = new_sale()
    assert not records.any_pending_or_sending(sale_id)
    pending(table, records, sale_id, "fan1")
    assert records.any_pending_or_sending(sale_id)  # pending
    records.schedule(sale_id, "fan1", NOW)
    assert not records.any_pending_or_sending(sale_id)  # scheduled: the bridge carries it, no index
    records.claim_for_send(sale_id, "fan1", time.time(), LEASE)
    assert records.any_pending_or_sending(sale_id)  # sending
    records.mark_sent(sale_id, "fan1", f"SM{uuid.uuid4().hex}", NOW)
    assert not records.any_pending_or_sending(sale_id)  # sent


def test_any_pending_or_sending_looks_in_every_shard(table: DemandTable) -> None:
    records = NotificationRecords(table, 4)
    sale_id = new_sale()
    fan = next(f"fan{i}" for i in range(100) if records.shard_of(f"fan{i}") == 3)
    pending(table, records, sale_id, fan)
    assert records.any_pending_or_sending(sale_id)
