"""The generator's side: the run's lease on its sale, its checkpoint, and how the run ends."""

from __future__ import annotations

from typing import Any

from dmd_tasks.domain.entities import Entity, SaleStatus
from dmd_tasks.store.codec import iso, new_lease
from dmd_tasks.store.keys import (
    sale_run_key,
)
from dmd_tasks.store.sales.base import _STATUS, SaleStore


class Running(SaleStore):
    def take_lease(self, sale_id: str, expected_lease: str | None, now: float, lease_seconds: int) -> str | None:
        """Renew the generator lease if it is still ``expected_lease`` (or expired); returns the new lease."""
        lease = new_lease(now, lease_seconds)
        moved = self._move(
            sale_id,
            what=f"lease sale {sale_id}",
            update="SET leaseUntil = :lease, gsi1sk = :lease",
            condition="#s = :gen AND (leaseUntil = :expected OR leaseUntil <= :now)",
            names=_STATUS,
            values={
                ":gen": SaleStatus.GENERATING.value,
                ":expected": expected_lease or "-",
                ":now": iso(now),
                ":lease": lease,
            },
        )
        return lease if moved else None

    def checkpoint(
        self,
        sale_id: str,
        lease: str,
        cursor: str | None,
        written: int,
        now: float,
        lease_seconds: int,
        last: bool = False,
    ) -> str | None:
        """Record the generator's progress under its lease; returns the renewed lease, None if lost.

        ``last``: the run stops here and hands over cleanly. The renewed lease is then recorded
        as ``cleanLease``: while the sale still holds that lease, nobody has written past the
        cursor, and the next run need not look for notifications that already exist.
        """
        renewed = new_lease(now, lease_seconds)
        values: dict[str, Any] = {":gen": SaleStatus.GENERATING.value, ":lease": lease, ":new": renewed, ":n": written}
        names = dict(_STATUS)
        sets = "leaseUntil = :new, gsi1sk = :new" + (", cleanLease = :new" if last else "")
        if cursor is not None:
            sets += ", #c = :cursor"
            values[":cursor"] = cursor
            names["#c"] = "cursor"
        moved = self._move(
            sale_id,
            what=f"checkpoint sale {sale_id}",
            update=f"SET {sets} ADD generated :n",
            condition="#s = :gen AND leaseUntil = :lease",
            names=names,
            values=values,
        )
        return renewed if moved else None

    def _end_run(self, sale_id: str, outcome: str, reason: str | None = None) -> None:
        values: dict[str, Any] = {":o": outcome, ":e": Entity.SALE_RUN.value, ":id": sale_id}
        update = "SET #o = :o, entity = :e, saleId = :id"
        if reason is not None:
            update += ", reason = :r"
            values[":r"] = reason[:500]
        self._table.update(
            sale_run_key(sale_id),
            what=f"end run of sale {sale_id}",
            update=update,
            names={"#o": "outcome"},
            values=values,
        )

    def finish(self, sale_id: str, lease: str, now: float) -> bool:
        """generating → generated, by the lease holder."""
        finished = self._move(
            sale_id,
            what=f"finish sale {sale_id}",
            update="SET #s = :done, generatedAt = :now REMOVE gsi1pk, gsi1sk, leaseUntil",
            condition="#s = :gen AND leaseUntil = :lease",
            names=_STATUS,
            values={
                ":done": SaleStatus.GENERATED.value,
                ":gen": SaleStatus.GENERATING.value,
                ":lease": lease,
                ":now": iso(now),
            },
        )
        if finished:
            self._end_run(sale_id, SaleStatus.GENERATED.value)
        return finished

    def fail(self, sale_id: str, reason: str, now: float) -> bool:
        """generating → failed (e.g. its campaign is missing or invalid). It stays active until the
        reconciler has seen every notification it already had reach a final status."""
        failed = self._to_failed(sale_id, SaleStatus.GENERATING, reason, now)
        if failed:
            self._end_run(sale_id, SaleStatus.FAILED.value, reason)
        return failed
