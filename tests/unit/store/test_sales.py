"""SALE items against moto: the claim, the generator's lease and checkpoints, finish/fail/retire, the indexes.

Times are far in the past (and distinct per test), so the shared ``SALES#…`` index partitions
answer with this test's sale first whatever other tests left in them.
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal

import pytest

from dmd_tasks.domain.entities import Sale, SaleStatus
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import iso
from dmd_tasks.store.keys import ACTIVE_SALES, SALES_GENERATING, SALES_WAITING
from dmd_tasks.store.sales import SaleRecords, sale_item
from dmd_tasks.store.table import DemandTable

LEASE = 60


@pytest.fixture()
def sales(stack: object, settings: Settings) -> SaleRecords:
    return SaleRecords(DemandTable(settings))


@pytest.fixture()
def t0() -> float:
    """A notify time in 1975-1979, unique enough per test."""
    return float(random.randrange(157_766_400, 315_532_800))


def new_sale(sales: SaleRecords, notify_at: float) -> str:
    sale_id = f"sale{uuid.uuid4().hex[:12]}"
    sales.put(Sale(id=sale_id, eventId="ev1", notifyAt=iso(notify_at)))
    return sale_id


def claimed(sales: SaleRecords, t0: float) -> tuple[str, str]:
    sale_id = new_sale(sales, t0)
    assert sales.claim(sale_id, t0, LEASE)
    stored = sales.get(sale_id)
    assert stored is not None
    return sale_id, stored["leaseUntil"]


def test_a_waiting_sale_item_is_in_the_due_index_and_others_are_not() -> None:
    waiting = sale_item(Sale(id="s1", eventId="ev1", notifyAt="2026-11-25T10:00:00Z"))
    assert waiting["entity"] == "SALE" and waiting["status"] == "waiting"
    assert (waiting["gsi1pk"], waiting["gsi1sk"]) == (SALES_WAITING, "2026-11-25T10:00:00Z")
    generated = sale_item(Sale(id="s1", eventId="ev1", notifyAt="2026-11-25T10:00:00Z", status=SaleStatus.GENERATED))
    assert "gsi1pk" not in generated and "gsi1sk" not in generated


def test_a_sale_is_due_from_its_notify_time_on(sales: SaleRecords, t0: float) -> None:
    sale_id = new_sale(sales, t0)
    assert sale_id not in {s["id"] for s in sales.due(t0 - 1)}
    assert sale_id in {s["id"] for s in sales.due(t0)}


def test_a_sale_is_claimed_once(sales: SaleRecords, t0: float) -> None:
    sale_id = new_sale(sales, t0)
    assert [sales.claim(sale_id, t0, LEASE) for _ in range(3)] == [True, False, False]
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["status"] == "generating"
    assert stored["leaseUntil"].startswith(iso(t0 + LEASE) + "#")
    assert stored["cleanLease"] == stored["leaseUntil"]  # nothing written past the (empty) cursor yet
    assert (stored["gsi1pk"], stored["gsi1sk"]) == (SALES_GENERATING, stored["leaseUntil"])
    assert (stored["gsi2pk"], stored["gsi2sk"]) == (ACTIVE_SALES, sale_id)
    assert stored["claimedAt"] == iso(t0)
    assert sale_id not in {s["id"] for s in sales.due(t0 + 1)}


def test_claiming_a_missing_sale_fails_and_creates_nothing(sales: SaleRecords, t0: float) -> None:
    assert not sales.claim("sale-nobody-wrote", t0, LEASE)
    assert sales.get("sale-nobody-wrote") is None


def test_a_claimed_sale_is_active_and_stalled_once_its_lease_expires(sales: SaleRecords, t0: float) -> None:
    sale_id, _lease = claimed(sales, t0)
    assert sale_id in sales.active()
    assert sale_id not in {s["id"] for s in sales.stalled(t0 + LEASE - 1)}
    assert sale_id in {s["id"] for s in sales.stalled(t0 + LEASE + 1)}


def test_take_lease_renews_the_expected_lease_once(sales: SaleRecords, t0: float) -> None:
    sale_id, lease = claimed(sales, t0)
    renewed = sales.take_lease(sale_id, lease, t0 + 10, LEASE)
    assert renewed is not None and renewed != lease
    assert renewed.startswith(iso(t0 + 10 + LEASE) + "#")
    stored = sales.get(sale_id)
    assert stored is not None and stored["leaseUntil"] == stored["gsi1sk"] == renewed
    # the old lease is gone: a second run holding it cannot take the sale while the new one lives
    assert sales.take_lease(sale_id, lease, t0 + 11, LEASE) is None
    assert sales.take_lease(sale_id, None, t0 + 11, LEASE) is None


def test_take_lease_takes_an_expired_lease_whatever_was_expected(sales: SaleRecords, t0: float) -> None:
    sale_id, _lease = claimed(sales, t0)
    assert sales.take_lease(sale_id, None, t0 + LEASE + 1, LEASE) is not None
    assert sales.take_lease(sale_id, "some-other-lease", t0 + 3 * LEASE, LEASE) is not None


def test_take_lease_needs_a_generating_sale(sales: SaleRecords, t0: float) -> None:
    sale_id = new_sale(sales, t0)
    assert sales.take_lease(sale_id, None, t0 + 10 * LEASE, LEASE) is None


def test_checkpoints_record_progress_under_the_lease(sales: SaleRecords, t0: float) -> None:
    sale_id, lease = claimed(sales, t0)
    # Given two chunks checkpointed by the lease holder
    second = sales.checkpoint(sale_id, lease, "fan005", 5, t0 + 1, LEASE)
    assert second is not None and second != lease
    third = sales.checkpoint(sale_id, second, "fan010", 5, t0 + 2, LEASE)
    assert third is not None
    # Then the cursor is the last fan written, the count adds up, the lease is renewed
    stored = sales.get(sale_id)
    assert stored is not None
    assert (stored["cursor"], stored["generated"]) == ("fan010", Decimal(10))
    assert stored["leaseUntil"] == stored["gsi1sk"] == third
    assert stored["cleanLease"] == lease  # not a hand-over: the claim's clean lease stays
    # And a checkpoint under a lease that is no longer held changes nothing
    assert sales.checkpoint(sale_id, second, "fan999", 100, t0 + 3, LEASE) is None
    again = sales.get(sale_id)
    assert again is not None and (again["cursor"], again["generated"]) == ("fan010", Decimal(10))


def test_a_last_checkpoint_hands_over_with_a_clean_lease(sales: SaleRecords, t0: float) -> None:
    sale_id, lease = claimed(sales, t0)
    renewed = sales.checkpoint(sale_id, lease, None, 0, t0 + 1, LEASE, last=True)
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["cleanLease"] == stored["leaseUntil"] == renewed
    assert "cursor" not in stored  # no cursor given: none recorded


def test_finish_needs_the_lease_and_keeps_the_sale_active_until_retired(sales: SaleRecords, t0: float) -> None:
    sale_id, lease = claimed(sales, t0)
    assert not sales.finish(sale_id, "not-the-lease", t0 + 1)
    assert not sales.retire(sale_id)  # still generating
    assert sales.finish(sale_id, lease, t0 + 1)
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["status"] == "generated" and stored["generatedAt"] == iso(t0 + 1)
    assert not {"gsi1pk", "gsi1sk", "leaseUntil"} & set(stored)
    assert sale_id not in {s["id"] for s in sales.stalled(t0 + 10 * LEASE)}
    assert sale_id in sales.active()
    assert not sales.finish(sale_id, lease, t0 + 2)  # finished once
    # When it is retired, it leaves the active list
    assert sales.retire(sale_id)
    assert sale_id not in sales.active()


def test_fail_moves_a_generating_sale_out_of_every_index(sales: SaleRecords, t0: float) -> None:
    sale_id, _lease = claimed(sales, t0)
    assert sales.fail(sale_id, "no campaign " + "x" * 1000, t0 + 5)
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["status"] == "failed" and stored["failedAt"] == iso(t0 + 5)
    assert stored["reason"].startswith("no campaign ") and len(stored["reason"]) == 500
    assert not {"gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "leaseUntil"} & set(stored)
    assert sale_id not in sales.active()
    assert not sales.fail(sale_id, "again", t0 + 6)


def test_fail_refuses_a_sale_that_is_not_generating(sales: SaleRecords, t0: float) -> None:
    sale_id = new_sale(sales, t0)
    assert not sales.fail(sale_id, "why", t0)
    stored = sales.get(sale_id)
    assert stored is not None and stored["status"] == "waiting"
