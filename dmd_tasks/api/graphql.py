"""The GraphQL HTTP endpoint (``dmd api``): the AppSync schema in ``config/schema.graphql``.

Ariadne serves the schema as written (schema-first, so the SDL file is the contract an
AppSync HTTP data source or a client reads), uvicorn is the ASGI server. In front of
GraphQL, a small ASGI layer refuses requests without a valid ``x-api-key`` (AppSync
API_KEY auth), bodies over ``api_max_query_bytes`` (counted as they arrive: a chunked body
has no Content-Length) and WebSocket connections, and tells ``accountProfile`` which accounts
the key may read (``api_account_scopes``). Before graphql-core's rules run, a query's size
is measured with every fragment expanded, each fragment once (``query_cost``): a query over
``api_max_fields`` fields or ``api_max_query_depth`` levels is refused in time linear in its
text, so a kilobyte of fragments spreading each other cannot hold the event loop. Resolvers
run the blocking clients in threads.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ariadne import QueryType, load_schema_from_path, make_executable_schema
from ariadne.asgi import GraphQL
from graphql import DocumentNode, GraphQLError, GraphQLSchema, parse, validate
from graphql.language import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.utilities.type_info import TypeInfo
from graphql.validation.rules import ASTValidationRule

from dmd_tasks.api.accounts import AccountService
from dmd_tasks.api.cached import PREFETCHED, CachedEventDetails
from dmd_tasks.api.errors import InvalidArgument, NotFound, Unavailable
from dmd_tasks.api.event_details import EventDetailsService
from dmd_tasks.clients.accounts import AccountsClient
from dmd_tasks.clients.discovery import DiscoveryClient
from dmd_tasks.infra import logs, tracing
from dmd_tasks.infra.runtime import start_process
from dmd_tasks.infra.settings import CONFIG_DIR, Settings
from dmd_tasks.services import get_services

log = logging.getLogger(__name__)
SCHEMA_PATH = CONFIG_DIR / "schema.graphql"


def query_cost(document: DocumentNode) -> tuple[int, int]:
    """(fields, depth) of a document's operations with every fragment spread expanded, as the
    executor would walk them; each fragment is measured once (memoized), so a chain of fragments
    each spreading the next twice costs its length, not 2**length. A fragment cycle raises
    GraphQLError."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    memo: dict[str, tuple[int, int]] = {}
    visiting: set[str] = set()

    def fragment(name: str) -> tuple[int, int]:
        if name in memo:
            return memo[name]
        if name in visiting:
            raise GraphQLError(f"fragment {name} spreads itself")
        found = fragments.get(name)
        if found is None:
            return 0, 0  # an unknown fragment: the standard rules report it
        visiting.add(name)
        memo[name] = measure(found.selection_set)
        visiting.discard(name)
        return memo[name]

    def measure(selection_set: SelectionSetNode | None) -> tuple[int, int]:
        fields = depth = 0
        for selection in selection_set.selections if selection_set is not None else ():
            if isinstance(selection, FieldNode):
                inner_fields, inner_depth = measure(selection.selection_set)
                fields, depth = fields + 1 + inner_fields, max(depth, 1 + inner_depth)
            elif isinstance(selection, InlineFragmentNode):
                inner_fields, inner_depth = measure(selection.selection_set)
                fields, depth = fields + inner_fields, max(depth, inner_depth)
            elif isinstance(selection, FragmentSpreadNode):
                inner_fields, inner_depth = fragment(selection.name.value)
                fields, depth = fields + inner_fields, max(depth, inner_depth)
        return fields, depth

    total = deepest = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            fields, depth = measure(definition.selection_set)
            total, deepest = total + fields, max(deepest, depth)
    return total, deepest


