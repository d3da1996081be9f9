"""Access to the single ``demand`` table (low-level client: no resource objects on hot paths)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from dmd_tasks import aws
from dmd_tasks.errors import TransientError
from dmd_tasks.models import Event, event_key
from dmd_tasks.settings import Settings

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

#: DynamoDB's BatchWriteItem limit (items per call).
BATCH_WRITE_MAX_ITEMS = 25
_THROTTLING = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
               "InternalServerError", "ServiceUnavailable"}


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items()}


def deserialize(image: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in image.items()}


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

    def put_items(self, items: Iterable[dict[str, Any]]) -> int:
        """Write items with BatchWriteItem, 25 a call, retrying ``UnprocessedItems``. Returns items written."""
        written = 0
        chunk: list[dict[str, Any]] = []
        for item in items:
            chunk.append({"PutRequest": {"Item": serialize(item)}})
            if len(chunk) == BATCH_WRITE_MAX_ITEMS:
                written += self._batch_write(chunk)
                chunk = []
        if chunk:
            written += self._batch_write(chunk)
        return written

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
