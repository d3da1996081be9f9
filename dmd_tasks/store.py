"""Access to the single ``demand`` table (low-level client: no resource objects on hot paths)."""

from __future__ import annotations

import math
from decimal import Decimal
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from dmd_tasks import aws
from dmd_tasks.errors import TransientError
from dmd_tasks.metrics import NOTIFICATION_TRANSITIONS
from dmd_tasks.models import Event, event_key, notification_key, optout_key, sale_key
from dmd_tasks.settings import Settings

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

#: DynamoDB's BatchWriteItem limit (items per call).
BATCH_WRITE_MAX_ITEMS = 25
_THROTTLING = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
               "InternalServerError", "ServiceUnavailable"}


def _attribute(value: Any) -> dict[str, Any]:
    """One value in DynamoDB's wire form: strings and integers (nearly every attribute) directly,
    anything else through boto3's serializer (a profile of generation showed it at 10 % of a chunk)."""
    kind = type(value)
    if kind is str:
        return {"S": value}
    if kind is int:
        return {"N": str(value)}
    return _serializer.serialize(value)  # type: ignore[no-any-return]


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _attribute(v) for k, v in item.items()}


def _value(attribute: dict[str, Any]) -> Any:
    if "S" in attribute:
        return attribute["S"]
    if "N" in attribute:
        return Decimal(attribute["N"])  # what boto3's deserializer gives
    return _deserializer.deserialize(attribute)


