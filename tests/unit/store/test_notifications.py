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
from dmd_tasks.store.keys import notification_key, pending_index, pending_sort, scheduled_index, sending_index
from dmd_tasks.store.notifications import NotificationRecords, Sent
from dmd_tasks.store.notifications.reconciling import TakeBack
from dmd_tasks.store.table import DemandTable

NOW = 1_795_600_800.0
LEASE = 60


@pytest.fixture()
def table(stack: object, settings: Settings) -> DemandTable:
    return DemandTable(settings).for_notifications()


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


def stored(table: DemandTable, sale_id: str, fan_id: str = "fan1") -> dict[str, Any]:
    item = table.get(notification_key(sale_id, fan_id), what="test read")
    assert item is not None
    return item


def claimed(table: DemandTable, records: NotificationRecords, sale_id: str, fan_id: str = "fan1") -> str:
    """A pending notification, scheduled and claimed at NOW; returns the claim's lease token."""
    pending(table, records, sale_id, fan_id)
    assert records.schedule(sale_id, fan_id, NOW)
    item = records.claim_for_send(sale_id, fan_id, NOW, LEASE)
    assert item is not None
    return str(item["leaseToken"])


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
    item = stored(table, sale_id)
    assert item["status"] == "scheduled" and item["scheduledAt"] == iso(NOW)
    # it leaves the pending index for the scheduled one, under the time it was due, in its first round
    assert (item["gsi1pk"], item["gsi1sk"]) == (scheduled_index(sale_id, records.shard_of("fan1")), epoch_key(NOW))
    assert item["round"] == 1
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
    stored = table.get(notification_key(sale_id, "fan1"), what="test read") or {}
    assert due["fanId"] == "fan1"
    assert stored["sendAfter"] == int(NOW + 3600) and stored["gsi1sk"] == pending_sort(NOW + 3600, "fan1")
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
    assert len(item["leaseToken"]) == 32 and stored(table, sale_id)["leaseToken"] == item["leaseToken"]
    assert records.claim_for_send(sale_id, "fan1", NOW + 1, LEASE) is None  # only one worker wins
    assert transitions("scheduled", "sending") == before + 1


