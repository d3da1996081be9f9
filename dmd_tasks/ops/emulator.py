"""The local AWS emulator: moto's server, with DynamoDB transactions and queries it can afford.

``python -m dmd_tasks.ops.emulator -H HOST -p PORT`` is ``python -m moto.server`` with four
changes (the third, one write at a time, is ``serialize_writes``; the fourth, plain updates
without moto's expression machinery, is ``emulator_updates``).

**Transactions.** moto's ``TransactWriteItems`` (moto 5.x, ``DynamoDBBackend.transact_write_items``)
deep-copies every table a transaction touches once per item of the transaction, to roll back
on failure: 100 updates on a table of a few thousand items took ~18 s and grew the process to
2.5 GB, so a design that writes its transitions 100 at a time, as DynamoDB intends, could not
run on the local stack. ``transact_write_items`` below keeps moto's behaviour and errors (all
or nothing, a cancellation reason per item, the same exceptions) and checks every condition
before it writes anything, so a cancelled transaction has nothing to undo; an error while
writing (an update expression that fails on the item) restores the items it had written.
Requests and their results are the same as moto's, and as DynamoDB's.

**Queries.** moto's ``Table.query`` takes ``Table.all_items()``, which sorts every item of the
table, and then filters and sorts what matches: each query costs the whole table, sorted (on a
table of 9,000 items a few queries a second kept the emulator's core busy, so a sale ran slower
the bigger the table under it was, which DynamoDB does not do). Inside a query, ``all_items``
below gives the items unsorted (the query sorts what it keeps, by the full key, so its result is
the same), and for a query of the table itself only the items of the asked partition.

Only the local stack (``dmd stack up``, the tests, the benchmarks) runs this; it needs the
``local`` extra (moto).
"""

from __future__ import annotations

import copy
import inspect
import sys
import threading
from typing import Any

#: set while this thread runs a query: what ``all_items`` should give it
_query = threading.local()


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto's ``DynamoDBBackend.transact_write_items``: every condition checked first, then the
    writes, each item copied (not each table) so that a failed write can be undone."""
    from moto.dynamodb.exceptions import TooManyTransactionsException, TransactionCanceledException

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    planned, errors = _check(self, transact_items)
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)
    _write(self, planned)


_Planned = tuple[str, dict[str, Any], str, dict[str, Any]]
_Reason = tuple[str | None, str | None, dict[str, Any] | None]


def _check(self: Any, transact_items: list[dict[str, Any]]) -> tuple[list[_Planned], list[_Reason]]:
    """Each item's condition against the table as it is: the writes to make, and per item its
    cancellation reason (None, None, None when it may go)."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TransactWriteSingleOpException,
    )

    seen: set[tuple[str, str]] = set()
    planned: list[_Planned] = []
    errors: list[_Reason] = []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        original: dict[str, Any] | None = None
        try:
            op_type, op = next(iter(entry.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if op_type == "Put":
                table = self.get_table(table_name)
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            unique = (str(table_name), str(dict(sorted(key.items()))))
            if unique in seen:
                raise MultipleTransactionsException()
            seen.add(unique)
            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            if condition is not None:
                check = get_filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                )
                if not check.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        original = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original)
            planned.append((op_type, op, table_name, key))
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            raise
        except ConditionalCheckFailed as exc:
            errors.append(("ConditionalCheckFailed", str(exc.message), original))
        except Exception as exc:  # as moto does: any other problem is that item's cancellation reason
            errors.append((type(exc).__name__, str(exc), original))
    return planned, errors


def _write(self: Any, planned: list[_Planned]) -> None:
    """The checked writes, in order; all undone (items and stream records) if one fails."""
    from moto.dynamodb.models.dynamo_type import Item

    written: list[tuple[Any, dict[str, Any], Item | None]] = []
    marks = {name: _stream_length(self.get_table(name)) for name in {p[2] for p in planned}}
    try:
        for op_type, op, table_name, key in planned:
            before = self.get_item(table_name, key)
            written.append((self.get_table(table_name), key, copy.deepcopy(before)))
            expressions = {
                "expression_attribute_names": op.get("ExpressionAttributeNames"),
                "expression_attribute_values": op.get("ExpressionAttributeValues"),
            }
            if op_type == "Put":
                self.put_item(table_name, op["Item"], **expressions)
            elif op_type == "Delete":
                self.delete_item(table_name, key, **expressions)
            elif op_type == "Update":
                self.update_item(table_name, key, update_expression=op["UpdateExpression"], **expressions)
    except Exception:
        _undo(written, marks)
        raise