def deserialize(image: dict[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in image.items()}


def _wrap(exc: ClientError, what: str) -> Exception:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _THROTTLING:
        return TransientError(f"{what}: DynamoDB {code}")
    return exc


class DemandTable:
    """The ``demand`` table: events, demand, sales, notifications (see docs/data-model.md)."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.table_name
        self._client = aws.client("dynamodb", settings)

    def get_event(self, event_id: str) -> Event | None:
        try:
            response = self._client.get_item(TableName=self.name, Key=serialize(event_key(event_id)),
                                              ConsistentRead=True)
        except ClientError as exc:
            raise _wrap(exc, f"get event {event_id}") from exc
        item = response.get("Item")
        return Event.model_validate(deserialize(item)) if item else None

    def set_short_url(self, event_id: str, short_url: str) -> bool:
        """Store the event's short URL once. False when another writer stored one first."""
        try:
            self._client.update_item(
                TableName=self.name,
                Key=serialize(event_key(event_id)),
                UpdateExpression="SET shortUrl = :u",
                ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(shortUrl) OR shortUrl = :u)",
                ExpressionAttributeValues={":u": {"S": short_url}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise _wrap(exc, f"store short URL of {event_id}") from exc
        return True

    def put_items(self, items: Iterable[dict[str, Any]], pool: Executor | None = None) -> int:
        """Write items with BatchWriteItem, 25 a call, retrying ``UnprocessedItems``. Returns items written.

        With ``pool``, the calls go out concurrently (items are serialized first, in this thread).
        """
        batches: list[list[dict[str, Any]]] = []
        chunk: list[dict[str, Any]] = []
        written = 0
        for item in items:
            chunk.append({"PutRequest": {"Item": serialize(item)}})
            if len(chunk) == BATCH_WRITE_MAX_ITEMS:
                if pool is None:
                    written += self._batch_write(chunk)
                else:
                    batches.append(chunk)
                chunk = []
        if chunk:
            batches.append(chunk)
        if pool is None:
            return written + sum(self._batch_write(b) for b in batches)
        return sum(pool.map(self._batch_write, batches))

    def _batch_write(self, requests: list[dict[str, Any]]) -> int:
        pending = requests
        delay = 0.05
        for _attempt in range(10):
            try:
                response = self._client.batch_write_item(RequestItems={self.name: pending})
            except ClientError as exc:
                raise _wrap(exc, "batch write") from exc
            pending = response.get("UnprocessedItems", {}).get(self.name, [])
            if not pending:
                return len(requests)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise TransientError(f"batch write: {len(pending)} items still unprocessed after retries")

    def query_all(self, pk: str, sk_prefix: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of one partition (optionally one sort-key prefix), page by page."""
        kwargs: dict[str, Any] = {"TableName": self.name, "KeyConditionExpression": "pk = :pk",
                                  "ExpressionAttributeValues": {":pk": {"S": pk}}}
        if sk_prefix:
            kwargs["KeyConditionExpression"] += " AND begins_with(sk, :sk)"
            kwargs["ExpressionAttributeValues"][":sk"] = {"S": sk_prefix}
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(**kwargs):
            for item in page.get("Items", []):
                yield deserialize(item)


def _conditional(fn: Any, what: str, **kwargs: Any) -> dict[str, Any] | None:
    """Run a conditional write; None when the condition failed (someone else moved first)."""
    try:
        return fn(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return None
        raise _wrap(exc, what) from exc


def iso(ts: float) -> str:
    """Epoch seconds → sortable ISO-8601 UTC (second precision), the form of every *At attribute."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def epoch_key(ts: float) -> str:
    """Epoch seconds as a fixed-width string, so index sort keys compare in time order."""
    return f"{int(ts):012d}"


def new_lease(now: float, seconds: float) -> str:
    """A generator lease: its expiry (sortable against ``iso(now)``) and a token unique to its owner,
    so two runs taking a lease in the same second cannot both hold it."""
    return f"{iso(now + seconds)}#{uuid.uuid4().hex[:12]}"


class SaleRecords:
    """SALE items: claiming due sales and the generator's lease and checkpoint."""

    def __init__(self, table: DemandTable) -> None:
        self._client = table._client
        self._name = table.name

    def get(self, sale_id: str) -> dict[str, Any] | None:
        item = self._client.get_item(TableName=self._name, Key=serialize(sale_key(sale_id)),
                                     ConsistentRead=True).get("Item")
        return deserialize(item) if item else None

    def _query_index(self, pk: str, upto: str, limit: int = 100) -> list[dict[str, Any]]:
        response = self._client.query(
            TableName=self._name, IndexName="gsi1", KeyConditionExpression="gsi1pk = :pk AND gsi1sk <= :upto",
            ExpressionAttributeValues={":pk": {"S": pk}, ":upto": {"S": upto}}, Limit=limit)
        return [deserialize(i) for i in response.get("Items", [])]

    def due(self, now: float) -> list[dict[str, Any]]:
        """Sales whose notify time has come (sparse index: only waiting sales are in it)."""
        return self._query_index("SALES#waiting", iso(now))

    def stalled(self, now: float) -> list[dict[str, Any]]:
        """Sales being generated whose generator lease expired (its worker died)."""
        return self._query_index("SALES#generating", iso(now))

    def claim(self, sale_id: str, now: float, lease_seconds: int) -> bool:
        """waiting → generating, once: the first claimer wins, a repeated tick changes nothing."""
        lease = new_lease(now, lease_seconds)
        return _conditional(
            self._client.update_item, f"claim sale {sale_id}", TableName=self._name, Key=serialize(sale_key(sale_id)),
            UpdateExpression="SET #s = :gen, leaseUntil = :lease, gsi1pk = :gpk, gsi1sk = :lease, "
                             "gsi2pk = :active, gsi2sk = :id, claimedAt = :now, cleanLease = :lease",
            ConditionExpression="#s = :waiting",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=serialize({":gen": "generating", ":waiting": "waiting", ":lease": lease,
                                                 ":gpk": "SALES#generating", ":active": "ACTIVE_SALES",
                                                 ":id": sale_id, ":now": iso(now)}),
        ) is not None

    def take_lease(self, sale_id: str, expected_lease: str | None, now: float, lease_seconds: int) -> str | None:
        """Renew the generator lease if it is still ``expected_lease`` (or expired); returns the new lease."""
        lease = new_lease(now, lease_seconds)
        condition = "#s = :gen AND (leaseUntil = :expected OR leaseUntil <= :now)"
        done = _conditional(
            self._client.update_item, f"lease sale {sale_id}", TableName=self._name, Key=serialize(sale_key(sale_id)),
            UpdateExpression="SET leaseUntil = :lease, gsi1sk = :lease",
            ConditionExpression=condition, ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=serialize({":gen": "generating", ":expected": expected_lease or "-",
                                                 ":now": iso(now), ":lease": lease}),
        )
        return lease if done is not None else None

    def checkpoint(self, sale_id: str, lease: str, cursor: str | None, written: int, now: float,
                   lease_seconds: int, last: bool = False) -> str | None:
        """Record the generator's progress under its lease; returns the renewed lease, None if lost.

        ``last``: the run stops here and hands over cleanly. The renewed lease is then recorded
        as ``cleanLease``: while the sale still holds that lease, nobody has written past the
        cursor, and the next run need not look for notifications that already exist.
        """
        renewed = new_lease(now, lease_seconds)
        values: dict[str, Any] = {":gen": "generating", ":lease": lease, ":new": renewed, ":n": written}
        sets = "leaseUntil = :new, gsi1sk = :new" + (", cleanLease = :new" if last else "")
        update = f"SET {sets} ADD generated :n"
        if cursor is not None:
            update = f"SET {sets}, #c = :cursor ADD generated :n"
            values[":cursor"] = cursor
        done = _conditional(
            self._client.update_item, f"checkpoint sale {sale_id}", TableName=self._name,
            Key=serialize(sale_key(sale_id)), UpdateExpression=update,
            ConditionExpression="#s = :gen AND leaseUntil = :lease",
            ExpressionAttributeNames={"#s": "status", **({"#c": "cursor"} if cursor is not None else {})},
            ExpressionAttributeValues=serialize(values),
        )
        return renewed if done is not None else None

    def finish(self, sale_id: str, lease: str, now: float) -> bool:
        return _conditional(
            self._client.update_item, f"finish sale {sale_id}", TableName=self._name, Key=serialize(sale_key(sale_id)),
            UpdateExpression="SET #s = :done, generatedAt = :now REMOVE gsi1pk, gsi1sk, leaseUntil",
            ConditionExpression="#s = :gen AND leaseUntil = :lease", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=serialize({":done": "generated", ":gen": "generating", ":lease": lease,
                                                 ":now": iso(now)}),
        ) is not None

    def fail(self, sale_id: str, reason: str, now: float) -> bool:
        """generating → failed (e.g. its campaign is missing or invalid); leaves the active list."""
        return _conditional(
            self._client.update_item, f"fail sale {sale_id}", TableName=self._name, Key=serialize(sale_key(sale_id)),
            UpdateExpression="SET #s = :failed, reason = :r, failedAt = :now "
                             "REMOVE gsi1pk, gsi1sk, gsi2pk, gsi2sk, leaseUntil",
            ConditionExpression="#s = :gen", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=serialize({":failed": "failed", ":gen": "generating", ":r": reason[:500],
                                                 ":now": iso(now)}),
        ) is not None

    def active(self) -> list[str]:
        """Sales being generated or with notifications still waiting to be scheduled or sent."""
        out: list[str] = []
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(TableName=self._name, IndexName="gsi2", KeyConditionExpression="gsi2pk = :a",
                                       ExpressionAttributeValues={":a": {"S": "ACTIVE_SALES"}}):
            out.extend(i["gsi2sk"]["S"] for i in page.get("Items", []))
        return out

    def retire(self, sale_id: str) -> bool:
        """Drop a generated sale from the active list (nothing left to schedule or sweep)."""
        return _conditional(
            self._client.update_item, f"retire sale {sale_id}", TableName=self._name, Key=serialize(sale_key(sale_id)),
            UpdateExpression="REMOVE gsi2pk, gsi2sk", ConditionExpression="#s = :done",
            ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":done": {"S": "generated"}},
        ) is not None


class NotificationRecords:
    """NOTIFICATION items and their status machine (docs/data-model.md). Every move is conditional."""

    def __init__(self, table: DemandTable, pending_shards: int) -> None:
        self._client = table._client
        self._name = table.name
        self._shards = pending_shards

    def shard_of(self, fan_id: str) -> int:
        return zlib.crc32(fan_id.encode()) % self._shards

    def shards(self) -> range:
        return range(self._shards)

    # --- generation ---------------------------------------------------------------------------

    def new_item(self, *, sale_id: str, event_id: str, fan_id: str, phone: str, tz: str, send_after: float,
                 now: float) -> dict[str, Any]:
        return {**notification_key(sale_id, fan_id), "entity": "NOTIFICATION", "id": f"{sale_id}:{fan_id}",
                "saleId": sale_id, "eventId": event_id, "fanId": fan_id, "phone": phone, "timezone": tz,
                "status": "pending", "attempts": 0, "createdAt": iso(now), "sendAfter": int(send_after),
                "gsi1pk": f"PENDING#{sale_id}#{self.shard_of(fan_id)}",
                "gsi1sk": f"{epoch_key(send_after)}#{fan_id}"}

    def existing_fans(self, sale_id: str, fan_ids: list[str], pool: Executor | None = None) -> set[str]:
        """Which of these fans already have a notification (BatchGetItem, 100 keys a call)."""
        return {k["sk"][len("NOTIFICATION#"):] for k in
                self._batch_get([notification_key(sale_id, f) for f in fan_ids], pool)}

    def opted_out(self, phones: list[str], pool: Executor | None = None) -> set[str]:
        return {k["pk"][len("OPTOUT#"):] for k in self._batch_get([optout_key(p) for p in set(phones)], pool)}

    def _batch_get(self, keys: list[dict[str, str]], pool: Executor | None = None) -> list[dict[str, Any]]:
        """The keys (pk, sk) of those items that exist; with ``pool``, the calls go out concurrently."""
        slices = [[serialize(k) for k in keys[start:start + 100]] for start in range(0, len(keys), 100)]
        found: list[dict[str, Any]] = []
        for part in (pool.map(self._batch_get_100, slices) if pool is not None else map(self._batch_get_100, slices)):
            found.extend(part)
        return found

    def _batch_get_100(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pending: dict[str, Any] = {self._name: {"Keys": keys, "ProjectionExpression": "pk, sk",
                                                "ConsistentRead": True}}
        found: list[dict[str, Any]] = []
        delay = 0.05
        while pending:
            response = self._client.batch_get_item(RequestItems=pending)
            found.extend(deserialize(i) for i in response.get("Responses", {}).get(self._name, []))
            pending = response.get("UnprocessedKeys") or {}
            if pending:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return found

    # --- scheduling ---------------------------------------------------------------------------

    def due_pending(self, sale_id: str, shard: int, now: float, limit: int) -> list[dict[str, Any]]:
        """Pending notifications of one shard whose send-after time has come, oldest first."""
        if limit <= 0:
            return []
        response = self._client.query(
            TableName=self._name, IndexName="gsi1", KeyConditionExpression="gsi1pk = :pk AND gsi1sk < :upto",
            ExpressionAttributeValues={":pk": {"S": f"PENDING#{sale_id}#{shard}"},
                                       ":upto": {"S": epoch_key(now + 1)}}, Limit=limit)
        return [deserialize(i) for i in response.get("Items", [])]

    def any_in(self, index_pk: str) -> bool:
        response = self._client.query(TableName=self._name, IndexName="gsi1", KeyConditionExpression="gsi1pk = :pk",
                                      ExpressionAttributeValues={":pk": {"S": index_pk}}, Limit=1,
                                      Select="COUNT")
        return bool(response.get("Count"))

    def schedule(self, sale_id: str, fan_id: str, now: float) -> bool:
        """pending → scheduled (the bridge routes the change to the sender)."""
        return self._move(sale_id, fan_id, "pending", "scheduled",
                          "SET #s = :to, scheduledAt = :now REMOVE gsi1pk, gsi1sk", {":now": iso(now)})

    def defer(self, sale_id: str, fan_id: str, send_after: float) -> bool:
        """Keep pending but wait for the fan's send window to open."""
        return self._move(sale_id, fan_id, "pending", "pending", "SET sendAfter = :after, gsi1sk = :sk",
                          {":after": int(send_after), ":sk": f"{epoch_key(send_after)}#{fan_id}"})

    # --- sending ------------------------------------------------------------------------------

    def claim_for_send(self, sale_id: str, fan_id: str, now: float, lease_seconds: int) -> dict[str, Any] | None:
        """scheduled → sending under a lease; only one worker wins. Returns the item, or None."""
        lease = now + lease_seconds
        values = serialize({":from": "scheduled", ":to": "sending", ":lease": int(lease), ":now": iso(now),
                            ":gpk": f"SENDING#{sale_id}#{self.shard_of(fan_id)}", ":gsk": epoch_key(lease)})
        response = _conditional(
            self._client.update_item, f"claim {sale_id}:{fan_id}", TableName=self._name,
            Key=serialize(notification_key(sale_id, fan_id)),
            UpdateExpression="SET #s = :to, leaseUntil = :lease, sendingAt = :now, gsi1pk = :gpk, gsi1sk = :gsk",
            ConditionExpression="#s = :from", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=values, ReturnValues="ALL_NEW")
        if not response:
            return None
        NOTIFICATION_TRANSITIONS.labels("scheduled", "sending").inc()
        return deserialize(response["Attributes"])

    def mark_sent(self, sale_id: str, fan_id: str, message_id: str, now: float, traceparent: str | None = None
                  ) -> bool:
        """sending → sent; keeps the sender's trace context so the receipt can continue the trace."""
        return self._move(sale_id, fan_id, "sending", "sent",
                          "SET #s = :to, providerMessageId = :mid, sentAt = :now, gsi2pk = :msg, gsi2sk = :n, "
                          "traceparent = :tp REMOVE gsi1pk, gsi1sk, leaseUntil",
                          {":mid": message_id, ":now": iso(now), ":msg": f"MSG#{message_id}", ":n": "NOTIFICATION",
                           ":tp": traceparent or "-"})

    def mark_retry(self, sale_id: str, fan_id: str, attempts: int, not_before: float, reason: str,
                   source: str = "sending") -> bool:
        """sending → scheduled with one more attempt; the bridge re-sends it after ``not_before``."""
        return self._move(sale_id, fan_id, source, "scheduled",
                          "SET #s = :to, attempts = :a, notBefore = :nb, lastError = :r "
                          "REMOVE gsi1pk, gsi1sk, leaseUntil",
                          {":a": attempts, ":nb": math.ceil(not_before), ":r": reason[:500]})

    def mark_failed(self, sale_id: str, fan_id: str, reason: str, source: str, attempts: int | None = None) -> bool:
        update = "SET #s = :to, reason = :r REMOVE gsi1pk, gsi1sk, leaseUntil"
        values: dict[str, Any] = {":r": reason[:500]}
        if attempts is not None:
            update = "SET #s = :to, reason = :r, attempts = :a REMOVE gsi1pk, gsi1sk, leaseUntil"
            values[":a"] = attempts
        return self._move(sale_id, fan_id, source, "failed", update, values)

    def expired_leases(self, sale_id: str, shard: int, now: float, limit: int = 100) -> list[dict[str, Any]]:
        response = self._client.query(
            TableName=self._name, IndexName="gsi1", KeyConditionExpression="gsi1pk = :pk AND gsi1sk < :now",
            ExpressionAttributeValues={":pk": {"S": f"SENDING#{sale_id}#{shard}"}, ":now": {"S": epoch_key(now)}},
            Limit=limit)
        return [deserialize(i) for i in response.get("Items", [])]

    # --- delivery receipts --------------------------------------------------------------------

    def find_by_message_id(self, message_id: str) -> tuple[str, str] | None:
        response = self._client.query(TableName=self._name, IndexName="gsi2",
                                      KeyConditionExpression="gsi2pk = :m",
                                      ExpressionAttributeValues={":m": {"S": f"MSG#{message_id}"}}, Limit=1)
        items = response.get("Items", [])
        if not items:
            return None
        sk = items[0]["sk"]["S"]
        sale_id = items[0]["pk"]["S"][len("SALE#"):]
        return sale_id, sk[len("NOTIFICATION#"):]

    def record_delivery(self, sale_id: str, fan_id: str, message_id: str, status: str, at: str
                        ) -> dict[str, Any] | None:
        """sent → delivered | undelivered | failed, for this provider message only; a repeated or late
        receipt changes nothing. Returns the updated item, or None when nothing changed."""
        response = _conditional(
            self._client.update_item, f"{sale_id}:{fan_id} sent->{status}", TableName=self._name,
            Key=serialize(notification_key(sale_id, fan_id)),
            UpdateExpression="SET #s = :to, deliveredAt = :at REMOVE gsi2pk, gsi2sk",
            ConditionExpression="#s = :from AND providerMessageId = :mid", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=serialize({":to": status, ":from": "sent", ":at": at, ":mid": message_id}),
            ReturnValues="ALL_NEW")
        if not response:
            return None
        NOTIFICATION_TRANSITIONS.labels("sent", status).inc()
        return deserialize(response["Attributes"])

    def status_of(self, sale_id: str, fan_id: str) -> str | None:
        item = self._client.get_item(TableName=self._name, Key=serialize(notification_key(sale_id, fan_id)),
                                     ProjectionExpression="#s", ExpressionAttributeNames={"#s": "status"},
                                     ConsistentRead=True).get("Item")
        return item["status"]["S"] if item else None

    def add_optout(self, phone: str, now: float) -> None:
        self._client.put_item(TableName=self._name, Item=serialize({**optout_key(phone), "entity": "OPTOUT",
                                                                   "at": iso(now)}))

    def count_by_status(self, sale_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(
                TableName=self._name, KeyConditionExpression="pk = :pk AND begins_with(sk, :n)",
                ProjectionExpression="#s", ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":pk": {"S": f"SALE#{sale_id}"}, ":n": {"S": "NOTIFICATION#"}}):
            for item in page.get("Items", []):
                status = item["status"]["S"]
                counts[status] = counts.get(status, 0) + 1
        return counts

    def _move(self, sale_id: str, fan_id: str, source: str, target: str, update: str,
              values: dict[str, Any]) -> bool:
        values = {**values, ":from": source}
        if ":to" in update:  # DynamoDB refuses unused expression values
            values[":to"] = target
        moved = _conditional(
            self._client.update_item, f"{sale_id}:{fan_id} {source}->{target}", TableName=self._name,
            Key=serialize(notification_key(sale_id, fan_id)), UpdateExpression=update,
            ConditionExpression="#s = :from",
            ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues=serialize(values),
        ) is not None
        if moved and source != target:
            NOTIFICATION_TRANSITIONS.labels(source, target).inc()
        return moved