def test_expired_leases_are_found_only_after_they_expire(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    for fan in ("f1", "f2"):
        pending(table, records, sale_id, fan)
        records.schedule(sale_id, fan, NOW)
    first = records.claim_for_send(sale_id, "f1", NOW, LEASE)
    assert first is not None
    records.claim_for_send(sale_id, "f2", NOW + 100, LEASE)
    shard1, shard2 = records.shard_of("f1"), records.shard_of("f2")

    def expired(at: float) -> set[str]:
        return {i["fanId"] for s in {shard1, shard2} for i in records.expired_leases(sale_id, s, at)}

    assert expired(NOW + LEASE) == set()
    assert expired(NOW + LEASE + 1) == {"f1"}
    assert expired(NOW + 100 + LEASE + 1) == {"f1", "f2"}
    assert records.mark_sent(sale_id, "f1", "SM-a", NOW + 2, lease_token=first["leaseToken"])
    assert expired(NOW + 1000) == {"f2"}  # a sent notification leaves the sending index


def test_mark_sent_records_the_message_id_and_indexes_it(table: DemandTable, records: NotificationRecords) -> None:
    sale_id, message_id = new_sale(), f"SM{uuid.uuid4().hex}"
    pending(table, records, sale_id, "fan-9")
    records.schedule(sale_id, "fan-9", NOW)
    assert not records.mark_sent(sale_id, "fan-9", message_id, NOW, lease_token=None)  # not sending yet
    claim = records.claim_for_send(sale_id, "fan-9", NOW, LEASE)
    assert claim is not None
    token = claim["leaseToken"]
    before = transitions("sending", "sent")
    assert records.mark_sent(sale_id, "fan-9", message_id, NOW + 1, lease_token=token, traceparent="00-abc-def-01")
    assert not records.mark_sent(sale_id, "fan-9", "SM-other", NOW + 2, lease_token=token)
    assert transitions("sending", "sent") == before + 1
    item = stored(table, sale_id, "fan-9")
    assert (item["status"], item["providerMessageId"], item["traceparent"]) == ("sent", message_id, "00-abc-def-01")
    assert not {"gsi1pk", "gsi1sk", "leaseUntil", "leaseToken"} & set(item)
    assert records.find_by_message_id(message_id) == (sale_id, "fan-9")
    assert records.find_by_message_id(f"SM{uuid.uuid4().hex}") is None


def test_sends_written_sent_count_their_parts_and_how_late_after_due_they_went(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id, account = new_sale(), f"sms:t{uuid.uuid4().hex[:8]}"
    mine, other = claimed(table, records, sale_id, "fan1"), claimed(table, records, sale_id, "fan2")
    took = Sent(sale_id, "fan1", f"SM{uuid.uuid4().hex}", NOW + 42, mine, parts=3, account=account, due=NOW)
    lost = Sent(sale_id, "fan2", f"SM{uuid.uuid4().hex}", NOW + 42, other + "x", parts=5, account=account, due=NOW)

    assert records.mark_sent_many([took, lost]) == [took]  # the other's lease is not its writer's

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"provider": account})

    assert sample("dmd_sms_parts_sent_total") == 3
    assert (sample("dmd_send_delay_seconds_count"), sample("dmd_send_delay_seconds_sum")) == (1, 42)
    assert REGISTRY.get_sample_value("dmd_send_delay_seconds_bucket", {"provider": account, "le": "30.0"}) == 0
    assert REGISTRY.get_sample_value("dmd_send_delay_seconds_bucket", {"provider": account, "le": "60.0"}) == 1


def test_mark_retry_puts_it_back_to_scheduled_with_one_more_attempt(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id = new_sale()
    token = claimed(table, records, sale_id)
    before = transitions("sending", "scheduled")
    assert records.mark_retry(sale_id, "fan1", 1, NOW + 29.2, "HTTP 503 " + "x" * 800, lease_token=token, now=NOW + 1)
    assert not records.mark_retry(sale_id, "fan1", 1, NOW + 29.2, "again", lease_token=token, now=NOW + 2)
    assert transitions("sending", "scheduled") == before + 1
    item = stored(table, sale_id)
    assert (item["status"], item["attempts"], item["notBefore"]) == ("scheduled", 1, int(NOW) + 30)
    assert item["lastError"].startswith("HTTP 503") and len(item["lastError"]) == 500
    assert not {"leaseUntil", "leaseToken"} & set(item)
    # in the scheduled index under the time it may be sent again, in a new round (the bridge routes it again)
    assert item["gsi1pk"] == scheduled_index(sale_id, records.shard_of("fan1"))
    assert item["gsi1sk"] == epoch_key(NOW + 29.2) and item["round"] == 2
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
    item = stored(table, sale_id)
    assert (item["status"], item["reason"], item["attempts"]) == ("failed", "HTTP 400 invalid number", Decimal(3))
    assert not {"gsi1pk", "gsi1sk", "leaseUntil", "leaseToken"} & set(item)


def test_mark_failed_without_attempts_leaves_the_count(table: DemandTable, records: NotificationRecords) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id)
    assert records.mark_failed(sale_id, "fan1", "opted out", source="pending")
    item = stored(table, sale_id)
    assert (item["status"], item["attempts"]) == ("failed", 0)
    assert records.due_pending(sale_id, records.shard_of("fan1"), NOW, limit=10) == []


def sent(table: DemandTable, records: NotificationRecords, sale_id: str, message_id: str) -> None:
    token = claimed(table, records, sale_id)
    assert records.mark_sent(sale_id, "fan1", message_id, NOW, lease_token=token)


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


