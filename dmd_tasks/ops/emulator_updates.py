"""The emulator's plain updates: ``SET a = :v, … REMOVE b, …`` on an item that exists, without
moto's expression machinery.

moto handles every UpdateExpression the same way: it parses it (twice in a transaction: once to
validate the request, once to apply it), deep-copies the tree, walks it with eleven validators and
runs it. For the pipeline's writes, ten to a dozen top-level attributes set to values and a few
removed, that was ~0.8 ms of the emulator's CPU per item, most of the emulator's work in a sale
(profiled during ``python -m bench --only cost``: the update 36 % of its CPU, the parses 11 %), so
the local stack's one core bounded the bigger sales long before the pipeline did.

``update_item`` below applies an expression of exactly that shape itself when every check moto
would make passes: one SET clause of ``name = :value`` actions and at most one REMOVE clause of
names (either first), top-level names only, every ``#name`` and ``:value`` defined, no reserved
word unescaped, no attribute named twice, no key attribute of the table changed, a value of an
attribute the table defines (a key of the table or of an index) of that type and not empty, no
condition, the item present. Anything else (a nested path, a function, arithmetic, ADD, DELETE, a
condition, a new item, a check that fails) goes to moto's own ``update_item``, which answers it as
before, errors included. The result, and the stream record of a table with a stream, are the ones
moto's path gives (``tests/unit/ops/test_emulator.py`` compares the two).

``UpdateExpressionParser.make`` is also remembered per expression: the request's validation and
the update both parse it, and nothing changes the tree it returns (moto's validator works on a
deep copy of it).
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

_NAME = r"(?:#[A-Za-z0-9_]+|[A-Za-z][A-Za-z0-9_]*)"
_VALUE = r":[A-Za-z0-9_]+"
_SET_ACTION = re.compile(rf"\s*({_NAME})\s*=\s*({_VALUE})\s*")
_SET = rf"SET\s+{_NAME}\s*=\s*{_VALUE}(?:\s*,\s*{_NAME}\s*=\s*{_VALUE})*"
_REMOVE = rf"REMOVE\s+{_NAME}(?:\s*,\s*{_NAME})*"
_PLAIN = re.compile(
    rf"^\s*(?:(?P<set1>{_SET})(?:\s+(?P<remove1>{_REMOVE}))?|(?P<remove2>{_REMOVE})(?:\s+(?P<set2>{_SET}))?)\s*$",
    re.IGNORECASE,
)

#: (attribute, value) to set, attributes to remove
_Plan = tuple[list[tuple[str, dict[str, Any]]], list[str]]


def plain_plan(
    expression: str | None, names: dict[str, str] | None, values: dict[str, Any] | None, reserved: set[str]
) -> _Plan | None:
    """What ``expression`` sets and removes, when it has the plain shape and names and values it
    uses are all given; None otherwise (moto's path decides)."""
    found = _PLAIN.match(expression or "")
    if found is None:
        return None
    names, values = names or {}, values or {}
    set_clause = found.group("set1") or found.group("set2")
    remove_clause = found.group("remove1") or found.group("remove2")
    sets: list[tuple[str, dict[str, Any]]] = []
    removes: list[str] = []
    for action in set_clause[3:].split(",") if set_clause else ():
        matched = _SET_ACTION.fullmatch(action)
        if matched is None or matched.group(2) not in values:
            return None
        name = _resolve(matched.group(1), names, reserved)
        if name is None:
            return None
        sets.append((name, values[matched.group(2)]))
    for path in remove_clause[6:].split(",") if remove_clause else ():
        name = _resolve(path.strip(), names, reserved)
        if name is None:
            return None
        removes.append(name)
    touched = [name for name, _ in sets] + removes
    if len(set(touched)) != len(touched):  # overlapping paths: moto's error
        return None
    return sets, removes


def _resolve(token: str, names: dict[str, str], reserved: set[str]) -> str | None:
    if token.startswith("#"):
        return names.get(token)
    return None if token.upper() in reserved else token


def _allowed(table: Any, sets: list[tuple[str, dict[str, Any]]], removes: list[str]) -> bool:
    """The table-dependent checks of moto's validators: no key attribute of the table changed, and
    an attribute the table defines (its keys, its indexes' keys) set only to a non-empty value of
    its type."""
    keys = set(table.table_key_attrs)
    if keys.intersection(removes):
        return False
    defined = {d["AttributeName"]: d["AttributeType"] for d in table.attr}
    for name, value in sets:
        if name in keys or not isinstance(value, dict) or len(value) != 1:
            return False
        ((kind, data),) = value.items()
        if name in defined and (kind != defined[name] or (kind in ("S", "B") and not data)):
            return False
    return True


def _apply(table: Any, item: Any, plan: _Plan) -> None:
    """The plan's sets and removes on ``item``, and the stream record of a table with a stream."""
    from moto.dynamodb.exceptions import ItemSizeTooLarge, ItemSizeToUpdateTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType

    before = copy.deepcopy(item) if table.stream_shard is not None else None
    kept = dict(item.attrs)  # values are replaced, never changed in place: enough to undo
    try:
        for name, value in plan[0]:
            item.attrs[name] = DynamoType(value)
        for name in plan[1]:
            item.attrs.pop(name, None)
    except ItemSizeTooLarge:
        item.attrs.clear()
        item.attrs.update(kept)
        raise ItemSizeToUpdateTooLarge() from None
    if table.stream_shard is not None:
        table.stream_shard.add(before, item)


def patch_updates(backend_class: Any) -> None:
    """Give moto's DynamoDB backend the plain update path and the remembered parse above."""
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
    from moto.dynamodb.parsing.reserved_keywords import ReservedKeywords

    reserved = {word.upper() for word in ReservedKeywords.get_reserved_keywords()}
    moto_update = backend_class.update_item
    make = UpdateExpressionParser.make.__func__
    UpdateExpressionParser.make = classmethod(functools.lru_cache(maxsize=512)(make))  # type: ignore[arg-type]

    def update_item(
        self: Any,
        table_name: str,
        key: dict[str, Any],
        update_expression: str,
        expression_attribute_names: dict[str, Any],
        expression_attribute_values: dict[str, Any],
        attribute_updates: dict[str, Any] | None = None,
        expected: dict[str, Any] | None = None,
        condition_expression: str | None = None,
        return_values_on_condition_check_failure: str | None = None,
    ) -> Any:
        def moto() -> Any:
            return moto_update(
                self,
                table_name,
                key,
                update_expression,
                expression_attribute_names,
                expression_attribute_values,
                attribute_updates,
                expected,
                condition_expression,
                return_values_on_condition_check_failure,
            )

        if attribute_updates or expected or condition_expression:
            return moto()
        plan = plain_plan(update_expression, expression_attribute_names, expression_attribute_values, reserved)
        table = self.get_table(table_name)
        if plan is None or not _allowed(table, *plan) or not all(k in key for k in table.table_key_attrs):
            return moto()
        item = table.get_item(*self.get_keys_value(table, key))
        if item is None:  # a new item: moto's way
            return moto()
        _apply(table, item, plan)
        return item

    backend_class.update_item = update_item
