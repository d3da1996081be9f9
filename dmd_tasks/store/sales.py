"""SALE items: claiming due sales, the generator's lease and checkpoint, the active list.

A sale is ``waiting`` (in gsi1 under ``SALES#waiting`` by notify time), then
``generating`` under a lease (gsi1 ``SALES#generating`` by lease expiry, gsi2
``ACTIVE_SALES``), then ``generated`` (or ``failed`` with a reason), and leaves the active
list once the reconciler has seen none of its notifications in flight, twice.

The SALE item is the product's: re-saving a sale replaces it. So the pipeline records each
sale's runs on an item of its own (``RUN``, beside it): a claim starts a run only if none
ran yet or an operator asked for one (``dmd sales rerun``); a sale re-written as ``waiting``
after it ran is restored to its run's state instead of being generated again.
"""

from __future__ import annotations

import time
from typing import Any

from dmd_tasks.domain.entities import MAX_OFFSET_SECONDS, Entity, Sale, SaleStatus, parse_instant
from dmd_tasks.store.codec import deserialize, iso, new_lease
from dmd_tasks.store.keys import (
    ACTIVE_SALES,
    GSI1,
    GSI2,
    NOTIFICATION_PREFIX,
    SALES_GENERATING,
    SALES_WAITING,
    sale_key,
    sale_partition,
    sale_run_key,
)
from dmd_tasks.store.table import DemandTable

_STATUS = {"#s": "status"}
#: A run started this recently, not yet marked claimed, whose sale is still ``waiting`` is a claim
#: in progress (another beat between its writes), not a re-save; after it, a claimer that died.
CLAIM_GRACE_SECONDS = 30


def sale_item(sale: Sale) -> dict[str, Any]:
    item: dict[str, Any] = {
        **sale_key(sale.id),
        "entity": Entity.SALE.value,
        "id": sale.id,
        "eventId": sale.event_id,
        "notifyAt": sale.notify_at,
        "status": sale.status.value,
        "generated": sale.generated,
    }
    if sale.status is SaleStatus.WAITING:
        item.update(gsi1pk=SALES_WAITING, gsi1sk=sale.notify_at)
    return item


