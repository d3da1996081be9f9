"""The single ``demand`` table: the DynamoDB calls every entity module makes, with dmd's error
mapping. Low-level client only (no resource objects on hot paths); items go in and come out
as plain dicts (``codec``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from botocore.exceptions import ClientError

from dmd_tasks.domain.errors import TransientError
from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import deserialize, serialize
from dmd_tasks.store.keys import Key

#: DynamoDB's BatchWriteItem limit (items per call) and BatchGetItem limit (keys per call).
BATCH_WRITE_MAX_ITEMS = 25
BATCH_GET_MAX_KEYS = 100
_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}


def _wrap(exc: ClientError, what: str) -> Exception:
    """Throttling and server errors become TransientError (retry); anything else stays as it is."""
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _THROTTLING:
        return TransientError(f"{what}: DynamoDB {code}")
    return exc


class DemandTable:
    """The ``demand`` table: events, demand, sales, notifications, opt-outs (docs/data-model.md)."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.table_name
        self._client = aws.client("dynamodb", settings)

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
        self, keys: list[Key], attributes: Iterable[str], pool: Executor | None = None
    ) -> list[dict[str, Any]]:
        """``attributes`` of the items these keys name, for those that exist (BatchGetItem, 100
        keys a call; with ``pool``, concurrently)."""
        names = {f"#a{n}": name for n, name in enumerate(attributes)}
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
        request = {
            "Keys": keys,
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ConsistentRead": True,
        }
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