def test_any_in_flight_follows_the_notification_through_the_indexes(table: DemandTable) -> None:
    # Given a sale over four shards
    records = NotificationRecords(table, 4)
    sale_id = new_sale()
    assert not records.any_in_flight(sale_id)
    pending(table, records, sale_id, "fan1")
    assert records.any_in_flight(sale_id)  # pending
    records.schedule(sale_id, "fan1", NOW)
    assert records.any_in_flight(sale_id)  # scheduled: in the scheduled index until it is claimed
    claim = records.claim_for_send(sale_id, "fan1", time.time(), LEASE)
    assert claim is not None
    assert records.any_in_flight(sale_id)  # sending
    assert records.mark_sent(sale_id, "fan1", f"SM{uuid.uuid4().hex}", NOW, lease_token=claim["leaseToken"])
    assert not records.any_in_flight(sale_id)  # sent


def test_any_in_flight_looks_in_every_index_of_every_shard(table: DemandTable) -> None:
    records = NotificationRecords(table, 4)
    fan = next(f"fan{i}" for i in range(100) if records.shard_of(f"fan{i}") == 3)
    in_pending, in_scheduled, in_sending = new_sale(), new_sale(), new_sale()
    pending(table, records, in_pending, fan)
    pending(table, records, in_scheduled, fan)
    assert records.schedule(in_scheduled, fan, NOW)
    claimed(table, records, in_sending, fan)
    assert all(records.any_in_flight(s) for s in (in_pending, in_scheduled, in_sending))


# --- fenced send leases and the reconciler's moves --------------------------------------------


def test_a_stale_workers_writes_are_no_ops_once_its_lease_was_taken_back_and_claimed_again(
    table: DemandTable, records: NotificationRecords
) -> None:
    # Given worker A's claim, whose lease the reconciler took back after it expired, and worker B's new claim
    sale_id = new_sale()
    stale = claimed(table, records, sale_id)
    assert records.take_back(sale_id, "fan1", stale, 1, NOW + LEASE + 1, "send lease expired")
    claim = records.claim_for_send(sale_id, "fan1", NOW + LEASE + 2, LEASE)
    assert claim is not None
    fresh = claim["leaseToken"]
    assert fresh != stale

    # When worker A finally writes what its send gave, in any of the three ways
    assert not records.mark_sent(sale_id, "fan1", "SM-stale", NOW + LEASE + 3, lease_token=stale)
    assert not records.mark_retry(sale_id, "fan1", 2, NOW + LEASE + 30, "HTTP 503", lease_token=stale, now=NOW + 70)
    assert not records.mark_failed(sale_id, "fan1", "HTTP 400", source="sending", attempts=2, lease_token=stale)
    # nor does a write that assumes a claim made before leases had tokens
    assert not records.mark_sent(sale_id, "fan1", "SM-old", NOW + LEASE + 3, lease_token=None)

    # Then none of them changed anything: B still owns the send under its own lease
    item = stored(table, sale_id)
    assert (item["status"], item["attempts"], item["leaseToken"]) == ("sending", 1, fresh)
    assert item["leaseUntil"] == int(NOW + LEASE + 2 + LEASE)
    assert "providerMessageId" not in item and "reason" not in item
    assert records.find_by_message_id("SM-stale") is None
    # And B's own write wins
    assert records.mark_sent(sale_id, "fan1", "SM-fresh", NOW + LEASE + 4, lease_token=fresh)
    assert (stored(table, sale_id)["status"], stored(table, sale_id)["providerMessageId"]) == ("sent", "SM-fresh")


