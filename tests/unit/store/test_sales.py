"""SALE items against moto: the claim and its runs (restore, rerun), the generator's lease and checkpoints,
finish/fail, the two-phase retire, the indexes.

Times are far in the past (and distinct per test), so the shared ``SALES#…`` index partitions
answer with this test's sale first whatever other tests left in them.
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal
from typing import Any

import pytest

from dmd_tasks.domain.entities import Sale, SaleStatus
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import iso
from dmd_tasks.store.keys import ACTIVE_SALES, SALES_GENERATING, SALES_WAITING, notification_key, sale_run_key
from dmd_tasks.store.sales import SaleRecords, sale_item
from dmd_tasks.store.table import DemandTable

LEASE = 60


@pytest.fixture()
def table(stack: object, settings: Settings) -> DemandTable:
    return DemandTable(settings)


@pytest.fixture()
def sales(table: DemandTable) -> SaleRecords:
    return SaleRecords(table)


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
    assert sales.claim(sale_id, t0, LEASE) == "claimed"
    stored = sales.get(sale_id)
    assert stored is not None
    return sale_id, stored["leaseUntil"]


def stored_sale(sales: SaleRecords, sale_id: str) -> dict[str, Any]:
    found = sales.get(sale_id)
    assert found is not None
    return found


def run_of(table: DemandTable, sale_id: str) -> dict[str, Any]:
    found = table.get(sale_run_key(sale_id), what="test read of a run")
    assert found is not None
    return found


def rewritten_as_waiting(sales: SaleRecords, sale_id: str, notify_at: float) -> None:
    """The product saves the sale again, as it first wrote it: the SALE item is replaced."""
    sales.put(Sale(id=sale_id, eventId="ev1", notifyAt=iso(notify_at)))


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


def test_a_sale_is_claimed_once(sales: SaleRecords, table: DemandTable, t0: float) -> None:
    sale_id = new_sale(sales, t0)
    assert [sales.claim(sale_id, t0, LEASE) for _ in range(3)] == ["claimed", None, None]
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["status"] == "generating" and "checkAll" not in stored
    assert stored["leaseUntil"].startswith(iso(t0 + LEASE) + "#")
    assert stored["cleanLease"] == stored["leaseUntil"]  # nothing written past the (empty) cursor yet
    assert (stored["gsi1pk"], stored["gsi1sk"]) == (SALES_GENERATING, stored["leaseUntil"])
    assert (stored["gsi2pk"], stored["gsi2sk"]) == (ACTIVE_SALES, sale_id)
    assert stored["claimedAt"] == iso(t0)
    assert sale_id not in {s["id"] for s in sales.due(t0 + 1)}
    # the run is recorded beside the sale, once
    run = run_of(table, sale_id)
    assert (run["entity"], run["saleId"], run["runs"], run["outcome"]) == ("SALE_RUN", sale_id, 1, "generating")


def test_claiming_a_missing_sale_fails_and_creates_nothing(sales: SaleRecords, t0: float) -> None:
    assert sales.claim("sale-nobody-wrote", t0, LEASE) is None
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


def test_finish_needs_the_lease_and_keeps_the_sale_active_until_retired(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    sale_id, lease = claimed(sales, t0)
    assert not sales.finish(sale_id, "not-the-lease", t0 + 1)
    assert not sales.note_quiet(sale_id, t0 + 1)  # still generating: never quiet
    assert run_of(table, sale_id)["outcome"] == "generating"
    assert sales.finish(sale_id, lease, t0 + 1)
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["status"] == "generated" and stored["generatedAt"] == iso(t0 + 1)
    assert not {"gsi1pk", "gsi1sk", "leaseUntil"} & set(stored)
    assert sale_id not in {s["id"] for s in sales.stalled(t0 + 10 * LEASE)}
    assert sale_id in sales.active()
    assert not sales.finish(sale_id, lease, t0 + 2)  # finished once
    assert run_of(table, sale_id)["outcome"] == "generated"
    # When the reconciler has found it quiet, then retires it, it leaves the active list
    assert sales.note_quiet(sale_id, t0 + 3)
    assert stored_sale(sales, sale_id)["quietSince"] == int(t0 + 3)
    assert sales.retire(sale_id, int(t0 + 3))
    assert sale_id not in sales.active()


def test_fail_ends_the_run_but_keeps_the_sale_active_for_the_reconciler(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    sale_id, _lease = claimed(sales, t0)
    assert sales.fail(sale_id, "no campaign " + "x" * 1000, t0 + 5)
    stored = sales.get(sale_id)
    assert stored is not None
    assert stored["status"] == "failed" and stored["failedAt"] == iso(t0 + 5)
    assert stored["reason"].startswith("no campaign ") and len(stored["reason"]) == 500
    # out of the due and stalled index, no lease; still on the active list (what it already wrote is looked after)
    assert not {"gsi1pk", "gsi1sk", "leaseUntil"} & set(stored)
    assert (stored["gsi2pk"], stored["gsi2sk"]) == (ACTIVE_SALES, sale_id)
    assert sale_id in sales.active()
    assert sale_id not in {s["id"] for s in sales.stalled(t0 + 10 * LEASE)}
    run = run_of(table, sale_id)
    assert run["outcome"] == "failed" and run["reason"] == stored["reason"]
    assert not sales.fail(sale_id, "again", t0 + 6)


def test_fail_refuses_a_sale_that_is_not_generating(sales: SaleRecords, t0: float) -> None:
    sale_id = new_sale(sales, t0)
    assert not sales.fail(sale_id, "why", t0)
    stored = sales.get(sale_id)
    assert stored is not None and stored["status"] == "waiting"


# --- runs: a re-saved sale is restored, an operator's rerun is claimed again ------------------------


def test_a_generated_sale_written_again_as_waiting_is_restored_not_claimed(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    # Given a sale claimed and generated
    sale_id, lease = claimed(sales, t0)
    assert sales.finish(sale_id, lease, t0 + 1)
    # When the product saves it again as waiting, and beat finds it due
    rewritten_as_waiting(sales, sale_id, t0)
    assert sale_id in {s["id"] for s in sales.due(t0 + 2)}
    # Then the claim restores it to its run's outcome instead of starting a second run
    assert sales.claim(sale_id, t0 + 2, LEASE) == "restored"
    stored = stored_sale(sales, sale_id)
    assert (stored["status"], stored["restoredAt"]) == ("generated", iso(t0 + 2))
    assert not {"gsi1pk", "gsi1sk", "leaseUntil", "checkAll"} & set(stored)
    assert sale_id in sales.active()  # the reconciler retires it again once it is quiet
    assert sale_id not in {s["id"] for s in sales.due(t0 + 3)}
    assert run_of(table, sale_id)["runs"] == 1
    assert sales.claim(sale_id, t0 + 3, LEASE) is None


def test_a_failed_sale_written_again_as_waiting_is_restored_as_failed(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    sale_id, _lease = claimed(sales, t0)
    assert sales.fail(sale_id, "no campaign", t0 + 1)
    rewritten_as_waiting(sales, sale_id, t0)
    assert sales.claim(sale_id, t0 + 2, LEASE) == "restored"
    stored = stored_sale(sales, sale_id)
    assert (stored["status"], stored["reason"]) == ("failed", "no campaign")
    assert "gsi1pk" not in stored and sale_id in sales.active()
    assert run_of(table, sale_id)["runs"] == 1


def test_a_sale_written_again_during_its_run_is_restored_as_a_stalled_generation(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    # Given a run that has checkpointed once (a cursor, a clean lease from the claim)
    sale_id, lease = claimed(sales, t0)
    renewed = sales.checkpoint(sale_id, lease, "fan004", 5, t0 + 1, LEASE)
    assert renewed is not None
    # When the product saves the sale again as waiting before the run ended
    rewritten_as_waiting(sales, sale_id, t0)
    assert sales.claim(sale_id, t0 + 2, LEASE) == "restored"
    # Then it is generating again under an expired lease, to be resumed from the start checking every fan
    stored = stored_sale(sales, sale_id)
    assert stored["status"] == "generating" and stored["checkAll"] is True
    assert not {"cursor", "cleanLease"} & set(stored)
    assert stored["leaseUntil"] < iso(t0) and stored["gsi1pk"] == SALES_GENERATING
    assert (stored["gsi2pk"], stored["gsi2sk"]) == (ACTIVE_SALES, sale_id)
    assert sale_id in {s["id"] for s in sales.stalled(t0 + 2)}
    # and the run that was going on writes no more checkpoint under its lease
    assert sales.checkpoint(sale_id, renewed, "fan009", 5, t0 + 3, LEASE) is None
    assert run_of(table, sale_id)["runs"] == 1


def test_a_first_claim_that_finds_notifications_checks_every_fan(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    # Given a sale that has notifications but no record of a run (it ran before runs were recorded)
    sale_id = new_sale(sales, t0)
    table.for_notifications().put_items(
        [{**notification_key(sale_id, "fan1"), "entity": "NOTIFICATION", "status": "sent"}]
    )
    # When it is claimed
    assert sales.claim(sale_id, t0, LEASE) == "claimed"
    # Then its generator will check every fan it writes, with no clean lease to trust
    stored = stored_sale(sales, sale_id)
    assert stored["status"] == "generating" and stored["checkAll"] is True
    assert "cleanLease" not in stored


def test_rerun_lets_an_ended_sale_be_claimed_once_more_checking_every_fan(
    sales: SaleRecords, table: DemandTable, t0: float
) -> None:
    # Given a sale still waiting or generating, rerun refuses it
    waiting = new_sale(sales, t0)
    assert not sales.rerun(waiting, t0)
    sale_id, lease = claimed(sales, t0)
    assert not sales.rerun(sale_id, t0 + 1)
    # When it has been generated and an operator asks for a rerun
    assert sales.finish(sale_id, lease, t0 + 1)
    assert sales.note_quiet(sale_id, t0 + 2)
    assert sales.rerun(sale_id, t0 + 3)
    stored = stored_sale(sales, sale_id)
    assert (stored["status"], stored["notifyAt"]) == ("waiting", iso(t0 + 3))
    assert (stored["gsi1pk"], stored["gsi1sk"]) == (SALES_WAITING, iso(t0 + 3))
    assert "quietSince" not in stored
    # Then the next claim starts a second run, which checks every fan
    assert sales.claim(sale_id, t0 + 4, LEASE) == "claimed"
    stored = stored_sale(sales, sale_id)
    assert stored["status"] == "generating" and stored["checkAll"] is True
    assert not {"cursor", "cleanLease"} & set(stored)
    run = run_of(table, sale_id)
    assert (run["runs"], run["outcome"], run["rerun"]) == (2, "generating", False)
    # And only that one: once it ended, a re-saved sale is restored again
    assert sales.finish(sale_id, stored["leaseUntil"], t0 + 5)
    rewritten_as_waiting(sales, sale_id, t0)
    assert sales.claim(sale_id, t0 + 6, LEASE) == "restored"
    assert run_of(table, sale_id)["runs"] == 2


def test_a_sale_is_retired_only_with_the_quiet_time_the_reconciler_saw(sales: SaleRecords, t0: float) -> None:
    sale_id, lease = claimed(sales, t0)
    assert sales.finish(sale_id, lease, t0 + 1)
    assert not sales.retire(sale_id, int(t0 + 2))  # never found quiet
    assert sales.note_quiet(sale_id, t0 + 2)
    assert not sales.retire(sale_id, int(t0 + 1))  # another look's time: someone noted it again since
    assert sale_id in sales.active()
    assert sales.retire(sale_id, int(t0 + 2))
    stored = stored_sale(sales, sale_id)
    assert not {"gsi2pk", "gsi2sk", "quietSince"} & set(stored) and "retiredAt" in stored
    assert sale_id not in sales.active()
    # a retired sale is not noted quiet again, nor retired twice
    assert not sales.note_quiet(sale_id, t0 + 3)
    assert not sales.retire(sale_id, int(t0 + 2))


def test_a_claim_in_progress_elsewhere_is_not_taken_for_a_resave(sales: SaleRecords, t0: float) -> None:
    # Given another beat that has started the sale's run but not yet moved the sale to generating
    sale_id = f"s{uuid.uuid4().hex[:10]}"
    sales.put(Sale(id=sale_id, eventId="e1", notifyAt=iso(t0)))
    assert sales._start_run(sale_id, t0) is not None

    # When this beat claims it in the same moment, it leaves the sale alone (no false restore)
    assert sales.claim(sale_id, t0 + 1, LEASE) is None
    assert sales.get(sale_id)["status"] == SaleStatus.WAITING  # type: ignore[index]

    # and if that other beat died between its writes, the sale is resumed once the grace is over
    assert sales.claim(sale_id, t0 + 60, LEASE) == "restored"
    restored = sales.get(sale_id)
    assert restored is not None
    assert (restored["status"], restored["checkAll"]) == (SaleStatus.GENERATING, True)
