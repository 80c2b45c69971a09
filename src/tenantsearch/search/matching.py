"""Evaluate a filter of the query model against one document, in Python.

Used where a single known document must be checked against a mandatory filter (a tenant token
reading a document by id). The semantics are the engines': a multi-valued field matches when any
of its values does; a missing field matches no ``eq``, ``in`` or range, so ``not`` of one matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantsearch.search.query import And, Eq, Filter, In, Not, Or, Range
from tenantsearch.search.schema import CollectionSchema, field_values


def matches(flt: Filter, schema: CollectionSchema, doc: Mapping[str, Any]) -> bool:
    match flt:
        case And(clauses):
            return all(matches(c, schema, doc) for c in clauses)
        case Or(clauses):
            return any(matches(c, schema, doc) for c in clauses)
        case Not(clause):
            return not matches(clause, schema, doc)
        case Eq(name, value):
            return value in _values(schema, doc, name)
        case In(name, values):
            return any(v in values for v in _values(schema, doc, name))
        case Range(name, gt, gte, lt, lte):
            return any(_in_range(v, gt, gte, lt, lte) for v in _values(schema, doc, name))
    raise AssertionError(flt)  # pragma: no cover - the match is exhaustive


def _values(schema: CollectionSchema, doc: Mapping[str, Any], name: str) -> list[Any]:
    spec = schema.fields.get(name)
    if spec is None:
        return []
    try:
        return field_values(spec, doc.get(name))
    except ValueError:
        return []


def _in_range(value: Any, gt: Any, gte: Any, lt: Any, lte: Any) -> bool:
    return (
        (gt is None or value > gt)
        and (gte is None or value >= gte)
        and (lt is None or value < lt)
        and (lte is None or value <= lte)
    )
