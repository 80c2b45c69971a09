"""Translation of the engine-neutral query model (``query.py``) into OpenSearch query DSL, and the
adapter's cursor tokens. Pure functions (no I/O).

Every query this module builds is scoped to one collection: a bool ``filter`` on ``_tenant`` and
``_collection`` and a ``must_not`` on delete tombstones wrap whatever the tenant asked for, and the
tenant's input only ever becomes term values, range bounds and match-query text inside it.

Ordering and cursors:

- Sorted by a field: ``[slot, _doc_id]`` with ``search_after``. The token holds the last hit's two
  sort values and how many hits came before, so paging is stable even while documents change.
- By relevance: ``[_score desc, _doc_id asc]`` with ``from``. An absolute score in a cursor is not
  safe here: BM25 statistics are per shard, and in a shared index other tenants' writes and
  segment merges shift every score between two page requests (a ``search_after`` on the old score
  would then skip or repeat hits). An offset only depends on the order of this collection's hits,
  which such shifts keep. Relevance paging therefore stops at ``MAX_RESULT_WINDOW``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

import orjson

from tenantsearch.errors import FieldError, InvalidInput
from tenantsearch.search.opensearch_mapping import (
    COLLECTION_FIELD,
    DELETED_FIELD,
    DOC_ID_FIELD,
    SOURCE_OBJECT,
    TENANT_FIELD,
    engine_value,
    unmapped_type,
)
from tenantsearch.search.port import InvalidCursor
from tenantsearch.search.query import (
    And,
    Eq,
    Filter,
    In,
    Matching,
    Not,
    Or,
    Range,
    SearchQuery,
    query_words,
)
from tenantsearch.search.schema import (
    DOCUMENT_ID_RE,
    FILTERABLE,
    CollectionSchema,
    FieldSpec,
    FieldType,
    coerce_value,
)

MAX_LIMIT = 10_000
MAX_RESULT_WINDOW = 10_000
"""OpenSearch's default ``index.max_result_window``: ``from + size`` of a relevance page."""
HIGHLIGHT_FRAGMENT_CHARS = 150
HIGHLIGHT_MAX_ANALYZED_CHARS = 1_000_000
"""Highlighting looks at this many characters of a value (beyond: not highlighted, no error)."""
_CURSOR_VERSION = 1
_MAX_CURSOR_CHARS = 2048
_NUMERIC = frozenset({FieldType.INTEGER, FieldType.FLOAT, FieldType.DATE})
_KEYWORD = frozenset({FieldType.KEYWORD})


@dataclass(frozen=True)
class Scope:
    """Where one collection's documents are: its tenant and uid (the hidden fields)."""

    tenant: str
    uid: str


def scope_filters(scope: Scope) -> list[dict[str, Any]]:
    return [
        {"term": {TENANT_FIELD: scope.tenant}},
        {"term": {COLLECTION_FIELD: scope.uid}},
    ]


def live_query(scope: Scope, *extra_filters: dict[str, Any]) -> dict[str, Any]:
    """Every live (not deleted) document of one collection, narrowed by ``extra_filters``."""
    return {
        "bool": {
            "filter": [*scope_filters(scope), *extra_filters],
            "must_not": [{"term": {DELETED_FIELD: True}}],
        }
    }


# -- text --------------------------------------------------------------------------------------


def text_query(
    text: str, text_fields: Sequence[str], matching: Matching = "ranked"
) -> dict[str, Any] | None:
    """The words' query (``SearchQuery.matching``): with ``all`` every word must match some text
    field, with ``ranked`` at least one, scores summed over the words that match (a ``bool``
    ``should``, as Tantivy's); None for empty text (everything matches).

    One ``multi_match`` per word: ``cross_fields`` treats the fields that share an analyzer as one
    field (so term statistics are blended), and a word that matches in any analyzer group counts.
    A single ``cross_fields`` over all words would instead require all words within one analyzer
    group, which differs from the embedded engine when a collection mixes languages. The text is
    never parsed as query syntax (no ``query_string``), so ``tag:x``, ``OR`` and ``*`` are words.
    """
    if not text.strip():
        return None
    words = query_words(text)
    if not words or not text_fields:
        return {"match_none": {}}
    clauses = [
        {
            "multi_match": {
                "query": word,
                "fields": list(text_fields),
                "type": "cross_fields",
                "operator": "and",
                # A word the analyzers reduce to nothing is skipped, like in the embedded engine
                # (with ``ranked`` it selects nothing, so it adds no document).
                "zero_terms_query": "all" if matching == "all" else "none",
            }
        }
        for word in words
    ]
    if len(clauses) == 1:
        return clauses[0]
    if matching == "all":
        return {"bool": {"must": clauses}}
    return {"bool": {"should": clauses, "minimum_should_match": 1}}


