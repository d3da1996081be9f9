"""The API parses and validates each distinct query text once, and answers the same every time."""

from __future__ import annotations

import asyncio
import time

from ariadne import load_schema_from_path, make_executable_schema
from graphql import parse, specified_rules

from dmd_tasks.api.graphql import ACCOUNTS_IN_SCOPE, SCHEMA_PATH, ApiKeyGate, QueryCache, query_cost
from dmd_tasks.infra.settings import load_settings

SCHEMA = make_executable_schema(load_schema_from_path(str(SCHEMA_PATH)))
RULES = tuple(specified_rules)
GOOD = '{ eventDetails(eventId: "e1") { id name } }'
BAD = '{ eventDetails(eventId: "e1") { id nosuchfield } }'


def test_the_same_text_is_parsed_once_and_its_errors_are_the_same_every_time() -> None:
    cache = QueryCache()
    good = cache.parse(None, {"query": GOOD})
    assert cache.parse(None, {"query": GOOD}) is good
    assert cache.validate(SCHEMA, good, rules=RULES) == []
    bad = cache.parse(None, {"query": BAD})
    first = cache.validate(SCHEMA, bad, rules=RULES)
    second = cache.validate(SCHEMA, bad, rules=RULES)
    assert len(first) == 1 and "nosuchfield" in first[0].message
    assert [e.message for e in second] == [e.message for e in first]


def test_the_cache_is_bounded_and_forgets_the_errors_of_what_it_evicts() -> None:
    cache = QueryCache(size=2)
    texts = [f'{{ eventDetails(eventId: "e{i}") {{ id }} }}' for i in range(3)]
    documents = [cache.parse(None, {"query": t}) for t in texts]
    for document in documents[1:]:
        cache.validate(SCHEMA, document, rules=RULES)
    assert cache.parse(None, {"query": texts[0]}) is not documents[0]  # evicted, parsed again
    assert len(cache._documents) == 2 and len(cache._errors) <= 2
    # a document the cache does not hold is validated, not remembered by id
    assert cache.validate(SCHEMA, documents[0], rules=RULES) == []
    assert id(documents[0]) not in cache._errors


def fragment_chain(length: int) -> str:
    """Fragments each spreading the next twice: under 1 KB of text, 2**length fields expanded."""
    fragments = [f"fragment F{length} on EventDetails{{id name}}"]
    fragments += [f"fragment F{i} on EventDetails{{...F{i + 1} ...F{i + 1}}}" for i in range(length - 1, -1, -1)]
    return '{eventDetails(eventId:"1"){...F0}}' + "".join(fragments)


def test_a_chain_of_fragments_is_measured_in_linear_time_and_refused() -> None:
    text = fragment_chain(25)
    assert len(text) < 1200  # about a kilobyte of text
    started = time.perf_counter()
    assert query_cost(parse(text)) == (1 + 2 * 2**25, 2)
    errors = QueryCache().validate(SCHEMA, QueryCache().parse(None, {"query": text}), rules=RULES)
    assert time.perf_counter() - started < 0.5
    assert [e.message for e in errors] == [f"query selects {1 + 2 * 2**25} fields; at most 60 allowed"]


def test_fields_in_fragments_count_and_depth_follows_them() -> None:
    spread = (
        '{ eventDetails(eventId: "1") { ...A } } '
        "fragment A on EventDetails { venue { name city } sales { presales { name } } }"
    )
    assert query_cost(parse(spread)) == (7, 4)  # eventDetails venue name city sales presales name
    cyclic = (
        '{ eventDetails(eventId: "1") { ...A } } '
        "fragment A on EventDetails { ...B } fragment B on EventDetails { ...A }"
    )
    errors = QueryCache().validate(SCHEMA, parse(cyclic), rules=RULES)
    assert errors and "spreads itself" in errors[0].message


def run_gate(gate: ApiKeyGate, scope: dict, messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """Call the gate as a server would; returns (what it sent, the scopes its app was called with)."""
    sent: list[dict] = []
    incoming = iter(messages)

    async def receive() -> dict:
        return next(incoming, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(app_scope: dict, app_receive, app_send) -> None:
        seen.append({**app_scope, "body": (await app_receive()).get("body")})
        await app_send({"type": "http.response.start", "status": 200, "headers": []})

    seen: list[dict] = []
    gate._app = app
    asyncio.run(gate(scope, receive, send))
    return sent, seen


def gate(**settings: object) -> ApiKeyGate:
    return ApiKeyGate(None, load_settings(api_keys=["k1", "k2"], **settings))


def http(key: str, headers: list | None = None) -> dict:
    return {"type": "http", "path": "/graphql", "headers": [(b"x-api-key", key.encode()), *(headers or [])]}


def test_the_gate_refuses_websockets_and_bodies_over_the_limit_however_they_arrive() -> None:
    sent, seen = run_gate(
        gate(), {"type": "websocket", "path": "/graphql", "headers": []}, [{"type": "websocket.connect"}]
    )
    assert sent == [{"type": "websocket.close", "code": 1008}] and seen == []
    chunks = [{"type": "http.request", "body": b"x" * 5000, "more_body": True}] * 2
    sent, seen = run_gate(gate(api_max_query_bytes=8192), http("k1"), chunks)
    assert sent[0]["status"] == 413 and seen == []
    small = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]
    sent, seen = run_gate(gate(), http("k1"), small)  # type: ignore[arg-type]
    assert seen[0]["body"] == b"abc"  # the app reads the body the gate already read


def test_the_gate_tells_the_resolvers_which_accounts_the_key_may_read() -> None:
    scoped = gate(api_account_scopes='{"k1": "*", "k2": ["a1", "a2"]}')
    _, seen = run_gate(scoped, http("k1"), [{"type": "http.request", "body": b"{}"}])
    assert seen[0][ACCOUNTS_IN_SCOPE] is None  # every account
    _, seen = run_gate(scoped, http("k2"), [{"type": "http.request", "body": b"{}"}])
    assert seen[0][ACCOUNTS_IN_SCOPE] == frozenset({"a1", "a2"})
    _, seen = run_gate(gate(), http("k2"), [{"type": "http.request", "body": b"{}"}])
    assert seen[0][ACCOUNTS_IN_SCOPE] == frozenset()  # not named: no account
    sent, seen = run_gate(scoped, http("nope"), [])
    assert sent[0]["status"] == 401 and seen == []


def test_the_cached_path_takes_only_plain_event_details_queries() -> None:
    from dmd_tasks.api.cached import plan_for

    by_variable = plan_for(
        parse("query Q($e: ID!) { ev: eventDetails(eventId: $e) { id venue { ...V } } } fragment V on Venue { name }")
    )
    assert by_variable is not None and (by_variable.variable, by_variable.operation_name) == ("e", "Q")
    literal = plan_for(parse('{ eventDetails(eventId: "e1") { id } }'))
    assert literal is not None and literal.literal_id == "e1" and literal.variable is None
    for text in (
        '{ eventDetails(eventId: "e1") { id name @include(if: false) } }',  # answer depends on more than the id
        '{ eventDetails(eventId: "e1") { id } accountProfile(accountId: "a") { id } }',
        '{ accountProfile(accountId: "a") { id } }',
        '{ ...Q } fragment Q on Query { eventDetails(eventId: "e1") { id } }',
        'query A { eventDetails(eventId: "e1") { id } } query B { eventDetails(eventId: "e2") { id } }',
        "{ eventDetails(eventId: 12) { id } }",
    ):
        assert plan_for(parse(text)) is None, text
