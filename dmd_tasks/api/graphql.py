"""The GraphQL HTTP endpoint (``dmd api``): the AppSync schema in ``config/schema.graphql``.

Ariadne serves the schema as written (schema-first, so the SDL file is the contract an
AppSync HTTP data source or a client reads), uvicorn is the ASGI server. In front of
GraphQL, a small ASGI layer refuses requests without a valid ``x-api-key`` (AppSync
API_KEY auth) and bodies over ``api_max_query_bytes``; validation rules bound the query
depth and the number of fields. Resolvers run the blocking clients in threads.
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
from graphql import DocumentNode, GraphQLError, GraphQLSchema, ValidationRule, parse, validate
from graphql.language import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode
from graphql.utilities.type_info import TypeInfo
from graphql.validation.rules import ASTValidationRule

from dmd_tasks.api.accounts import AccountService
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


def _depth(
    selection_set: SelectionSetNode | None, fragments: dict[str, Any], seen: frozenset[str] = frozenset()
) -> int:
    if selection_set is None:
        return 0
    deepest = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            deepest = max(deepest, 1 + _depth(selection.selection_set, fragments, seen))
        elif isinstance(selection, InlineFragmentNode):
            deepest = max(deepest, _depth(selection.selection_set, fragments, seen))
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                deepest = max(deepest, _depth(fragment.selection_set, fragments, seen | {selection.name.value}))
    return deepest


def limits_rule(max_depth: int, max_fields: int) -> type[ValidationRule]:
    class QueryLimits(ValidationRule):
        """Refuses queries nested deeper than ``max_depth`` or selecting more than ``max_fields`` fields."""

        def enter_document(self, node: Any, *_: Any) -> None:
            fragments = {d.name.value: d for d in node.definitions if d.kind == "fragment_definition"}
            fields = sum(1 for _ in _walk_fields(node))
            if fields > max_fields:
                self.report_error(GraphQLError(f"query selects {fields} fields; at most {max_fields} allowed"))
            for definition in node.definitions:
                if definition.kind == "operation_definition":
                    depth = _depth(definition.selection_set, fragments)
                    if depth > max_depth:
                        self.report_error(GraphQLError(f"query depth {depth} exceeds the limit of {max_depth}"))

    return QueryLimits


def _walk_fields(node: Any) -> Any:
    for definition in node.definitions:
        stack = [definition.selection_set]
        while stack:
            current = stack.pop()
            if current is None:
                continue
            for selection in current.selections:
                if isinstance(selection, FieldNode):
                    yield selection
                stack.append(getattr(selection, "selection_set", None))


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
        return await call(events.get, eventId)

    @query.field("accountProfile")
    async def resolve_account_profile(_: Any, info: Any, accountId: str) -> dict[str, Any]:
        return await call(accounts.get, accountId)

    return make_executable_schema(load_schema_from_path(str(SCHEMA_PATH)), query)


class QueryCache:
    """Parse and validate each distinct query text once (clients send the same few queries).

    A profile of cached ``eventDetails`` requests showed validation at 70 % of a request's
    CPU. Validation is a function of the schema, the rules and the document, all fixed per
    query text here, so its result is kept with the parsed document (bounded, least
    recently used first out). Parse errors are not kept.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
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
            known = validate(schema, document_ast, rules=rules, max_errors=max_errors)  # graphql-core 3.3: no type_info
            # only documents this cache holds (and so keeps alive) may be remembered by id
            if any(d is document_ast for d in reversed(self._documents.values())):
                self._errors[id(document_ast)] = known
        return list(known)


class ApiKeyGate:
    """ASGI layer before GraphQL: API key, body size, request id. Nothing is resolved for a refused request."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self._app = app
        self._keys = [k.get_secret_value().encode() for k in settings.api_keys if k.get_secret_value()]
        self._max_bytes = settings.api_max_query_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
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
        if not any(hmac.compare_digest(key, k) for k in self._keys):
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
        if length is not None and length.isdigit() and int(length) > self._max_bytes:
            await _respond(send, 413, {"errors": [{"message": f"request body over {self._max_bytes} bytes"}]})
            return
        logs.correlation_id.set(headers.get(b"x-request-id", b"").decode()[:64] or f"api-{uuid.uuid4().hex}")
        await self._app(scope, receive, send)


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
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
    queries = QueryCache()
    graphql_app = GraphQL(
        schema,
        validation_rules=[limits_rule(settings.api_max_query_depth, settings.api_max_fields)],
        introspection=True,
        debug=False,
        query_parser=queries.parse,
        query_validator=queries.validate,
    )
    return ApiKeyGate(graphql_app, settings)


def serve(settings: Settings) -> None:
    import uvicorn  # the server only where the API runs

    start_process(settings, "api")
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None, access_log=False)