# -- filters -----------------------------------------------------------------------------------


def _spec(schema: CollectionSchema, name: str, types: frozenset[FieldType], path: str) -> FieldSpec:
    spec = schema.fields.get(name)
    if spec is None or spec.type not in types:
        raise InvalidInput(
            f"'{name}' is not a field this operation applies to",
            errors=[FieldError(f"{path}/{name}", "not applicable to this field")],
        )
    return spec


def _term(spec: FieldSpec, value: Any) -> Any:
    """A filter value as the engine indexes it (values in the model are normally typed already)."""
    if not (spec.type is FieldType.DATE and isinstance(value, datetime)):
        try:
            value = coerce_value(spec, value)
        except ValueError as exc:
            raise InvalidInput(
                f"a filter value does not fit field type '{spec.type.value}'",
                errors=[FieldError("/filter", str(exc))],
            ) from exc
    return engine_value(spec, value)


def filter_query(
    node: Filter, schema: CollectionSchema, slots: Mapping[str, str]
) -> dict[str, Any]:
    match node:
        case Eq(field=name, value=value):
            spec = _spec(schema, name, FILTERABLE, "/filter")
            return {"term": {slots[name]: _term(spec, value)}}
        case In(field=name, values=values):
            spec = _spec(schema, name, FILTERABLE, "/filter")
            if not values:
                return {"match_none": {}}
            return {"terms": {slots[name]: [_term(spec, v) for v in values]}}
        case Range(field=name):
            spec = _spec(schema, name, _NUMERIC, "/filter")
            bounds = {
                op: _term(spec, value)
                for op, value in (
                    ("gt", node.gt),
                    ("gte", node.gte),
                    ("lt", node.lt),
                    ("lte", node.lte),
                )
                if value is not None
            }
            if not bounds:
                return {"exists": {"field": slots[name]}}
            return {"range": {slots[name]: bounds}}
        case And(clauses=clauses):
            if not clauses:
                return {"match_all": {}}
            return {"bool": {"filter": [filter_query(c, schema, slots) for c in clauses]}}
        case Or(clauses=clauses):
            if not clauses:
                return {"match_none": {}}
            return {
                "bool": {
                    "should": [filter_query(c, schema, slots) for c in clauses],
                    "minimum_should_match": 1,
                }
            }
        case Not(clause=clause):
            return {"bool": {"must_not": [filter_query(clause, schema, slots)]}}
    raise InvalidInput("unknown filter")  # pragma: no cover - the match is exhaustive


# -- cursors -----------------------------------------------------------------------------------


def query_digest(query: SearchQuery) -> str:
    """Names "the same search" across pages (the dataclasses' reprs are deterministic)."""
    key = repr((query.text, query.matching, query.filter, query.sort)).encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


@dataclass(frozen=True)
class OffsetCursor:
    offset: int


@dataclass(frozen=True)
class AfterCursor:
    """The last hit's sort values (the field's, then its id) and how many hits came before."""

    value: Any
    doc_id: str
    seen: int


Cursor = OffsetCursor | AfterCursor


def encode_cursor(cursor: Cursor, digest: str) -> str:
    body: dict[str, Any] = {"v": _CURSOR_VERSION, "q": digest}
    if isinstance(cursor, OffsetCursor):
        body["o"] = cursor.offset
    else:
        body["a"] = [cursor.value, cursor.doc_id]
        body["n"] = cursor.seen
    return base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_sort_value(spec: FieldSpec, value: Any) -> bool:
    match spec.type:
        case FieldType.KEYWORD:
            # A document without the field sorts with a null value.
            return value is None or isinstance(value, str)
        case FieldType.INTEGER | FieldType.DATE | FieldType.BOOLEAN:
            # Missing values sort as Long.MAX_VALUE / MIN_VALUE; booleans as 0 / 1.
            return _is_int(value) and -(2**63) <= value < 2**63
        case FieldType.FLOAT:
            # Missing doubles sort as +-Infinity, which OpenSearch writes as a JSON string.
            if value in ("Infinity", "-Infinity"):
                return True
            return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    return False