class SaleRecords:
    def __init__(self, table: DemandTable) -> None:
        self._table = table

    def put(self, sale: Sale) -> None:
        """Write a sale (the product's side; the demo and the tests use it)."""
        self._table.put(sale_item(sale), what=f"put sale {sale.id}")

    def get(self, sale_id: str) -> dict[str, Any] | None:
        return self._table.get(sale_key(sale_id), what=f"get sale {sale_id}")

    def _index_upto(self, pk: str, upto: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._table.query_items(
            what=f"query {pk}",
            IndexName=GSI1,
            KeyConditionExpression="gsi1pk = :pk AND gsi1sk <= :upto",
            ExpressionAttributeValues={":pk": {"S": pk}, ":upto": {"S": upto}},
            Limit=limit,
        )

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

    def _to_failed(self, sale_id: str, source: SaleStatus, reason: str, now: float) -> bool:
        """``source`` → failed with ``reason``, out of the sale indexes."""
        done = self._table.update(
            sale_key(sale_id),
            what=f"fail sale {sale_id}",
            update="SET #s = :failed, reason = :r, failedAt = :now REMOVE gsi1pk, gsi1sk, leaseUntil",
            condition="#s = :from",
            names=_STATUS,
            values={
                ":failed": SaleStatus.FAILED.value,
                ":from": source.value,
                ":r": reason[:500],
                ":now": iso(now),
            },
        )
        return done is not None

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
        done = self._table.update(
            sale_key(sale_id),
            what=f"claim sale {sale_id}",
            update=update,
            condition="#s = :waiting",
            names=names,
            values=values,
        )
        if done is None:
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
        done = self._table.update(
            sale_key(sale_id),
            what=f"restore sale {sale_id}",
            update=update,
            condition="#s = :waiting",
            names={**_STATUS, "#cur": "cursor"} if "#cur" in update else _STATUS,
            values=values,
        )
        return done is not None

    def rerun(self, sale_id: str, now: float) -> bool:
        """An operator's explicit re-run of a sale that ended: it is claimed again at once and
        its generator checks every fan (only fans without a notification get one)."""
        sale = self.get(sale_id)
        if sale is None or sale.get("status") not in (SaleStatus.GENERATED.value, SaleStatus.FAILED.value):
            return False
        # The run is allowed first: a claim tick that sees the sale waiting must find it allowed.
        self._allow_rerun(sale_id, True)
        done = self._table.update(
            sale_key(sale_id),
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
        if done is None:  # it changed meanwhile: take the permission back
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

    def take_lease(self, sale_id: str, expected_lease: str | None, now: float, lease_seconds: int) -> str | None:
        """Renew the generator lease if it is still ``expected_lease`` (or expired); returns the new lease."""
        lease = new_lease(now, lease_seconds)
        done = self._table.update(
            sale_key(sale_id),
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
        return lease if done is not None else None

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
        done = self._table.update(
            sale_key(sale_id),
            what=f"checkpoint sale {sale_id}",
            update=f"SET {sets} ADD generated :n",
            condition="#s = :gen AND leaseUntil = :lease",
            names=names,
            values=values,
        )
        return renewed if done is not None else None

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
        finished = (
            self._table.update(
                sale_key(sale_id),
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
            is not None
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

    def active(self) -> list[str]:
        """Sales being generated or with notifications still waiting to be scheduled or sent."""
        out: list[str] = []
        for page in self._table.query_pages(
            what="active sales",
            IndexName=GSI2,
            KeyConditionExpression="gsi2pk = :a",
            ExpressionAttributeValues={":a": {"S": ACTIVE_SALES}},
        ):
            out.extend(i["gsi2sk"]["S"] for i in page.get("Items", []))
        return out

    def note_quiet(self, sale_id: str, now: float) -> bool:
        """The reconciler found nothing of an ended sale in flight: remember when (first look)."""
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"sale {sale_id} quiet",
                update="SET quietSince = :now",
                condition="#s IN (:done, :failed) AND attribute_exists(gsi2pk)",
                names=_STATUS,
                values={
                    ":now": int(now),
                    ":done": SaleStatus.GENERATED.value,
                    ":failed": SaleStatus.FAILED.value,
                },
            )
            is not None
        )

    def clear_quiet(self, sale_id: str) -> None:
        """Something of the sale is in flight again: the next quiet look starts over."""
        self._table.update(
            sale_key(sale_id),
            what=f"sale {sale_id} busy",
            update="REMOVE quietSince",
            condition="attribute_exists(quietSince)",
            values={},
        )

    def retire(self, sale_id: str, quiet_since: int) -> bool:
        """Drop an ended sale from the active list: the reconciler found nothing of it in flight at
        two looks (``quiet_since`` and now), so no index lag or move between indexes hid one."""
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"retire sale {sale_id}",
                update="SET retiredAt = :now REMOVE gsi2pk, gsi2sk, quietSince",
                condition="#s IN (:done, :failed) AND quietSince = :q",
                names=_STATUS,
                values={
                    ":done": SaleStatus.GENERATED.value,
                    ":failed": SaleStatus.FAILED.value,
                    ":q": quiet_since,
                    ":now": iso(time.time()),
                },
            )
            is not None
        )

    def reactivate(self, sale_id: str) -> bool:
        """Put a sale back on the active list (an operator's repair: it was retired while some of
        its notifications were still in flight)."""
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"reactivate sale {sale_id}",
                update="SET gsi2pk = :active, gsi2sk = :id REMOVE quietSince",
                condition="attribute_exists(pk) AND attribute_not_exists(gsi2pk)",
                values={":active": ACTIVE_SALES, ":id": sale_id},
            )
            is not None
        )
