"""The OpenSearch adapter's pure logic: field slots, engine documents, query model -> DSL, cursors,
bulk item outcomes, retry delays, the index template. No engine involved."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tenantsearch.errors import InvalidInput
from tenantsearch.search.opensearch_backend import RetryPolicy, classify_item
from tenantsearch.search.opensearch_mapping import (
    MAX_SLOT_FIELDS,
    SNOWBALL,
    TEXT_LANGUAGES,
    TOTAL_FIELDS_LIMIT,
    Rejected,
    analysis_settings,
    check_prefix,
    date_millis,
    docs_template,
    engine_document,
    field_slots,
    tombstone,
)
from tenantsearch.search.opensearch_query import (
    AfterCursor,
    OffsetCursor,
    Scope,
    build_search,
    decode_cursor,
    encode_cursor,
    filter_query,
    query_digest,
    text_query,
)
from tenantsearch.search.port import InvalidCursor
from tenantsearch.search.query import SearchQuery, SortKey, parse_filter, query_words
from tenantsearch.search.schema import LANGUAGES, FieldSpec, FieldType, parse_schema

SCHEMA = parse_schema(
    {
        "title": {"type": "text", "language": "en"},
        "body": {"type": "text", "language": "en"},
        "titre": {"type": "text", "language": "fr"},
        "tag": {"type": "keyword"},
        "color": {"type": "keyword"},
        "n": {"type": "integer"},
        "price": {"type": "float"},
        "at": {"type": "date"},
        "ok": {"type": "boolean"},
    }
)
SLOTS = field_slots(SCHEMA)
SCOPE = Scope("acme", "uid1")


# -- slots and documents -----------------------------------------------------------------------


def test_slots_are_typed_numbered_per_kind_and_stable() -> None:
    assert SLOTS == {
        "at": "f.date_0",
        "body": "f.text_en_0",
        "color": "f.kw_0",
        "n": "f.long_0",
        "ok": "f.bool_0",
        "price": "f.double_0",
        "tag": "f.kw_1",
        "title": "f.text_en_1",
        "titre": "f.text_fr_0",
    }
    # Field names never reach the mapping: another collection's "title" of another type gets a
    # slot of that type, so the two can never conflict.
    assert field_slots(parse_schema({"title": {"type": "keyword"}})) == {"title": "f.kw_0"}


def test_engine_document_types_values_and_keeps_the_source() -> None:
    source = {
        "id": "d1",
        "title": ["Hello", None, "World"],
        "tag": [],
        "color": None,
        "n": 3,
        "price": 2,
        "at": "2024-03-01T10:00:00.123456+02:00",
        "ok": False,
    }

    body = engine_document("acme", "uid1", "d1", source, SCHEMA, SLOTS)

    assert body["doc"] is source
    assert body["_tenant"] == "acme"
    assert body["_collection"] == "uid1"
    assert body["_doc_id"] == "d1"
    assert body["f"] == {
        "text_en_1": ["Hello", "World"],
        "long_0": 3,
        "double_0": 2.0,
        "date_0": date_millis(datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)),
        "bool_0": False,
    }
    assert tombstone("acme", "uid1", "d1", 7) == {
        "_tenant": "acme",
        "_collection": "uid1",
        "_doc_id": "d1",
        "_deleted": True,
        "_tomb_version": 7,
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"nope": 1}, "/nope: unknown field"),
        ({"n": "x"}, "/n: must be an integer"),
        ({"n": 2**63}, "/n: must fit in a signed 64-bit integer"),
        ({"ok": [True]}, "/ok: must be true or false"),
        ({"at": "yesterday"}, "/at: must be an ISO 8601 date or date-time string"),
        ({"price": float("nan")}, "/price: must be a finite number"),
        ({"title": "x", "extra": {1, 2}}, "/extra: unknown field"),
    ],
)
def test_engine_document_refuses_what_the_schema_refuses(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(Rejected, match=message):
        engine_document("acme", "uid1", "d1", document, SCHEMA, SLOTS)


def test_dates_are_milliseconds_rounded_down_also_before_1970() -> None:
    assert date_millis(datetime(1970, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)) == 1
    assert date_millis(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1
    assert date_millis(datetime(2024, 1, 1, tzinfo=UTC)) == 1_704_067_200_000


# -- text --------------------------------------------------------------------------------------


def test_query_words_split_like_the_tokenizer_and_drop_long_words() -> None:
    assert query_words("tag:secret OR x_y *") == ["tag", "secret", "OR", "x", "y"]
    assert query_words("café Café café") == ["café", "Café"]
    assert query_words("a" * 39 + " " + "b" * 40 + " é" * 1) == ["a" * 39, "é"]
    assert query_words("ü" * 20) == []  # 40 UTF-8 bytes


def test_text_query_wants_one_word_ranked_and_every_word_with_all() -> None:
    fields = ["f.text_en_0", "f.text_fr_0"]
    assert text_query("   ", fields) is None
    assert text_query("?!", fields) == {"match_none": {}}
    assert text_query("fox", []) == {"match_none": {}}
    ranked = text_query("quick fox quick", fields)
    assert ranked is not None
    assert ranked["bool"]["minimum_should_match"] == 1
    every = text_query("quick fox quick", fields, "all")
    assert every is not None
    for clauses, zero_terms in ((ranked["bool"]["should"], "none"), (every["bool"]["must"], "all")):
        assert [c["multi_match"]["query"] for c in clauses] == ["quick", "fox"]
        for clause in clauses:
            match = clause["multi_match"]
            assert match["fields"] == fields
            assert match["type"] == "cross_fields"
            assert match["operator"] == "and"
            assert match["zero_terms_query"] == zero_terms
    single = text_query("fox", fields)
    assert single is not None
    assert single["multi_match"]["query"] == "fox"


# -- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "dsl"),
    [
        ({"tag": {"eq": "x"}}, {"term": {"f.kw_1": "x"}}),
        ({"n": {"in": [1, 2]}}, {"terms": {"f.long_0": [1, 2]}}),
        ({"ok": {"eq": True}}, {"term": {"f.bool_0": True}}),
        ({"price": {"gte": 1, "lt": 5}}, {"range": {"f.double_0": {"gte": 1.0, "lt": 5.0}}}),
        (
            {"at": {"gt": "2024-01-01T00:00:00.0005Z"}},
            {"range": {"f.date_0": {"gt": 1_704_067_200_000}}},
        ),
        (
            {"not": {"tag": {"eq": "x"}}},
            {"bool": {"must_not": [{"term": {"f.kw_1": "x"}}]}},
        ),
        (
            {"or": [{"tag": {"eq": "x"}}, {"n": {"lt": 0}}]},
            {
                "bool": {
                    "should": [{"term": {"f.kw_1": "x"}}, {"range": {"f.long_0": {"lt": 0}}}],
                    "minimum_should_match": 1,
                }
            },
        ),
        (
            {"tag": {"eq": "x"}, "color": {"in": ["a"]}},
            {"bool": {"filter": [{"term": {"f.kw_1": "x"}}, {"terms": {"f.kw_0": ["a"]}}]}},
        ),
    ],
)
def test_filters_become_term_range_and_bool_queries(
    raw: dict[str, Any], dsl: dict[str, Any]
) -> None:
    assert filter_query(parse_filter(SCHEMA, raw), SCHEMA, SLOTS) == dsl


def test_every_search_is_scoped_to_the_collection_and_skips_tombstones() -> None:
    plan = build_search(SCOPE, SCHEMA, SLOTS, SearchQuery(text="fox", limit=5))
    query = plan.body["query"]["bool"]
    assert query["filter"][:2] == [
        {"term": {"_tenant": "acme"}},
        {"term": {"_collection": "uid1"}},
    ]
    assert query["must_not"] == [{"term": {"_deleted": True}}]
    assert plan.body["track_total_hits"] is True
    assert plan.body["_source"] == ["doc"]
    assert plan.body["sort"] == [{"_score": {"order": "desc"}}, {"_doc_id": {"order": "asc"}}]
    assert plan.body["from"] == 0
    assert "search_after" not in plan.body


def test_sorted_search_uses_search_after_with_the_id_as_tie_breaker() -> None:
    query = SearchQuery(sort=(SortKey("price", True),), limit=3)
    first = build_search(SCOPE, SCHEMA, SLOTS, query)
    token = encode_cursor(AfterCursor(2.5, "d7", 3), first.digest)

    plan = build_search(SCOPE, SCHEMA, SLOTS, SearchQuery(**{**query.__dict__, "after": token}))

    assert plan.body["sort"] == [
        {"f.double_0": {"order": "desc", "missing": "_last", "unmapped_type": "double"}},
        {"_doc_id": {"order": "asc"}},
    ]
    assert plan.body["search_after"] == [2.5, "d7"]
    assert "from" not in plan.body


def test_facets_and_highlights() -> None:
    plan = build_search(
        SCOPE,
        SCHEMA,
        SLOTS,
        SearchQuery(text="fox", facets=("tag", "color"), facet_size=7, highlight=True),
    )
    assert plan.body["aggs"] == {
        "facet_0": {
            "terms": {"field": "f.kw_1", "size": 7, "order": [{"_count": "desc"}, {"_key": "asc"}]}
        },
        "facet_1": {
            "terms": {"field": "f.kw_0", "size": 7, "order": [{"_count": "desc"}, {"_key": "asc"}]}
        },
    }
    assert plan.facet_names == {"facet_0": "tag", "facet_1": "color"}
    highlight = plan.body["highlight"]
    assert highlight["encoder"] == "html"
    assert (highlight["pre_tags"], highlight["post_tags"]) == (["<em>"], ["</em>"])
    assert set(highlight["fields"]) == {"f.text_en_0", "f.text_en_1", "f.text_fr_0"}
    assert plan.highlight_names["f.text_fr_0"] == "titre"
    # No text: nothing to highlight.
    assert "highlight" not in build_search(SCOPE, SCHEMA, SLOTS, SearchQuery(highlight=True)).body


@pytest.mark.parametrize(
    "query",
    [
        SearchQuery(limit=10_001),
        SearchQuery(sort=(SortKey("title"),)),
        SearchQuery(sort=(SortKey("nope"),)),
        SearchQuery(facets=("n",)),
        SearchQuery(sort=(SortKey("n"), SortKey("price"))),
    ],
)
def test_queries_the_port_does_not_allow_are_invalid_input(query: SearchQuery) -> None:
    with pytest.raises(InvalidInput):
        build_search(SCOPE, SCHEMA, SLOTS, query)


# -- cursors -----------------------------------------------------------------------------------

DIGEST = query_digest(SearchQuery(text="x"))
INT_SPEC = FieldSpec(FieldType.INTEGER)
KW_SPEC = FieldSpec(FieldType.KEYWORD)
FLOAT_SPEC = FieldSpec(FieldType.FLOAT)


def _token(body: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("cursor", "spec"),
    [
        (OffsetCursor(20), None),
        (AfterCursor(5, "d1", 20), INT_SPEC),
        (AfterCursor(None, "d1", 1), KW_SPEC),
        (AfterCursor("Infinity", "d1", 1), FLOAT_SPEC),
        (AfterCursor(-(2**63), "d1", 1), INT_SPEC),
    ],
)
def test_cursors_round_trip(cursor: OffsetCursor | AfterCursor, spec: FieldSpec | None) -> None:
    assert decode_cursor(encode_cursor(cursor, DIGEST), DIGEST, spec) == cursor


@pytest.mark.parametrize(
    ("token", "spec"),
    [
        ("", None),
        ("garbage!", None),
        (_token({"v": 1, "q": DIGEST, "o": 0}), None),
        (_token({"v": 1, "q": DIGEST, "o": True}), None),
        (_token({"v": 1, "q": DIGEST, "o": 10_000}), None),
        (_token({"v": 1, "q": "other", "o": 5}), None),
        (_token({"v": 2, "q": DIGEST, "o": 5}), None),
        (_token({"v": 1, "q": DIGEST, "o": 5, "x": 1}), None),
        (_token({"v": 1, "q": DIGEST, "a": [1, "d1"], "n": 1}), None),
        (_token({"v": 1, "q": DIGEST, "o": 5}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": ["x", "d1"], "n": 1}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": [1.5, "d1"], "n": 1}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": [2**63, "d1"], "n": 1}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": [1, "bad id"], "n": 1}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": [1, "d1"], "n": 0}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": [1, "d1", 3], "n": 1}), INT_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": [{"script": 1}, "d1"], "n": 1}), KW_SPEC),
        (_token({"v": 1, "q": DIGEST, "a": ["NaN", "d1"], "n": 1}), FLOAT_SPEC),
        (_token([1, 2]), None),
        ("x" * 3000, None),
    ],
)
def test_malformed_cursors_are_refused(token: str, spec: FieldSpec | None) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(token, DIGEST, spec)


# -- writes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "outcome"),
    [
        ({"status": 201}, "applied"),
        ({"status": 200}, "applied"),
        ({"status": 409, "error": {"type": "version_conflict_engine_exception"}}, "stale"),
        ({"status": 429, "error": {"type": "es_rejected_execution_exception"}}, "retryable"),
        ({"status": 503, "error": {"type": "unavailable_shards_exception"}}, "retryable"),
        ({"status": 404, "error": {"type": "index_not_found_exception"}}, "retryable"),
        ({"status": 400, "error": {"type": "mapper_parsing_exception"}}, "permanent"),
        ({"status": 400, "error": {"type": "illegal_argument_exception"}}, "permanent"),
        ({}, "retryable"),
    ],
)
def test_bulk_items_are_classified(item: dict[str, Any], outcome: str) -> None:
    result = classify_item("d1", item)
    assert result.outcome == outcome
    if outcome in ("permanent", "retryable"):
        assert result.message
        # Engine-neutral: no engine error type or reason reaches the client.
        assert "exception" not in result.message


def test_retry_delays_grow_and_stay_bounded() -> None:
    policy = RetryPolicy(attempts=5, base_seconds=0.1, max_seconds=0.5)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delay = policy.delay(attempt)
        assert ceiling / 2 <= delay <= ceiling


# -- the index template ------------------------------------------------------------------------


def test_template_is_strict_bounded_and_has_every_language() -> None:
    template = docs_template(["ts-shared-v1-*"], shards=3, replicas=1)
    settings = template["template"]["settings"]["index"]
    mappings = template["template"]["mappings"]
    assert (settings["number_of_shards"], settings["number_of_replicas"]) == (3, 1)
    assert settings["mapping"]["total_fields"]["limit"] == TOTAL_FIELDS_LIMIT > MAX_SLOT_FIELDS
    assert settings["mapping"]["depth"]["limit"] == 3
    assert mappings["dynamic"] == "strict"
    assert mappings["properties"]["f"]["dynamic"] == "strict_allow_templates"
    assert mappings["properties"]["doc"] == {"type": "object", "enabled": False}
    assert mappings["_source"] == {"excludes": ["f", "_size"]}
    analyzers = analysis_settings()["analyzer"]
    assert set(analyzers) == {f"ts_{lang}" for lang in TEXT_LANGUAGES}
    assert analyzers["ts_none"]["filter"] == ["ts_long", "lowercase", "asciifolding"]
    assert analyzers["ts_de"]["filter"] == ["ts_long", "lowercase", "ts_stem_de", "asciifolding"]
    assert set(SNOWBALL) == set(LANGUAGES)
    assert SNOWBALL["de"] == "German"


@pytest.mark.parametrize("prefix", ["", "TS", "ts-x", "1ts", "a" * 33, "ts*"])
def test_index_prefixes_that_could_overlap_or_be_invalid_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        check_prefix(prefix)