def decode_cursor(token: str, digest: str, sort_spec: FieldSpec | None) -> Cursor:
    """The cursor in ``token`` for a query with ``digest``; InvalidCursor for anything else."""
    if not isinstance(token, str) or not token or len(token) > _MAX_CURSOR_CHARS:
        raise InvalidCursor()
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidCursor() from exc
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION or data.get("q") != digest:
        raise InvalidCursor()
    if sort_spec is None:
        offset = data.get("o")
        if (
            set(data) != {"v", "q", "o"}
            or not _is_int(offset)
            or not 1 <= offset < MAX_RESULT_WINDOW
        ):
            raise InvalidCursor()
        return OffsetCursor(offset)
    after, seen = data.get("a"), data.get("n")
    if (
        set(data) != {"v", "q", "a", "n"}
        or not isinstance(after, list)
        or len(after) != 2
        or not _is_int(seen)
        or seen < 1
    ):
        raise InvalidCursor()
    value, doc_id = after
    if not isinstance(doc_id, str) or not DOCUMENT_ID_RE.match(doc_id):
        raise InvalidCursor()
    if not _valid_sort_value(sort_spec, value):
        raise InvalidCursor()
    return AfterCursor(value, doc_id, seen)


# -- the whole request -------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """One search request body, and what is needed to read its answer."""

    body: dict[str, Any]
    digest: str
    cursor: Cursor | None
    sort_spec: FieldSpec | None
    facet_names: Mapping[str, str]
    """Aggregation name -> facet (field) name."""
    highlight_names: Mapping[str, str]
    """Engine field path -> field name."""


def check_query(schema: CollectionSchema, query: SearchQuery) -> FieldSpec | None:
    """Refuse what the port does not allow; returns the sort field's spec (None: relevance)."""
    if not 0 <= query.limit <= MAX_LIMIT:
        raise InvalidInput(
            f"limit must be between 0 and {MAX_LIMIT}",
            errors=[FieldError("/limit", "out of range")],
        )
    if len(query.sort) > 1:
        raise InvalidInput("at most one sort key", errors=[FieldError("/sort", "at most one key")])
    for name in query.facets:
        _spec(schema, name, _KEYWORD, "/facets")
    if not query.sort:
        return None
    return _spec(schema, query.sort[0].field, FILTERABLE, "/sort")


def build_search(
    scope: Scope, schema: CollectionSchema, slots: Mapping[str, str], query: SearchQuery
) -> SearchPlan:
    sort_spec = check_query(schema, query)
    digest = query_digest(query)
    cursor = None if query.after is None else decode_cursor(query.after, digest, sort_spec)
    text_fields = [slots[name] for name in schema.text_fields()]

    filters = [] if query.filter is None else [filter_query(query.filter, schema, slots)]
    engine_query = live_query(scope, *filters)
    text = text_query(query.text, text_fields, query.matching)
    if text is not None:
        engine_query["bool"]["must"] = [text]

    body: dict[str, Any] = {
        "query": engine_query,
        "size": query.limit,
        "track_total_hits": True,
        "_source": [SOURCE_OBJECT],
    }
    if sort_spec is None:
        body["sort"] = [{"_score": {"order": "desc"}}, {DOC_ID_FIELD: {"order": "asc"}}]
        offset = cursor.offset if isinstance(cursor, OffsetCursor) else 0
        body["from"] = offset
        body["size"] = max(0, min(query.limit, MAX_RESULT_WINDOW - offset))
    else:
        key = query.sort[0]
        order = "desc" if key.descending else "asc"
        body["sort"] = [
            {
                slots[key.field]: {
                    "order": order,
                    "missing": "_last",
                    "unmapped_type": unmapped_type(sort_spec),
                }
            },
            {DOC_ID_FIELD: {"order": "asc"}},
        ]
        if isinstance(cursor, AfterCursor):
            body["search_after"] = [cursor.value, cursor.doc_id]

    facet_names: dict[str, str] = {}
    if query.facets and query.facet_size > 0:
        aggs: dict[str, Any] = {}
        for i, name in enumerate(query.facets):
            agg = f"facet_{i}"
            facet_names[agg] = name
            aggs[agg] = {
                "terms": {
                    "field": slots[name],
                    "size": query.facet_size,
                    "order": [{"_count": "desc"}, {"_key": "asc"}],
                }
            }
        body["aggs"] = aggs

    highlight_names: dict[str, str] = {}
    if query.highlight and text is not None and text_fields and query.limit > 0:
        highlight_names = {slots[name]: name for name in schema.text_fields()}
        body["highlight"] = {
            "type": "unified",
            "encoder": "html",
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
            "fragment_size": HIGHLIGHT_FRAGMENT_CHARS,
            "number_of_fragments": 5,
            "no_match_size": 0,
            "max_analyzer_offset": HIGHLIGHT_MAX_ANALYZED_CHARS,
            "fields": {path: {} for path in highlight_names},
        }
    return SearchPlan(
        body=body,
        digest=digest,
        cursor=cursor,
        sort_spec=sort_spec,
        facet_names=facet_names,
        highlight_names=highlight_names,
    )
