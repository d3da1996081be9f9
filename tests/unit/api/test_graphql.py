"""The API parses and validates each distinct query text once, and answers the same every time."""

from __future__ import annotations

from ariadne import load_schema_from_path, make_executable_schema
from graphql import specified_rules

from dmd_tasks.api.graphql import SCHEMA_PATH, QueryCache, limits_rule

SCHEMA = make_executable_schema(load_schema_from_path(str(SCHEMA_PATH)))
RULES = (*specified_rules, limits_rule(6, 60))
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
