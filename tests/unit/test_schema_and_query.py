"""Schema and query parsing: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tenantsearch.search.query import And, Eq, FilterErrors, In, Not, Or, Range, parse_filter
from tenantsearch.search.schema import (
    CollectionSchema,
    FieldSpec,
    FieldType,
    SchemaErrors,
    normalize_document_id,
    parse_date,
    parse_schema,
    validate_document,
)

SCHEMA = parse_schema(
    {
        "title": {"type": "text", "language": "en"},
        "tag": {"type": "keyword"},
        "n": {"type": "integer"},
        "price": {"type": "float"},
        "at": {"type": "date"},
        "ok": {"type": "boolean"},
    }
)


def test_schema_round_trip_and_defaults() -> None:
    assert SCHEMA.fields["title"] == FieldSpec(FieldType.TEXT, "en")
    assert parse_schema({"t": {"type": "text"}}).fields["t"].language == "none"
    assert CollectionSchema.from_dict(SCHEMA.as_dict()) == SCHEMA


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"_x": {"type": "keyword"}}, "/fields/_x"),
        ({"id": {"type": "keyword"}}, "/fields/id"),
        ({"a": {"type": "blob"}}, "/fields/a/type"),
        ({"a": {"type": "keyword", "language": "en"}}, "/fields/a/language"),
        ({"a": {"type": "text", "language": "klingon"}}, "/fields/a/language"),
        ({"a": "keyword"}, "/fields/a"),
        ({f"f{i}": {"type": "keyword"} for i in range(101)}, "/fields"),
    ],
)
def test_bad_schemas_name_the_path(fields: dict[str, object], path: str) -> None:
    with pytest.raises(SchemaErrors) as info:
        parse_schema(fields)
    assert path in {e.path for e in info.value.errors}


def test_document_validation() -> None:
    assert (
        validate_document(
            SCHEMA,
            {
                "id": "1",
                "title": "x",
                "tag": ["a", "b"],
                "n": 3,
                "price": 2,
                "at": "2024-01-01",
                "ok": True,
            },
        )
        == []
    )
    errors = validate_document(SCHEMA, {"n": 1.5, "ok": "yes", "tag": ["a", 2], "zzz": 1})
    assert {e.path for e in errors} == {"/n", "/ok", "/tag/1", "/zzz"}
    assert validate_document(SCHEMA, {"n": True}) != []  # a boolean is not an integer
    assert validate_document(SCHEMA, {"n": 2**63}) != []
    assert validate_document(SCHEMA, {"price": float("nan")}) != []


def test_dates() -> None:
    assert parse_date("2024-02-03") == datetime(2024, 2, 3, tzinfo=UTC)
    assert parse_date("2024-02-03T04:05:06+02:00") == datetime(2024, 2, 3, 2, 5, 6, tzinfo=UTC)
    assert parse_date("2024-02-03T04:05:06") == datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert parse_date("03/02/2024") is None
    assert parse_date(20240203) is None


def test_document_ids() -> None:
    assert normalize_document_id(42) == "42"
    assert normalize_document_id("a.b:c@d-e_f") == "a.b:c@d-e_f"
    for bad in ("", "a b", "x" * 257, True, None, "../etc", "a/b"):
        assert normalize_document_id(bad) is None


def test_filters_parse_into_the_model() -> None:
    f = parse_filter(
        SCHEMA,
        {
            "and": [{"tag": {"in": ["a", "b"]}}, {"not": {"ok": {"eq": False}}}],
            "or": [{"n": {"gte": 1, "lt": 5}}, {"at": {"gt": "2024-01-01"}}],
        },
    )
    assert f == And(
        (
            And((In("tag", ("a", "b")), Not(Eq("ok", False)))),
            Or((Range("n", gte=1, lt=5), Range("at", gt=datetime(2024, 1, 1, tzinfo=UTC)))),
        )
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"title": {"eq": "x"}},
        {"tag": {"regex": ".*"}},
        {"tag": {"gt": "a"}},
        {"n": {"gt": 1, "gte": 2}},
        {"n": {"in": []}},
        {"script": {"source": "1"}},
        {"and": {}},
        {},
        [],
    ],
)
def test_bad_filters(raw: object) -> None:
    with pytest.raises(FilterErrors):
        parse_filter(SCHEMA, raw)


def test_filter_depth_is_bounded() -> None:
    raw: dict[str, object] = {"tag": {"eq": "a"}}
    for _ in range(20):
        raw = {"not": raw}
    with pytest.raises(FilterErrors):
        parse_filter(SCHEMA, raw)