def test_a_claim_made_without_a_token_is_written_only_by_a_tokenless_write(
    table: DemandTable, records: NotificationRecords
) -> None:
    # Given a notification claimed by code older than lease tokens (the claim recorded no token)
    sale_id = new_sale()
    claimed(table, records, sale_id)
    table.update(
        notification_key(sale_id, "fan1"),
        what="an old claim",
        update="SET claimedBy = :old REMOVE leaseToken",
        values={":old": "code without tokens"},
    )
    # Then a write carrying some token is refused, and one without a token (lease_token=None) goes through
    assert not records.mark_sent(sale_id, "fan1", "SM-1", NOW + 1, lease_token=uuid.uuid4().hex)
    assert records.mark_sent(sale_id, "fan1", "SM-1", NOW + 1, lease_token=None)
    assert stored(table, sale_id)["status"] == "sent"


def test_take_back_refuses_a_live_lease_and_another_token(table: DemandTable, records: NotificationRecords) -> None:
    # Given a notification being sent under a lease until NOW + LEASE
    sale_id = new_sale()
    token = claimed(table, records, sale_id)
    # Then it is not taken back while the lease lives, nor by someone who saw another claim's token
    assert not records.take_back(sale_id, "fan1", token, 1, NOW + LEASE - 1, "too early")
    assert not records.take_back(sale_id, "fan1", uuid.uuid4().hex, 1, NOW + LEASE + 1, "another claim")
    assert not records.take_back(sale_id, "fan1", None, 1, NOW + LEASE + 1, "a claim without a token")
    assert stored(table, sale_id)["status"] == "sending"

    # When the lease has expired and the token is the claim's
    before = transitions("sending", "scheduled")
    assert records.take_back(sale_id, "fan1", token, 1, NOW + LEASE, "send lease expired")
    assert not records.take_back(sale_id, "fan1", token, 1, NOW + LEASE + 1, "twice")

    # Then it is scheduled again, due now, with one more attempt, in a new round, and counted once
    item = stored(table, sale_id)
    assert (item["status"], item["attempts"], item["round"]) == ("scheduled", 1, 2)
    assert (item["notBefore"], item["lastError"]) == (int(NOW + LEASE), "send lease expired")
    assert item["gsi1pk"] == scheduled_index(sale_id, records.shard_of("fan1"))
    assert item["gsi1sk"] == epoch_key(NOW + LEASE)
    assert not {"leaseUntil", "leaseToken"} & set(item)
    assert records.expired_leases(sale_id, records.shard_of("fan1"), NOW + 10 * LEASE) == []
    assert transitions("sending", "scheduled") == before + 1