def limit_errors(document: DocumentNode, max_depth: int, max_fields: int) -> list[GraphQLError]:
    """Why a document is over the limits (none if it is not)."""
    try:
        fields, depth = query_cost(document)
    except GraphQLError as exc:
        return [exc]
    errors = []
    if fields > max_fields:
        errors.append(GraphQLError(f"query selects {fields} fields; at most {max_fields} allowed"))
    if depth > max_depth:
        errors.append(GraphQLError(f"query depth {depth} exceeds the limit of {max_depth}"))
    return errors


#: Errors that answer a client's request as designed; Ariadne would log each with a traceback.
EXPECTED_ERRORS = frozenset({"BadRequest", "NotFound", "UpstreamUnavailable"})


class _ExpectedErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, GraphQLError) and (exc.extensions or {}).get("errorType") in EXPECTED_ERRORS)


logging.getLogger("ariadne").addFilter(_ExpectedErrorFilter())


def build_schema(events: EventDetailsService, accounts: AccountService, executor: ThreadPoolExecutor) -> Any:
    query = QueryType()

    async def call(fn: Any, *args: Any) -> Any:
        try:
            with tracing.tracer().start_as_current_span(f"graphql {fn.__self__.__class__.__name__}"):
                return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except InvalidArgument as exc:
            log.info("bad argument: %s", exc)
            raise GraphQLError(str(exc), extensions={"errorType": "BadRequest"}) from None
        except NotFound as exc:
            raise GraphQLError(str(exc), extensions={"errorType": "NotFound"}) from None
        except Unavailable as exc:
            raise GraphQLError(str(exc), extensions={"errorType": "UpstreamUnavailable"}) from None

    @query.field("eventDetails")
    async def resolve_event_details(_: Any, info: Any, eventId: str) -> dict[str, Any]:
        prefetched = info.context.get(PREFETCHED) if isinstance(info.context, dict) else None
        if prefetched is not None and eventId in prefetched:
            return prefetched[eventId]  # the cache-hit path read the copy already (dmd_tasks.api.cached)
        return await call(events.get, eventId)

    @query.field("accountProfile")
    async def resolve_account_profile(_: Any, info: Any, accountId: str) -> dict[str, Any]:
        request = info.context.get("request") if isinstance(info.context, dict) else None
        scope = getattr(request, "scope", {}).get(ACCOUNTS_IN_SCOPE, frozenset())
        if scope is not None and accountId not in scope:
            # the same answer for an account outside the key's scope and one that does not exist
            raise GraphQLError(
                "this API key may not read that account", extensions={"errorType": "UnauthorizedException"}
            )
        return await call(accounts.get, accountId)

    return make_executable_schema(load_schema_from_path(str(SCHEMA_PATH)), query)


class QueryCache:
    """Parse and validate each distinct query text once (clients send the same few queries).

    A profile of cached ``eventDetails`` requests showed validation at 70 % of a request's
    CPU. Validation is a function of the schema, the rules and the document, all fixed per
    query text here, so its result is kept with the parsed document (bounded, least
    recently used first out). Parse errors are not kept.
    """

    def __init__(self, size: int = 512, max_depth: int = 6, max_fields: int = 60) -> None:
        self._size = size
        self._max_depth, self._max_fields = max_depth, max_fields
        self._documents: OrderedDict[str, Any] = OrderedDict()
        self._errors: dict[int, list[GraphQLError]] = {}  # id(document) → its validation errors

    def parse(self, _context: Any, data: dict[str, Any]) -> Any:
        text = data["query"]
        document = self._documents.get(text)
        if document is not None:
            self._documents.move_to_end(text)
            return document
        document = parse(text)
        self._documents[text] = document
        if len(self._documents) > self._size:
            _, evicted = self._documents.popitem(last=False)
            self._errors.pop(id(evicted), None)
        return document

    def validate(
        self,
        schema: GraphQLSchema,
        document_ast: DocumentNode,
        rules: Collection[type[ASTValidationRule]] | None = None,
        max_errors: int | None = None,
        type_info: TypeInfo | None = None,
    ) -> list[GraphQLError]:
        known = self._errors.get(id(document_ast))
        if known is None:
            # the limits first, in time linear in the document: graphql-core's rules then walk a
            # document of bounded size (a query over them is refused without running them)
            known = limit_errors(document_ast, self._max_depth, self._max_fields) or validate(
                schema, document_ast, rules=rules, max_errors=max_errors
            )  # graphql-core 3.3: no type_info
            # only documents this cache holds (and so keeps alive) may be remembered by id
            if any(d is document_ast for d in reversed(self._documents.values())):
                self._errors[id(document_ast)] = known
        return list(known)


