"""Cache keys (``tenantsearch.cache.keys``): distinct whenever the answer could differ."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tenantsearch.cache.keys import permissions_digest, search_cache_key

REQUEST: dict[str, Any] = {
    "q": "quick fox",
    "filter": {"and": [{"tag": {"eq": "x"}}, {"price": {"gte": 1, "lt": 5}}]},
    "sort": [{"price": "asc"}],
    "facets": ["tag"],
    "limit": 20,
}
READER = permissions_digest("reader", None, None)


def key(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "tenant": "acme",
        "permissions_digest": READER,
        "collection_uid": "c-1",
        "normalized_request": REQUEST,
        "generation": 0,
    }
    args.update(overrides)
    return search_cache_key(**args)


def test_key_is_deterministic_and_namespaced() -> None:
    first = key()
    assert first == key()
    assert first.startswith("search:v2:acme:g0:")
    assert len(first.rsplit(":", 1)[1]) == 64  # a SHA-256 hex digest


def test_key_order_in_the_request_does_not_matter() -> None:
    shuffled = {
        "limit": 20,
        "facets": ["tag"],
        "sort": [{"price": "asc"}],
        "filter": {"and": [{"tag": {"eq": "x"}}, {"price": {"lt": 5, "gte": 1}}]},
        "q": "quick fox",
    }
    assert list(shuffled) != list(REQUEST)
    assert key(normalized_request=shuffled) == key()


@pytest.mark.parametrize(
    "override",
    [
        {"tenant": "other"},
        {"tenant": "acme:g0"},  # a separator in the tenant cannot forge another key
        {"permissions_digest": permissions_digest("admin", None, None)},
        {"collection_uid": "c-2"},
        {"generation": 1},
        {"normalized_request": {**REQUEST, "q": "quick"}},
        {"normalized_request": {**REQUEST, "sort": [{"price": "desc"}]}},
        {"normalized_request": {**REQUEST, "limit": 21}},
        {"normalized_request": {k: v for k, v in REQUEST.items() if k != "facets"}},
    ],
)
def test_key_changes_with_every_input(override: dict[str, Any]) -> None:
    assert key(**override) != key()


def test_no_collisions_across_tenants_permissions_filters_and_generations() -> None:
    tenants = ["acme", "globex", "acme2", "a:cme", "a%3Acme"]
    digests = [
        permissions_digest(role, collections, row_filter)
        for role in ("admin", "writer", "reader")
        for collections in (None, [], ["books"], ["books", "films"])
        for row_filter in (None, {"tag": {"eq": "public"}}, {"tag": {"eq": "internal"}})
    ]
    assert len(set(digests)) == len(digests)
    requests = [REQUEST, {**REQUEST, "filter": {"tag": {"eq": "y"}}}, {"q": "quick fox"}]
    keys = [
        key(tenant=t, permissions_digest=d, normalized_request=r, generation=g)
        for t, d, r, g in itertools.product(tenants, digests, requests, range(3))
    ]
    assert len(set(keys)) == len(keys)


def test_permissions_digest_ignores_collection_order_and_duplicates() -> None:
    assert permissions_digest("reader", ["b", "a", "b"], None) == permissions_digest(
        "reader", ("a", "b"), None
    )


def test_permissions_digest_tells_all_collections_from_none() -> None:
    assert permissions_digest("reader", None, None) != permissions_digest("reader", [], None)


def test_permissions_digest_depends_on_the_filter_not_its_key_order() -> None:
    one = {"and": [{"tag": {"eq": "x"}}, {"price": {"gte": 1, "lt": 5}}]}
    same = {"and": [{"tag": {"eq": "x"}}, {"price": {"lt": 5, "gte": 1}}]}
    other = {"and": [{"tag": {"eq": "x"}}, {"price": {"gte": 1, "lt": 6}}]}
    assert permissions_digest("reader", None, one) == permissions_digest("reader", None, same)
    assert permissions_digest("reader", None, one) != permissions_digest("reader", None, other)
    assert permissions_digest("reader", None, one) != permissions_digest("reader", None, None)