def test_leases_taken_back_together_go_in_one_request_each_on_its_own_condition(
    table: DemandTable, records: NotificationRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given five claims whose leases expired, one of them since renewed by its worker (another token)
    sale_id = new_sale()
    tokens = {fan: claimed(table, records, sale_id, fan) for fan in ("a", "b", "c", "d", "e")}
    assert records.take_back(sale_id, "c", tokens["c"], 1, NOW + LEASE, "taken back once")
    renewed = records.claim_for_send(sale_id, "c", NOW + LEASE, LEASE)
    assert renewed is not None
    requests = []
    real = table._client.transact_write_items

    def counted(**kwargs: Any) -> Any:
        requests.append(len(kwargs["TransactItems"]))
        return real(**kwargs)

    monkeypatch.setattr(table._client, "transact_write_items", counted)
    before = transitions("sending", "scheduled")

    # When the reconciler takes them back together with the tokens it saw
    backs = [TakeBack(fan, tokens[fan], 1, "http" if fan == "a" else None) for fan in tokens]
    taken = records.take_back_many(sale_id, backs, NOW + LEASE + 1, "send lease expired")

    # Then the four expired ones are scheduled again in one request (the refused one sent again without
    # the others), the renewed claim is untouched, and each move is counted once
    assert sorted(taken) == ["a", "b", "d", "e"]
    assert requests[0] == 5 and len(requests) <= 2
    assert transitions("sending", "scheduled") == before + 4
    for fan in taken:
        item = stored(table, sale_id, fan)
        assert (item["status"], item["lastError"]) == ("scheduled", "send lease expired")
        assert not {"leaseUntil", "leaseToken"} & set(item)
    assert stored(table, sale_id, "a")["pinnedProvider"] == "http"
    assert (stored(table, sale_id, "c")["status"], stored(table, sale_id, "c")["leaseToken"]) == (
        "sending",
        renewed["leaseToken"],
    )
    # and taking them back again changes nothing
    assert records.take_back_many(sale_id, backs, NOW + LEASE + 2, "twice") == []


def test_scheduled_notifications_are_stale_only_after_they_were_due(
    table: DemandTable, records: NotificationRecords
) -> None:
    # Given one notification scheduled at NOW, and one sent back to wait until NOW + 100 (a retry)
    sale_id = new_sale()
    pending(table, records, sale_id, "now")
    assert records.schedule(sale_id, "now", NOW)
    token = claimed(table, records, sale_id, "later")
    assert records.mark_retry(sale_id, "later", 1, NOW + 100, "HTTP 503", lease_token=token, now=NOW)

    def stale(before: float) -> set[str]:
        return {i["fanId"] for s in records.shards() for i in records.stale_scheduled(sale_id, s, before)}

    # Then each is found only when the reconciler's cut-off has passed the time it was due
    assert stale(NOW) == set()
    assert stale(NOW + 1) == {"now"}
    assert stale(NOW + 100) == {"now"}
    assert stale(NOW + 101) == {"now", "later"}
    # and a claimed one leaves the scheduled index
    assert records.claim_for_send(sale_id, "now", NOW + 200, LEASE) is not None
    assert stale(NOW + 1000) == {"later"}


def test_pending_notifications_are_late_only_after_their_send_time(
    table: DemandTable, records: NotificationRecords
) -> None:
    sale_id = new_sale()
    pending(table, records, sale_id, "fan1", send_after=NOW)
    shard = records.shard_of("fan1")
    assert records.stale_pending(sale_id, shard, NOW) == []
    assert [i["fanId"] for i in records.stale_pending(sale_id, shard, NOW + 1)] == ["fan1"]
    assert records.schedule(sale_id, "fan1", NOW)
    assert records.stale_pending(sale_id, shard, NOW + 1000) == []


def test_republish_mark_wins_once_for_two_reconcilers_that_saw_the_same_entry(
    table: DemandTable, records: NotificationRecords
) -> None:
    # Given a notification scheduled at NOW and never claimed, which two reconcilers both find stale
    sale_id = new_sale()
    pending(table, records, sale_id)
    assert records.schedule(sale_id, "fan1", NOW)
    shard = records.shard_of("fan1")
    [seen_by_one] = records.stale_scheduled(sale_id, shard, NOW + 300)
    [seen_by_two] = records.stale_scheduled(sale_id, shard, NOW + 301)
    assert seen_by_one["gsi1sk"] == seen_by_two["gsi1sk"] == epoch_key(NOW)

    # When both mark it republished
    first = records.republish_mark(sale_id, "fan1", seen_by_one["gsi1sk"], NOW + 300, 1)
    second = records.republish_mark(sale_id, "fan1", seen_by_two["gsi1sk"], NOW + 301, 1)

    # Then only one wins: the count is 1 and the next look is due from the winner's time on
    assert (first, second) == (True, False)
    item = stored(table, sale_id)
    assert (item["status"], item["republished"], item["gsi1sk"]) == ("scheduled", 1, epoch_key(NOW + 300))
    assert item["round"] == 1  # not a new round: the bridge does not route it again
    assert records.stale_scheduled(sale_id, shard, NOW + 300) == []
    # and it marks only a scheduled notification
    assert records.claim_for_send(sale_id, "fan1", NOW + 400, LEASE) is not None
    assert not records.republish_mark(sale_id, "fan1", epoch_key(NOW + 300), NOW + 400, 2)
