"""Beat's side: the sales due (or whose generator stalled), claimed for a run, restored when
re-saved after their run, re-run on an operator's word."""

from __future__ import annotations

from typing import Any

from dmd_tasks.domain.entities import MAX_OFFSET_SECONDS, Entity, SaleStatus, parse_instant
from dmd_tasks.store.codec import deserialize, iso, new_lease
from dmd_tasks.store.keys import (
    ACTIVE_SALES,
    GSI1,
    NOTIFICATION_PREFIX,
    SALES_GENERATING,
    SALES_WAITING,
    sale_partition,
    sale_run_key,
)
from dmd_tasks.store.sales.base import _STATUS, CLAIM_GRACE_SECONDS, SaleStore


class Claiming(SaleStore):
    def due(self, now: float) -> list[dict[str, Any]]:
        return self.due_ahead(now, 0.0)[0]

    def due_ahead(self, now: float, ahead: float) -> tuple[list[dict[str, Any]], float | None]:
        """Sales whose notify time has come (sparse index: only waiting sales are in it), and
        sales whose notify time cannot be read: those carry ``notifyAtError`` (the reason); with
        the earliest notify time of the others within ``ahead`` seconds (None: none that soon).

        The index sorts notify times as the product wrote them; one written with an offset sorts
        up to 14 hours from its instant, so the query reaches that far ahead and each time is
        parsed and compared as an instant.
        """
        found: list[dict[str, Any]] = []
        soonest: float | None = None
        for page in self._table.query_pages(
            what="query due sales",
            IndexName=GSI1,
            KeyConditionExpression="gsi1pk = :pk AND gsi1sk <= :upto",
            ExpressionAttributeValues={
                ":pk": {"S": SALES_WAITING},
                ":upto": {"S": iso(now + MAX_OFFSET_SECONDS + ahead)},
            },
            Limit=100,
        ):
            for item in (deserialize(i) for i in page.get("Items", [])):
                try:
                    at = parse_instant(item.get("notifyAt"))
                except ValueError as exc:
                    found.append({**item, "notifyAtError": str(exc)})
                    continue
                if at <= now:
                    found.append(item)
                elif at <= now + ahead:
                    soonest = at if soonest is None else min(soonest, at)
        return found, soonest

    def refuse(self, sale_id: str, reason: str, now: float) -> bool:
        """waiting → failed with ``reason`` (its notify time cannot be read): visibly, once, instead of
        being looked at on every tick. A re-save with a readable time makes it waiting again."""
        return self._to_failed(sale_id, SaleStatus.WAITING, reason, now)

    def stalled(self, now: float) -> list[dict[str, Any]]:
        return self.stalled_ahead(now, 0.0)[0]

    def stalled_ahead(self, now: float, ahead: float) -> tuple[list[dict[str, Any]], float | None]:
        """Sales being generated whose generator lease expired (its worker died), with the
        earliest lease of the others that ends within ``ahead`` seconds (None: none that soon)."""
        stalled: list[dict[str, Any]] = []
        soonest: float | None = None
        upto = iso(now)
        for item in self._index_upto(SALES_GENERATING, iso(now + ahead)):
            lease = str(item.get("gsi1sk", ""))  # the lease: its expiry, then its owner's token
            if lease <= upto:
                stalled.append(item)
                continue
            try:
                until = parse_instant(lease.partition("#")[0])
            except ValueError:
                until = now
            soonest = until if soonest is None else min(soonest, until)
        return stalled, soonest

    def claim(self, sale_id: str, now: float, lease_seconds: int) -> str | None:
        """waiting → generating, once per run the pipeline allows.

        Returns ``"claimed"`` (generate it now), ``"restored"`` (the sale had already run and
        was re-written as waiting: it goes back to where its run stands, and is not generated
        again), or None (another claimer won, or it is no longer waiting).
        """
        run = self._start_run(sale_id, now)
        if run is None:
            return "restored" if self.restore(sale_id, now) else None
        # A first run normally finds no notification; one that does (the claim crashed between
        # its two writes, or the sale ran before runs were recorded) checks every fan it writes.
        check_all = int(run.get("runs", 1)) > 1 or self._has_notifications(sale_id)
        lease = new_lease(now, lease_seconds)
        values: dict[str, Any] = {
            ":gen": SaleStatus.GENERATING.value,
            ":waiting": SaleStatus.WAITING.value,
            ":lease": lease,
            ":gpk": SALES_GENERATING,
            ":active": ACTIVE_SALES,
            ":id": sale_id,
            ":now": iso(now),
        }
        update = (
            "SET #s = :gen, leaseUntil = :lease, gsi1pk = :gpk, gsi1sk = :lease, gsi2pk = :active, "
            "gsi2sk = :id, claimedAt = :now"
        )
        names = dict(_STATUS)
        if check_all:
            update += ", checkAll = :true REMOVE #cur, cleanLease"
            values[":true"] = True
            names["#cur"] = "cursor"
        else:
            update += ", cleanLease = :lease"
        moved = self._move(
            sale_id,
            what=f"claim sale {sale_id}",
            update=update,
            condition="#s = :waiting",
            names=names,
            values=values,
        )
        if not moved:
            return None
        self._table.update(  # the run holds its sale now: a re-save from here on is restored at once
            sale_run_key(sale_id),
            what=f"run of sale {sale_id} claimed",
            update="SET claimedAt = :now, entity = :e, saleId = :id",
            values={":now": iso(now), ":e": Entity.SALE_RUN.value, ":id": sale_id},
        )
        return "claimed"

    def _start_run(self, sale_id: str, now: float) -> dict[str, Any] | None:
        """Record a new run on the sale's RUN item: the first one, or one an operator asked for
        (``rerun``). None when the sale already ran and nobody asked for it again."""
        return self._table.update(
            sale_run_key(sale_id),
            what=f"start run of sale {sale_id}",
            update="SET entity = :e, saleId = :id, runs = if_not_exists(runs, :zero) + :one, startedAt = :now, "
            "rerun = :false, #o = :running REMOVE claimedAt",
            condition="attribute_not_exists(pk) OR rerun = :true",
            names={"#o": "outcome"},
            values={
                ":e": Entity.SALE_RUN.value,
                ":id": sale_id,
                ":zero": 0,
                ":one": 1,
                ":now": iso(now),
                ":false": False,
                ":true": True,
                ":running": SaleStatus.GENERATING.value,
            },
            return_new=True,
        )

    def _has_notifications(self, sale_id: str) -> bool:
        response = self._table.for_notifications().query(
            what=f"any notification of {sale_id}",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :n)",
            ExpressionAttributeValues={":pk": {"S": sale_partition(sale_id)}, ":n": {"S": NOTIFICATION_PREFIX}},
            Limit=1,
            Select="COUNT",
        )
        return bool(response.get("Count"))

    def restore(self, sale_id: str, now: float) -> bool:
        """A sale re-written as ``waiting`` after it ran goes back to its run's state instead of
        being claimed again: ``generated``/``failed`` as its run ended, or, if the run had not
        ended, ``generating`` with an expired lease (the next claim tick resumes it, checking
        every fan, so nothing is written twice). It is active again, so the reconciler looks
        after its notifications and retires it when they are all final."""
        run = self._table.get(sale_run_key(sale_id), what=f"run of sale {sale_id}") or {}
        outcome = run.get("outcome")
        started = str(run.get("startedAt", ""))
        in_progress = "claimedAt" not in run and started > iso(now - CLAIM_GRACE_SECONDS)
        if outcome == SaleStatus.GENERATING.value and in_progress:
            return False  # another claimer is between its writes right now: leave the sale to it
        values: dict[str, Any] = {
            ":waiting": SaleStatus.WAITING.value,
            ":active": ACTIVE_SALES,
            ":id": sale_id,
            ":now": iso(now),
        }
        if outcome in (SaleStatus.GENERATED.value, SaleStatus.FAILED.value):
            update = "SET #s = :st, gsi2pk = :active, gsi2sk = :id, restoredAt = :now REMOVE gsi1pk, gsi1sk"
            values[":st"] = outcome
            if outcome == SaleStatus.FAILED.value:
                update = update.replace("restoredAt = :now", "restoredAt = :now, reason = :r")
                values[":r"] = str(run.get("reason", "failed"))
        else:
            expired = new_lease(0, 0)
            update = (
                "SET #s = :st, leaseUntil = :lease, gsi1pk = :gpk, gsi1sk = :lease, gsi2pk = :active, "
                "gsi2sk = :id, checkAll = :true, restoredAt = :now REMOVE #cur, cleanLease"
            )
            values.update({":st": SaleStatus.GENERATING.value, ":lease": expired, ":gpk": SALES_GENERATING})
            values[":true"] = True
        return self._move(
            sale_id,
            what=f"restore sale {sale_id}",
            update=update,
            condition="#s = :waiting",
            names={**_STATUS, "#cur": "cursor"} if "#cur" in update else _STATUS,
            values=values,
        )

    def rerun(self, sale_id: str, now: float) -> bool:
        """An operator's explicit re-run of a sale that ended: it is claimed again at once and
        its generator checks every fan (only fans without a notification get one)."""
        sale = self.get(sale_id)
        if sale is None or sale.get("status") not in (SaleStatus.GENERATED.value, SaleStatus.FAILED.value):
            return False
        # The run is allowed first: a claim tick that sees the sale waiting must find it allowed.
        self._allow_rerun(sale_id, True)
        moved = self._move(
            sale_id,
            what=f"rerun sale {sale_id}",
            update="SET #s = :waiting, notifyAt = :now, gsi1pk = :gpk, gsi1sk = :now "
            "REMOVE leaseUntil, #cur, cleanLease, quietSince",
            condition="#s IN (:done, :failed)",
            names={**_STATUS, "#cur": "cursor"},
            values={
                ":waiting": SaleStatus.WAITING.value,
                ":done": SaleStatus.GENERATED.value,
                ":failed": SaleStatus.FAILED.value,
                ":now": iso(now),
                ":gpk": SALES_WAITING,
            },
        )
        if not moved:  # it changed meanwhile: take the permission back
            self._allow_rerun(sale_id, False)
            return False
        return True

    def _allow_rerun(self, sale_id: str, allowed: bool) -> None:
        self._table.update(
            sale_run_key(sale_id),
            what=f"allow a rerun of sale {sale_id}",
            update="SET rerun = :allowed, entity = :e, saleId = :id",
            values={":allowed": allowed, ":e": Entity.SALE_RUN.value, ":id": sale_id},
        )