def _stream_length(table: Any) -> int | None:
    return len(table.stream_shard.items) if table.stream_shard is not None else None


def _undo(written: list[tuple[Any, dict[str, Any], Any]], marks: dict[str, int | None]) -> None:
    """Put every written item back as it was (newest first), and drop the stream records written."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    for table, key, before in reversed(written):
        hash_value = key[table.hash_key_attr]
        range_value = key.get(table.range_key_attr) if table.range_key_attr else None
        hash_key, range_key = DynamoType(hash_value), DynamoType(range_value) if range_value else None
        if before is None:
            table.delete_item(hash_key, range_key)
        else:
            table.put_item(before.to_json()["Attributes"])
    for table, _, _ in written:
        mark = marks.get(table.name)
        if mark is not None and table.stream_shard is not None:
            del table.stream_shard.items[mark:]


def patch_query(table_class: Any) -> None:
    """Give ``table_class`` (moto's ``Table``) the query above."""
    sorted_items, query = table_class.all_items, table_class.query

    def all_items(self: Any) -> list[Any]:
        partition = getattr(_query, "partition", None)
        if partition is None:
            return sorted_items(self)
        if isinstance(partition, list):  # an index: the items whose index key can match
            every = (
                self.items.values()
                if not self.range_key_attr
                else (item for hash_set in self.items.values() for item in hash_set.values())
            )
            return [item for item in every if _may_match(item, partition)]
        found = self.items.get(partition)
        if found is None:
            return []
        return list(found.values()) if self.range_key_attr else [found]

    signature = inspect.signature(query)

    def query_unsorted(self: Any, *args: Any, **kwargs: Any) -> Any:
        asked = signature.bind(self, *args, **kwargs).arguments
        hash_key, index_name = asked.get("hash_key"), asked.get("index_name")
        if index_name or hash_key is None:
            _query.partition = list(asked.get("hash_key_conditions") or [])
        else:
            _query.partition = hash_key
        try:
            return query(self, *args, **kwargs)
        finally:
            _query.partition = None

    table_class.all_items = all_items
    table_class.query = query_unsorted


def _may_match(item: Any, conditions: list[tuple[str, Any]]) -> bool:
    """Whether ``item`` can match the index query's key conditions: a string key compared as
    text (cheap); any other type is left to moto's own test, which every item given still meets."""
    for name, want in conditions:
        have = item.attrs.get(name)
        if have is None:
            return False
        if want.type == "S" and (have.type != "S" or have.value != want.value):
            return False
    return True


#: Every DynamoDB write of the emulator holds this lock: see ``serialize_writes``.
_WRITES = threading.RLock()

#: moto's DynamoDB backend methods that write (PartiQL included).
WRITE_METHODS = (
    "put_item",
    "update_item",
    "delete_item",
    "transact_write_items",
    "execute_statement",
    "execute_transaction",
    "batch_execute_statement",
)


def serialize_writes(backend_class: Any) -> None:
    """One DynamoDB write at a time in the emulator, as DynamoDB's own writes are atomic.

    moto's server answers each request on a thread of its own and its writes take no lock: a
    conditional write checks its condition, then writes, and another thread can write the item
    in between (a transaction, which checks all its conditions before it writes anything, has a
    wide window). A receipt settling a notification in that window was overwritten by the
    transaction's older view: the notification stayed ``sent`` for ever. Here every write method
    holds one lock (re-entrant: a transaction's writes go through ``update_item``)."""
    for name in WRITE_METHODS:
        original = getattr(backend_class, name)

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _WRITES:
                return _original(self, *args, **kwargs)

        setattr(backend_class, name, locked)


def patch() -> None:
    """Give moto's DynamoDB backend the transaction, the query, the plain updates
    (``emulator_updates``) and the write lock above (once per process)."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    from dmd_tasks.ops.emulator_updates import patch_updates

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    patch_updates(DynamoDBBackend)
    serialize_writes(DynamoDBBackend)
    patch_query(Table)


def main(argv: list[str] | None = None) -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
