"""The cache-hit path of ``eventDetails``, answered on the event loop.

Most of the API's traffic is the same few ``eventDetails`` queries for events whose copy
is in Redis. Their answer is a pure function of the query text, its variables and the
cached copy's bytes, so this path reads the copy with the asyncio Redis client (no
resolver thread) and keeps, per (query, variables), the last copy's bytes with the
response they made: while Redis holds the same bytes, the same response bytes are sent.
A new copy (a refetch, another ``fetchedAt``) is executed once through the schema, with
the copy already read, and remembered in turn.

Anything else takes the full path (Ariadne, resolvers in threads) and gets its precise
answer or error there: a document with another root field, directives or several
operations, an id that is not a string, a miss, a remembered 404, a Redis error, a result
with errors. Nothing is served that Redis does not hold at the moment it is asked.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from cachetools import LRUCache
from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    VariableNode,
    execute,
)
from graphql.language import Visitor, visit

from dmd_tasks.api.errors import InvalidArgument, check_argument_id
from dmd_tasks.api.event_details import cache_keys
from dmd_tasks.infra import tracing
from dmd_tasks.infra.metrics import CACHE_REQUESTS

log = logging.getLogger(__name__)

#: Where the fast path hands the resolver the copy it has already read (the context's key).
PREFETCHED = "dmd.prefetched"


@dataclass(frozen=True)
class _Plan:
    """How to find the event id of a query that this path can answer."""

    document: DocumentNode
    operation_name: str | None
    literal_id: str | None  # eventId: "…" written in the query
    variable: str | None  # eventId: $var


class _HasDirective(Visitor):
    found = False

    def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
        self.found = True


def plan_for(document: DocumentNode) -> _Plan | None:
    """A plan when the document is one query whose only root field is ``eventDetails`` (alias
    allowed) and that uses no directive (``@skip``/``@include`` would make the answer depend on
    more than the id); None otherwise."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) != 1 or operations[0].operation != OperationType.QUERY:
        return None
    operation = operations[0]
    roots = operation.selection_set.selections
    if len(roots) != 1 or not isinstance(roots[0], FieldNode) or roots[0].name.value != "eventDetails":
        return None
    directives = _HasDirective()
    visit(document, directives)
    if directives.found:
        return None
    arguments = {a.name.value: a.value for a in roots[0].arguments or ()}
    value = arguments.get("eventId")
    name = operation.name.value if operation.name else None
    if isinstance(value, StringValueNode) and len(arguments) == 1:
        return _Plan(document, name, value.value, None)
    if isinstance(value, VariableNode) and len(arguments) == 1:
        return _Plan(document, name, None, value.name.value)
    return None


class CachedEventDetails:
    """Answers cache hits of plain ``eventDetails`` queries; None means "take the full path"."""

    def __init__(
        self,
        schema: GraphQLSchema,
        parse: Any,
        validate: Any,
        redis_url: str,
        *,
        timeout_seconds: float = 5.0,
        size: int = 1024,
    ) -> None:
        self._schema = schema
        self._parse, self._validate = parse, validate
        self._redis_url, self._timeout = redis_url, timeout_seconds
        self._redis: aioredis.Redis | None = None  # made on the serving loop, at first use
        self._plans: LRUCache[str, _Plan | None] = LRUCache(maxsize=size)
        #: (query, operation, variables) → (the copy's bytes, the response made from them)
        self._answers: LRUCache[tuple[str, str | None, str], tuple[bytes, bytes]] = LRUCache(maxsize=size)
        self._hits = CACHE_REQUESTS.labels("event-details", "hit")

    async def answer(self, body: bytes) -> bytes | None:
        request = _request(body)
        if request is None:
            return None
        text, variables, operation_name = request
        plan = self._plan(text)
        if plan is None or (operation_name is not None and operation_name != plan.operation_name):
            return None
        event_id = plan.literal_id if plan.variable is None else variables.get(plan.variable)
        if not isinstance(event_id, str):
            return None
        try:
            check_argument_id(event_id, "eventId")
        except InvalidArgument:
            return None
        raw = await self._copy(event_id)
        if raw is None:
            return None
        with tracing.tracer().start_as_current_span("graphql eventDetails", attributes={"dmd.cache": "hit"}):
            key = (text, operation_name, json.dumps(variables, sort_keys=True) if variables else "")
            known = self._answers.get(key)
            if known is not None and known[0] == raw:
                response: bytes | None = known[1]
            else:
                response = await self._execute(plan, variables, operation_name, event_id, raw)
                if response is None:
                    return None
                self._answers[key] = (raw, response)
            self._hits.inc()
            return response

    def _plan(self, text: str) -> _Plan | None:
        if text in self._plans:
            return self._plans[text]
        try:
            document = self._parse(None, {"query": text})
            plan = None if self._validate(self._schema, document) else plan_for(document)
        except Exception:  # a syntax error: the full path reports it
            plan = None
        self._plans[text] = plan
        return plan

    async def _copy(self, event_id: str) -> bytes | None:
        """The cached copy's bytes; None on a miss, a remembered 404 or any Redis trouble."""
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self._redis_url, socket_timeout=self._timeout, socket_connect_timeout=2
            )
        try:
            fresh, _stale, missing_key, _lock = cache_keys(event_id)
            raw, missing = await self._redis.mget(fresh, missing_key)
        except aioredis.RedisError as exc:
            log.debug("cached eventDetails: redis %s; the full path answers", type(exc).__name__)
            return None
        return None if missing or not isinstance(raw, bytes) or not raw else raw

    async def _execute(
        self, plan: _Plan, variables: dict[str, Any], operation_name: str | None, event_id: str, raw: bytes
    ) -> bytes | None:
        copy = {**json.loads(raw), "stale": False}
        result = execute(
            self._schema,
            plan.document,
            context_value={PREFETCHED: {event_id: copy}},
            variable_values=variables,
            operation_name=operation_name,
        )
        if inspect.isawaitable(result):
            result = await result
        if result.errors or result.extensions:
            return None
        # as the full path encodes it (Starlette's JSONResponse)
        return json.dumps(
            {"data": result.data}, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode()


def _request(body: bytes) -> tuple[str, dict[str, Any], str | None] | None:
    """(query, variables, operationName) of a well-formed GraphQL POST body, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    text, variables, operation_name = data.get("query"), data.get("variables"), data.get("operationName")
    if not isinstance(text, str) or not (variables is None or isinstance(variables, dict)):
        return None
    if not (operation_name is None or isinstance(operation_name, str)):
        return None
    return text, variables or {}, operation_name
