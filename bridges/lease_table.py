"""The lease table: one item per shard of a stream, read and written with conditional writes
(the protocol is ``bridges.leases``'s; this module is its storage)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings

log = logging.getLogger(__name__)

#: DynamoDB's limit of items in one TransactWriteItems request.
TRANSACT_MAX_ITEMS = 100


@dataclass
class Lease:
    shard: str
    owner: str | None = None
    counter: int = 0
    sequence: str | None = None
    finished: bool = False
    parents: tuple[str, ...] = ()


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class LeaseTable:
    """The lease items of one consumer's stream in the checkpoint table (one item per shard)."""

    def __init__(self, settings: Settings, consumer: str, stream_id: str) -> None:
        self._ddb = aws.client("dynamodb", settings)
        self._table = settings.checkpoint_table_name
        self._stream = f"{consumer}|{stream_id}"

    def _key(self, shard: str) -> dict[str, Any]:
        return {"stream": {"S": self._stream}, "shard": {"S": shard}}

    def list(self) -> list[Lease]:
        leases: list[Lease] = []
        paginator = self._ddb.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "stream"},
            ExpressionAttributeValues={":s": {"S": self._stream}},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                leases.append(
                    Lease(
                        shard=item["shard"]["S"],
                        owner=item.get("owner", {}).get("S"),
                        counter=int(item.get("counter", {}).get("N", "0")),
                        sequence=item.get("sequence", {}).get("S"),
                        finished=item.get("finished", {}).get("BOOL", False),
                        parents=tuple(item.get("parents", {}).get("SS", [])),
                    )
                )
        return leases

    def _applied(self, call: Callable[..., Any], **kwargs: Any) -> bool:
        """One conditional write to the lease table: False if its condition did not hold."""
        try:
            call(TableName=self._table, **kwargs)
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def _update(self, shard: str, **kwargs: Any) -> bool:
        return self._applied(self._ddb.update_item, Key=self._key(shard), **kwargs)

    def create(self, shard: str, parents: Iterable[str]) -> bool:
        """A lease for a shard that has none (no owner, no checkpoint); False when one exists."""
        item: dict[str, Any] = {**self._key(shard), "counter": {"N": "0"}, "finished": {"BOOL": False}}
        parents = sorted(set(parents))
        if parents:
            item["parents"] = {"SS": parents}
        return self._applied(
            self._ddb.put_item,
            Item=item,
            ConditionExpression="attribute_not_exists(#k)",
            ExpressionAttributeNames={"#k": "shard"},
        )

    def renew(self, lease: Lease, owner: str) -> bool:
        return self._update(
            lease.shard,
            UpdateExpression="SET #c = #c + :one",
            ConditionExpression="#o = :me AND #c = :seen",
            ExpressionAttributeNames={"#c": "counter", "#o": "owner"},
            ExpressionAttributeValues={":one": {"N": "1"}, ":me": {"S": owner}, ":seen": {"N": str(lease.counter)}},
        )

    def renew_many(self, leases: Sequence[Lease], owner: str) -> dict[str, bool]:
        """Renew every lease in ``leases`` still held by ``owner`` as seen: the same conditional
        write as ``renew`` for each, up to 100 in one request (``_each``). Returns, per shard,
        whether it was renewed (False: another process holds it); a shard missing from the answer
        is undecided (a transaction conflict: the next round tells)."""
        return self._each(leases, lambda lease: self._renewal(lease, owner), lambda lease: self.renew(lease, owner))

    def take_many(self, leases: Sequence[Lease], owner: str) -> dict[str, bool]:
        """``take`` each of ``leases``, up to 100 in one request (``_each``): a process taking over
        a dead one's shards takes them together, not one round trip after another. Returns, per
        shard, whether it was taken (False: it changed since it was seen); a shard missing from
        the answer is undecided (a conflict: the next take tells)."""
        return self._each(leases, lambda lease: self._taking(lease, owner), lambda lease: self.take(lease, owner))

    def _each(
        self,
        leases: Sequence[Lease],
        action: Callable[[Lease], dict[str, Any]],
        alone: Callable[[Lease], bool],
    ) -> dict[str, bool]:
        """One conditional write per lease, up to 100 in one TransactWriteItems request (one lease
        alone: ``alone``, an UpdateItem). A transaction is all or nothing: when some conditions
        fail, DynamoDB cancels it and says which (``CancellationReasons``); the others go again
        without them. A conflict with another writer writes nothing and decides nothing."""
        out: dict[str, bool] = {}
        pending = [*leases]
        while pending:
            if len(pending) == 1:
                out[pending[0].shard] = alone(pending[0])
                break
            chunk, pending = pending[:TRANSACT_MAX_ITEMS], pending[TRANSACT_MAX_ITEMS:]
            while chunk:
                try:
                    self._ddb.transact_write_items(
                        TransactItems=[{"Update": action(lease)} for lease in chunk],
                        ClientRequestToken=uuid.uuid4().hex,
                    )
                except ClientError as exc:
                    reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
                    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException" or len(
                        reasons
                    ) != len(chunk):
                        raise
                    failed = [lease for lease, r in zip(chunk, reasons, strict=True) if r == "ConditionalCheckFailed"]
                    if not failed:  # a conflict with another writer (a take under way): nothing was
                        break  # written; neither done nor refused, the next round tells
                    out.update((lease.shard, False) for lease in failed)
                    chunk = [lease for lease in chunk if lease not in failed]
                    if len(chunk) == 1:
                        out[chunk[0].shard] = alone(chunk[0])
                        break
                    continue
                for lease in chunk:
                    out[lease.shard] = True
                break
        return out

    def _renewal(self, lease: Lease, owner: str) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": self._key(lease.shard),
            "UpdateExpression": "SET #c = #c + :one",
            "ConditionExpression": "#o = :me AND #c = :seen",
            "ExpressionAttributeNames": {"#c": "counter", "#o": "owner"},
            "ExpressionAttributeValues": {
                ":one": {"N": "1"},
                ":me": {"S": owner},
                ":seen": {"N": str(lease.counter)},
            },
        }

    def take(self, lease: Lease, owner: str) -> bool:
        """Become the owner, if the lease is still as seen (its counter unchanged)."""
        action = self._taking(lease, owner)
        del action["TableName"]
        return self._applied(self._ddb.update_item, **action)

    def _taking(self, lease: Lease, owner: str) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": self._key(lease.shard),
            "UpdateExpression": "SET #o = :me, #c = if_not_exists(#c, :zero) + :one",
            "ConditionExpression": "attribute_not_exists(#c) OR #c = :seen",
            "ExpressionAttributeNames": {"#c": "counter", "#o": "owner"},
            "ExpressionAttributeValues": {
                ":one": {"N": "1"},
                ":zero": {"N": "0"},
                ":me": {"S": owner},
                ":seen": {"N": str(lease.counter)},
            },
        }

    def checkpoint(self, shard: str, owner: str, sequence: str | None, finished: bool) -> bool:
        """Move the checkpoint, only while ``owner`` holds the lease."""
        names = {"#o": "owner", "#f": "finished", "#u": "updatedAt"}
        values: dict[str, Any] = {
            ":me": {"S": owner},
            ":f": {"BOOL": finished},
            ":u": {"N": str(int(time.time()))},
        }
        expression = "SET #f = :f, #u = :u"
        if sequence:
            names["#q"] = "sequence"
            values[":q"] = {"S": sequence}
            expression += ", #q = :q"
        return self._update(
            shard,
            UpdateExpression=expression,
            ConditionExpression="#o = :me",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def delete_finished(self, shard: str) -> bool:
        """Forget the lease of a shard read to its end (only if it is finished)."""
        return self._applied(
            self._ddb.delete_item,
            Key=self._key(shard),
            ConditionExpression="#f = :true",
            ExpressionAttributeNames={"#f": "finished"},
            ExpressionAttributeValues={":true": {"BOOL": True}},
        )

    def finish_gone(self, shard: str) -> bool:
        """Mark finished the lease of a shard the stream no longer has (whoever holds it)."""
        return self._update(
            shard,
            UpdateExpression="SET #f = :true, #c = if_not_exists(#c, :zero) + :one",
            ConditionExpression="attribute_exists(#k)",
            ExpressionAttributeNames={"#f": "finished", "#c": "counter", "#k": "shard"},
            ExpressionAttributeValues={":true": {"BOOL": True}, ":zero": {"N": "0"}, ":one": {"N": "1"}},
        )

    def reopen(self, shard: str) -> bool:
        """Unfinish a finished lease (its shard is still open); its checkpoint and owner stay, and
        the counter moves so that every process sees the change."""
        return self._update(
            shard,
            UpdateExpression="SET #f = :false, #c = if_not_exists(#c, :zero) + :one",
            ConditionExpression="#f = :true",
            ExpressionAttributeNames={"#f": "finished", "#c": "counter"},
            ExpressionAttributeValues={
                ":true": {"BOOL": True},
                ":false": {"BOOL": False},
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
            },
        )

    def release(self, shard: str, owner: str) -> bool:
        return self._update(
            shard,
            UpdateExpression="REMOVE #o SET #c = #c + :one",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner", "#c": "counter"},
            ExpressionAttributeValues={":me": {"S": owner}, ":one": {"N": "1"}},
        )
