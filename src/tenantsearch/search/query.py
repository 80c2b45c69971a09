"""The engine-neutral query model, and the parser from the public JSON form into it.

Backends translate these value objects into their own queries; nothing a tenant sends reaches an
engine in any other form, so a tenant can never name an index, an alias, a script or raw engine DSL.
Values in the model are already typed for their field (see :func:`schema.coerce_value`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tenantsearch.errors import FieldError
from tenantsearch.search.schema import FILTERABLE, CollectionSchema, FieldType, coerce_value

MAX_QUERY_WORD_BYTES = 40
"""Query words of this many UTF-8 bytes or more are ignored: no engine indexed them (the embedded
engine drops tokens of 40 bytes or more, OpenSearch's mapping as many characters)."""
_WORD_RE = re.compile(r"[^\W_]+")

MAX_FILTER_DEPTH = 8
MAX_FILTER_CLAUSES = 256
MAX_IN_VALUES = 1024


def query_words(text: str) -> list[str]:
    """Distinct words of free text, the way the index tokenizer splits (runs of letters and
    digits); words too long to have been indexed are left out, as in the embedded engine."""
    words: dict[str, None] = {}
    for word in _WORD_RE.findall(text):
        if len(word.encode()) < MAX_QUERY_WORD_BYTES:
            words.setdefault(word, None)
    return list(words)


@dataclass(frozen=True)
class Eq:
    field: str
    value: Any


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    field: str
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None


@dataclass(frozen=True)
class And:
    clauses: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    clauses: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    clause: Filter


Filter = Eq | In | Range | And | Or | Not

Matching = Literal["ranked", "all"]
"""Which documents a query's words select (``SearchQuery.matching``)."""
MATCHINGS: tuple[Matching, ...] = ("ranked", "all")


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool = False


@dataclass(frozen=True)
class SearchQuery:
    """One page of a search in one collection.

    ``text`` is free text, its words analyzed per text field; empty text matches every document.
    ``matching`` says which documents the words select (docs/relevance.md): ``ranked`` (the
    default), every document where at least one word matches some text field, ranked by BM25
    summed over the words that match (so matching more of the words, and rarer ones, ranks
    higher); ``all``, only documents where every word matches some text field. Without ``sort``,
    hits are ordered by relevance. ``after`` is the backend's own cursor token from the previous
    page's ``next_after`` for the same query.
    """

    text: str = ""
    matching: Matching = "ranked"
    filter: Filter | None = None
    sort: tuple[SortKey, ...] = ()
    facets: tuple[str, ...] = ()
    facet_size: int = 100
    limit: int = 20
    after: str | None = None
    highlight: bool = False


@dataclass(frozen=True)
class Hit:
    id: str
    score: float | None
    document: dict[str, Any]
    highlights: dict[str, list[str]] | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    total: int
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    next_after: str | None = None


@dataclass(frozen=True)
class WriteOp:
    """Put (``document`` given) or delete (``document`` None) one document at one version.

    Versions are assigned when the write is accepted and only grow; a backend applies an op only if
    its version is higher than the one it holds for that id (deletes leave a versioned tombstone),
    so a redelivered or reordered older op never overwrites a newer one.
    """

    id: str
    version: int
    document: Mapping[str, Any] | None


WriteOutcome = Literal["applied", "stale", "retryable", "permanent"]


@dataclass(frozen=True)
class WriteResult:
    id: str
    outcome: WriteOutcome
    message: str | None = None


class FilterErrors(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


_RANGE_OPS = ("gt", "gte", "lt", "lte")
_FIELD_OPS = frozenset({"eq", "in", *_RANGE_OPS})


def parse_filter(schema: CollectionSchema, raw: Any, path: str = "/filter") -> Filter:
    """The public JSON filter as the model, every field and value checked against ``schema``.

    Forms: ``{"f": {"eq": v}}``, ``{"f": {"in": [..]}}``, ``{"f": {"gte": a, "lt": b}}``,
    ``{"and": [..]}``, ``{"or": [..]}``, ``{"not": {..}}``; several keys in one object: ``and``.
    """
    counter = [0]
    return _parse(schema, raw, path, 0, counter)


def _parse(schema: CollectionSchema, raw: Any, path: str, depth: int, counter: list[int]) -> Filter:
    counter[0] += 1
    if counter[0] > MAX_FILTER_CLAUSES:
        raise FilterErrors([FieldError(path, f"at most {MAX_FILTER_CLAUSES} filter clauses")])
    if depth > MAX_FILTER_DEPTH:
        raise FilterErrors([FieldError(path, f"filters nest at most {MAX_FILTER_DEPTH} deep")])
    if not isinstance(raw, dict) or not raw:
        raise FilterErrors([FieldError(path, "a filter is a non-empty object")])
    clauses: list[Filter] = []
    for key, value in raw.items():
        here = f"{path}/{key}"
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise FilterErrors([FieldError(here, f"'{key}' takes a non-empty list of filters")])
            children = tuple(
                _parse(schema, item, f"{here}/{i}", depth + 1, counter)
                for i, item in enumerate(value)
            )
            clauses.append(And(children) if key == "and" else Or(children))
        elif key == "not":
            clauses.append(Not(_parse(schema, value, here, depth + 1, counter)))
        else:
            clauses.extend(_parse_field(schema, key, value, here))
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def _parse_field(schema: CollectionSchema, name: str, ops: Any, path: str) -> list[Filter]:
    spec = schema.fields.get(name)
    if spec is None:
        raise FilterErrors([FieldError(path, "unknown field or filter operator")])
    if spec.type not in FILTERABLE:
        raise FilterErrors(
            [FieldError(path, "text fields cannot be filtered; use a keyword field")]
        )
    if not isinstance(ops, dict) or not ops:
        raise FilterErrors([FieldError(path, 'must be an object such as {"eq": value}')])
    unknown = sorted(set(ops) - _FIELD_OPS)
    if unknown:
        raise FilterErrors(
            [FieldError(f"{path}/{unknown[0]}", "unknown operator; use eq, in, gt, gte, lt, lte")]
        )

    def typed(value: Any, here: str) -> Any:
        try:
            return coerce_value(spec, value)
        except ValueError as exc:
            raise FilterErrors([FieldError(here, str(exc))]) from exc

    out: list[Filter] = []
    if "eq" in ops:
        out.append(Eq(name, typed(ops["eq"], f"{path}/eq")))
    if "in" in ops:
        values = ops["in"]
        if not isinstance(values, list) or not values or len(values) > MAX_IN_VALUES:
            raise FilterErrors(
                [FieldError(f"{path}/in", f"takes a list of 1 to {MAX_IN_VALUES} values")]
            )
        out.append(In(name, tuple(typed(v, f"{path}/in/{i}") for i, v in enumerate(values))))
    bounds = {op: ops[op] for op in _RANGE_OPS if op in ops}
    if bounds:
        if spec.type in (FieldType.KEYWORD, FieldType.BOOLEAN):
            raise FilterErrors(
                [FieldError(path, "range operators apply to integer, float and date fields")]
            )
        if ("gt" in bounds and "gte" in bounds) or ("lt" in bounds and "lte" in bounds):
            raise FilterErrors([FieldError(path, "give at most one lower and one upper bound")])
        out.append(Range(name, **{op: typed(v, f"{path}/{op}") for op, v in bounds.items()}))
    return out


def parse_sort(schema: CollectionSchema, raw: Any, path: str = "/sort") -> tuple[SortKey, ...]:
    """``[{"price": "asc"}]``: one key (ties are broken in a stable order the backend picks)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 1:
        raise FilterErrors([FieldError(path, 'a list of at most one {"field": "asc"|"desc"}')])
    keys: list[SortKey] = []
    for i, item in enumerate(raw):
        here = f"{path}/{i}"
        if not isinstance(item, dict) or len(item) != 1:
            raise FilterErrors([FieldError(here, 'must be {"field": "asc"|"desc"}')])
        ((name, direction),) = item.items()
        spec = schema.fields.get(name)
        if spec is None or spec.type not in FILTERABLE:
            raise FilterErrors([FieldError(f"{here}/{name}", "sort on a declared non-text field")])
        if direction not in ("asc", "desc"):
            raise FilterErrors([FieldError(f"{here}/{name}", 'must be "asc" or "desc"')])
        keys.append(SortKey(name, direction == "desc"))
    return tuple(keys)


def parse_facets(
    schema: CollectionSchema, raw: Sequence[str], path: str = "/facets"
) -> tuple[str, ...]:
    for i, name in enumerate(raw):
        spec = schema.fields.get(name)
        if spec is None or spec.type is not FieldType.KEYWORD:
            raise FilterErrors([FieldError(f"{path}/{i}", "facets are counted on keyword fields")])
    return tuple(dict.fromkeys(raw))
