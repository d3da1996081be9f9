"""The single ``demand`` table: the DynamoDB calls every entity module makes, with dmd's error
mapping. Low-level client only (no resource objects on hot paths); items go in and come out
as plain dicts (``codec``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import deserialize, serialize
from dmd_tasks.store.keys import Key

#: DynamoDB's BatchWriteItem limit (items per call), BatchGetItem limit (keys per call) and
#: TransactWriteItems limit (actions per call).
BATCH_WRITE_MAX_ITEMS = 25
BATCH_GET_MAX_KEYS = 100
TRANSACT_MAX_ITEMS = 100
#: What a cancelled transaction says of an item that would have been written.
_NO_REASON = ("None", None)
#: The reasons a cancelled transaction of ``update_many`` is sent again for (without the failed items).
_EXPECTED_REASONS = {"ConditionalCheckFailed", "TransactionConflict"}
_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}


@dataclass(frozen=True)
class Update:
    """One conditional UpdateItem, to be written with others (``DemandTable.update_many``)."""

    key: Key
    update: str
    condition: str | None
    values: dict[str, Any]
    names: dict[str, str] | None = None

    def action(self, table: str) -> dict[str, Any]:
        """Its ``Update`` action of a TransactWriteItems request."""
        action: dict[str, Any] = {"TableName": table, "Key": serialize(self.key), "UpdateExpression": self.update}
        if self.values:
            action["ExpressionAttributeValues"] = serialize(self.values)
        if self.condition is not None:
            action["ConditionExpression"] = self.condition
        if self.names:
            action["ExpressionAttributeNames"] = self.names
        return action


def _wrap(exc: ClientError, what: str) -> Exception:
    """Throttling and server errors become TransientError (retry); anything else stays as it is."""
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _THROTTLING:
        return TransientError(f"{what}: DynamoDB {code}")
    return exc


class DemandTable:
    """The ``demand`` table: events, demand, sales, opt-outs; or, with ``name``, a table of the same
    shape: ``for_notifications()`` is the notifications table (docs/data-model.md)."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or settings.table_name
        self._client = aws.client("dynamodb", settings)
        self._notifications: DemandTable | None = None

    def for_notifications(self) -> DemandTable:
        """The table notifications and phone claims live in (this one, if it is that table)."""
        if self.name == self.settings.notifications_table_name:
            return self
        if self._notifications is None:
            self._notifications = DemandTable(self.settings, self.settings.notifications_table_name)
        return self._notifications

    # --- single items ---------------------------------------------------------------------

    def get(self, key: Key, *, what: str, attributes: Iterable[str] | None = None) -> dict[str, Any] | None:
        """One item by key (strongly consistent), or None; ``attributes`` limits what is read."""
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": serialize(key), "ConsistentRead": True}
        if attributes is not None:
            names = {f"#a{i}": name for i, name in enumerate(attributes)}
            kwargs.update(ProjectionExpression=", ".join(names), ExpressionAttributeNames=names)
        try:
            item = self._client.get_item(**kwargs).get("Item")
        except ClientError as exc:
            raise _wrap(exc, what) from exc
        return deserialize(item) if item else None

    def put(self, item: dict[str, Any], *, what: str) -> None:
        """Write one item unconditionally."""
        try:
            self._client.put_item(TableName=self.name, Item=serialize(item))
        except ClientError as exc:
            raise _wrap(exc, what) from exc

    def update(
        self,
        key: Key,
        *,
        what: str,
        update: str,
        condition: str | None = None,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        return_new: bool = False,
    ) -> dict[str, Any] | None:
        """An UpdateItem, conditional unless ``condition`` is None. None when the condition failed
        (someone else moved first); otherwise the item as written (``return_new``) or an empty dict."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": serialize(key),
            "UpdateExpression": update,
        }
        if values:  # DynamoDB refuses an empty map
            kwargs["ExpressionAttributeValues"] = serialize(values)
        if condition is not None:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if return_new:
            kwargs["ReturnValues"] = "ALL_NEW"
        try:
            response = self._client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise _wrap(exc, what) from exc
        return deserialize(response["Attributes"]) if return_new else {}

    # --- batches --------------------------------------------------------------------------

    def update_many(self, updates: Sequence[Update], *, what: str) -> list[bool]:
        """Apply each update whose condition holds, up to 100 in one TransactWriteItems request (one
        alone: an UpdateItem): per item the guarantee of ``update`` (applied only if its own
        condition holds, atomically), at one request per 100 items. A transaction is all or
        nothing, so when some conditions fail DynamoDB cancels it and says which
        (``CancellationReasons``): the rest is sent again without them, in a transaction of its
        own. Returns, per update, whether it was applied."""
        applied = [False] * len(updates)
        chunk: list[int] = []
        keys: set[tuple[str, str]] = set()
        for n, update in enumerate(updates):
            key = (str(update.key["pk"]), str(update.key["sk"]))
            if len(chunk) == TRANSACT_MAX_ITEMS or key in keys:  # one action per item in a transaction
                self._transact(updates, chunk, applied, what)
                chunk, keys = [], set()
            chunk.append(n)
            keys.add(key)
        if chunk:
            self._transact(updates, chunk, applied, what)
        return applied

    def _transact(self, updates: Sequence[Update], pending: list[int], applied: list[bool], what: str) -> None:
        delay = 0.05
        for _attempt in range(10):
            if not pending:
                return
            if len(pending) == 1:  # one item: a plain conditional UpdateItem (one write unit, not two)
                u = updates[pending[0]]
                done = self.update(
                    u.key, what=what, update=u.update, condition=u.condition, values=u.values, names=u.names
                )
                applied[pending[0]] = done is not None
                return
            try:
                self._client.transact_write_items(
                    TransactItems=[{"Update": updates[i].action(self.name)} for i in pending],
                    # botocore's own retries of this request stay idempotent (a write that landed
                    # but whose answer was lost is not refused as a failed condition)
                    ClientRequestToken=uuid.uuid4().hex,
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("TransactionCanceledException", "TransactionConflictException"):
                    raise _wrap(exc, what) from exc
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
                if code == "TransactionCanceledException" and len(reasons) == len(pending):
                    unknown = {r for r in reasons if r not in _NO_REASON} - {
                        "ConditionalCheckFailed",
                        "TransactionConflict",
                    }
                    if unknown:
                        raise _wrap(exc, f"{what}: {sorted(unknown)}") from exc
                    if "TransactionConflict" not in reasons:  # only failed conditions: the others go again at once
                        pending = [i for i, r in zip(pending, reasons, strict=True) if r in _NO_REASON]
                        continue
                    pending = [i for i, r in zip(pending, reasons, strict=True) if r != "ConditionalCheckFailed"]
                time.sleep(delay)  # another transaction holds some of these items: again after it
                delay = min(delay * 2, 1.0)
                continue
            for i in pending:
                applied[i] = True
            return
        raise TransientError(f"{what}: {len(pending)} updates still in conflict after retries")

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

    def existing_keys(self, keys: list[Key], pool: Executor | None = None) -> list[Key]:
        """Which of these keys name an item (BatchGetItem, 100 keys a call; with ``pool``, concurrently)."""
        return [{"pk": i["pk"], "sk": i["sk"]} for i in self.get_items(keys, ("pk", "sk"), pool)]

    def get_items(
        self, keys: list[Key], attributes: Iterable[str] | None, pool: Executor | None = None
    ) -> list[dict[str, Any]]:
        """``attributes`` (None: all) of the items these keys name, for those that exist
        (BatchGetItem, strongly consistent, 100 keys a call; with ``pool``, concurrently)."""
        names = {f"#a{n}": name for n, name in enumerate(attributes or ())}
        slices = [
            [serialize(k) for k in keys[start : start + BATCH_GET_MAX_KEYS]]
            for start in range(0, len(keys), BATCH_GET_MAX_KEYS)
        ]

        def get(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return self._batch_get(part, names)

        found: list[dict[str, Any]] = []
        for items in pool.map(get, slices) if pool is not None else map(get, slices):
            found.extend(items)
        return found

    def _batch_get(self, keys: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"Keys": keys, "ConsistentRead": True}
        if names:
            request.update(ProjectionExpression=", ".join(names), ExpressionAttributeNames=names)
        pending: dict[str, Any] = {self.name: request}
        found: list[dict[str, Any]] = []
        delay = 0.05
        while pending:
            try:
                response = self._client.batch_get_item(RequestItems=pending)
            except ClientError as exc:
                raise _wrap(exc, "batch get") from exc
            found.extend(deserialize(i) for i in response.get("Responses", {}).get(self.name, []))
            pending = response.get("UnprocessedKeys") or {}
            if pending:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return found

    # --- queries --------------------------------------------------------------------------

    def query(self, *, what: str, **kwargs: Any) -> dict[str, Any]:
        """One Query page (``TableName`` is added); items stay in wire form, see ``items``."""
        try:
            return self._client.query(TableName=self.name, **kwargs)
        except ClientError as exc:
            raise _wrap(exc, what) from exc

    def query_items(self, *, what: str, **kwargs: Any) -> list[dict[str, Any]]:
        """The items of one Query page, deserialized."""
        return [deserialize(i) for i in self.query(what=what, **kwargs).get("Items", [])]

    def query_pages(self, *, what: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every page of a Query (follows ``LastEvaluatedKey``)."""
        while True:
            page = self.query(what=what, **kwargs)
            yield page
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def query_all(self, pk: str, sk_prefix: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of one partition (optionally one sort-key prefix), page by page."""
        kwargs: dict[str, Any] = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": pk}}}
        if sk_prefix:
            kwargs["KeyConditionExpression"] += " AND begins_with(sk, :sk)"
            kwargs["ExpressionAttributeValues"][":sk"] = {"S": sk_prefix}
        for page in self.query_pages(what=f"query {pk}", **kwargs):
            for item in page.get("Items", []):
                yield deserialize(item)

    def scan_items(self, *, what: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every item a Scan returns, page by page. For one-off operator repairs only: the pipeline
        itself never scans."""
        while True:
            try:
                page = self._client.scan(TableName=self.name, **kwargs)
            except ClientError as exc:
                raise _wrap(exc, what) from exc
            for item in page.get("Items", []):
                yield deserialize(item)
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last
