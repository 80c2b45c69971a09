"""The in-Python filter evaluation agrees with the engines' semantics."""

from __future__ import annotations

from typing import Any

import pytest

from tenantsearch.search.matching import matches
from tenantsearch.search.query import parse_filter
from tenantsearch.search.schema import parse_schema

SCHEMA = parse_schema(
    {
        "owner": {"type": "keyword"},
        "n": {"type": "integer"},
        "at": {"type": "date"},
        "ok": {"type": "boolean"},
    }
)


@pytest.mark.parametrize(
    ("raw", "doc", "expected"),
    [
        ({"owner": {"eq": "u1"}}, {"owner": "u1"}, True),
        ({"owner": {"eq": "u1"}}, {"owner": "U1"}, False),
        ({"owner": {"eq": "u1"}}, {"owner": ["u2", "u1"]}, True),
        ({"owner": {"eq": "u1"}}, {}, False),
        ({"not": {"owner": {"eq": "u1"}}}, {}, True),
        ({"owner": {"in": ["a", "b"]}}, {"owner": "b"}, True),
        ({"n": {"gte": 2, "lt": 5}}, {"n": 5}, False),
        ({"n": {"gte": 2, "lt": 5}}, {"n": [1, 3]}, True),
        ({"at": {"gt": "2024-01-01"}}, {"at": "2024-01-01T00:00:01Z"}, True),
        ({"at": {"gt": "2024-01-01"}}, {"at": "2023-12-31T23:00:00-02:00"}, True),
        ({"ok": {"eq": False}}, {"ok": False}, True),
        ({"or": [{"owner": {"eq": "x"}}, {"n": {"eq": 3}}]}, {"n": 3}, True),
        ({"and": [{"owner": {"eq": "x"}}, {"n": {"eq": 3}}]}, {"n": 3}, False),
    ],
)
def test_matches(raw: dict[str, Any], doc: dict[str, Any], expected: bool) -> None:
    assert matches(parse_filter(SCHEMA, raw), SCHEMA, doc) is expected