#: Where the gate puts the account ids the request's API key may read (None: every one).
ACCOUNTS_IN_SCOPE = "dmd.accounts"


class ApiKeyGate:
    """ASGI layer before GraphQL: API key, body size, request id. Nothing is resolved for a refused
    request. WebSocket connections (GraphQL subscriptions: the schema has none) are refused."""

    def __init__(self, app: Any, settings: Settings, cached: CachedEventDetails | None = None) -> None:
        self._app = app
        self._cached = cached
        self._keys = [k.get_secret_value().encode() for k in settings.api_keys if k.get_secret_value()]
        scopes = settings.account_scopes()
        self._scopes = {key: scopes.get(key.decode(), frozenset()) for key in self._keys}
        self._max_bytes = settings.api_max_query_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: a 403 to the client
            return
        if scope["type"] != "http":  # lifespan
            await self._app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope.get("path") == "/health":
            await _respond(send, 200, {"ok": True})
            return
        if scope.get("path") != "/graphql":
            await _respond(send, 404, {"errors": [{"message": "not found; the endpoint is /graphql"}]})
            return
        key = headers.get(b"x-api-key", b"")
        matched = next((k for k in self._keys if hmac.compare_digest(key, k)), None)
        if matched is None:
            await _respond(
                send,
                401,
                {
                    "errors": [
                        {"errorType": "UnauthorizedException", "message": "You are not authorized to make this call."}
                    ]
                },
            )
            return
        length = headers.get(b"content-length")
        too_big = {"errors": [{"message": f"request body over {self._max_bytes} bytes"}]}
        if length is not None and length.isdigit() and int(length) > self._max_bytes:
            await _respond(send, 413, too_big)
            return
        # the body read here, bounded however it arrives (a chunked body has no Content-Length)
        body = await _bounded_body(receive, self._max_bytes)
        if body is None:
            await _respond(send, 413, too_big)
            return
        logs.correlation_id.set(headers.get(b"x-request-id", b"").decode()[:64] or f"api-{uuid.uuid4().hex}")
        if self._cached is not None and scope.get("method") == "POST" and _is_json(headers):
            answer = await self._cached.answer(body)
            if answer is not None:
                await _respond_bytes(send, 200, answer)
                return
        await self._app({**scope, ACCOUNTS_IN_SCOPE: self._scopes[matched]}, _replay(body, receive), send)


async def _bounded_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None as soon as it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away: the app sees an empty or partial body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then waits on the connection."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _is_json(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    await _respond_bytes(send, status, json.dumps(body).encode())


async def _respond_bytes(send: Any, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def create_app(settings: Settings | None = None) -> Any:
    services = get_services()
    settings = settings or services.settings
    events = EventDetailsService(settings, services.redis, DiscoveryClient.from_settings(settings))
    accounts = AccountService(settings, services.redis, AccountsClient.from_settings(settings, services.redis))
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="resolver")
    schema = build_schema(events, accounts, executor)
    queries = QueryCache(max_depth=settings.api_max_query_depth, max_fields=settings.api_max_fields)
    graphql_app = GraphQL(
        schema,
        introspection=True,
        debug=False,
        query_parser=queries.parse,
        query_validator=queries.validate,
    )
    cached = CachedEventDetails(schema, queries.parse, queries.validate, settings.redis_url)
    return ApiKeyGate(graphql_app, settings, cached)


def serve(settings: Settings) -> None:
    import uvicorn  # the server only where the API runs

    start_process(settings, "api")
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None, access_log=False)
