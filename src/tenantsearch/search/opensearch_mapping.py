"""The OpenSearch index design: index names, the index template, analyzers, and engine documents.

Pure data and functions (no I/O), used by :mod:`opensearch_backend`; ``docs/architecture.md``
("OpenSearch index design") explains the choices. In short:

- All tenants' collections live in a few shared indices (one per *placement*: ``shared``, plus
  one per tenant given a dedicated index). Every engine document carries hidden keyword fields
  ``_tenant``, ``_collection`` (the collection uid) and ``_doc_id``; its ``_id`` is
  ``<uid>:<doc id>`` and in the shared index it is routed by tenant.
- A collection's declared fields are indexed under *slots*: ``f.<kind>_<n>``, where the kind
  encodes the engine type (``kw``, ``long``, ``double``, ``date``, ``bool``, ``text_<language>``)
  and ``n`` numbers the collection's fields of that kind in name order. Two collections never
  disagree on a slot's type, and the number of mapped fields is bounded by the schema limits
  (:data:`MAX_SLOT_FIELDS`) whatever tenants name their fields, so the shared mapping cannot
  explode. Collection schemas never change (a new schema is a new collection uid), so a slot
  always means the same field for one uid.
- ``doc`` holds the document exactly as sent (an object with ``enabled: false``: stored in
  ``_source``, never parsed or indexed). ``f`` is excluded from ``_source``; text slots are
  ``store: true`` so highlighting can read them.
- ``_size`` (a long, not indexed, not in ``_source``: doc values only) is the byte length of
  ``doc`` as the port defines ``stored_bytes`` (``len(orjson.dumps(document))``); ``stats`` sums
  it. Indices created before it existed get it with a mapping update at start; their older
  documents count 0 bytes.
- Delete tombstones are documents with ``_deleted: true`` (and the delete's external version);
  every read excludes them. ``_tomb_version`` (a long) repeats that version where a query can
  see it (``_version`` is not searchable), so old tombstones can be purged; tombstones written
  before it existed have none and are never purged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from tenantsearch.search.schema import (
    LANGUAGES,
    MAX_FIELDS,
    NO_STEMMING,
    RESERVED_FIELDS,
    CollectionSchema,
    FieldSpec,
    FieldType,
    field_values,
)

MAPPING_VERSION = 1
"""Bumped when the template changes incompatibly; a new version means new indices (a migration
reindexes and swaps the aliases)."""

TENANT_FIELD = "_tenant"
COLLECTION_FIELD = "_collection"
DOC_ID_FIELD = "_doc_id"
DELETED_FIELD = "_deleted"
SIZE_FIELD = "_size"
SIZE_MAPPING: Mapping[str, Any] = {"type": "long", "index": False}
"""Summed by aggregations (doc values), never searched."""
TOMBSTONE_VERSION_FIELD = "_tomb_version"
TOMBSTONE_VERSION_MAPPING: Mapping[str, Any] = {"type": "long"}
ADDED_FIELDS: Mapping[str, Mapping[str, Any]] = {
    SIZE_FIELD: SIZE_MAPPING,
    TOMBSTONE_VERSION_FIELD: TOMBSTONE_VERSION_MAPPING,
}
"""Fields added to the template after its version was released: indices created before get them
with a mapping update at start (the mapping is strict, so their writes would be refused)."""
SOURCE_OBJECT = "doc"
SLOTS_OBJECT = "f"

MAX_TOKEN_CHARS = 39
"""Longer tokens are dropped at indexing (the embedded engine drops tokens of 40 bytes or more;
OpenSearch's ``length`` filter counts characters, so the two agree for ASCII words)."""

SNOWBALL: Mapping[str, str] = {
    **{code: name.capitalize() for code, name in LANGUAGES.items()},
    # The embedded engine's Dutch stemmer is Snowball's current one (Kraaij-Pohlmann based);
    # Lucene's "Dutch" is the older Porter-style algorithm, its "Kp" gives the same stems.
    "nl": "Kp",
}
"""ISO code -> Lucene's Snowball stemmer name (``org.tartarus.snowball.ext.<Name>Stemmer``)."""

TEXT_LANGUAGES: tuple[str, ...] = (*LANGUAGES, NO_STEMMING)

_KINDS: Mapping[FieldType, str] = {
    FieldType.KEYWORD: "kw",
    FieldType.INTEGER: "long",
    FieldType.FLOAT: "double",
    FieldType.DATE: "date",
    FieldType.BOOLEAN: "bool",
}
_KIND_MAPPINGS: Mapping[str, dict[str, Any]] = {
    # Keyword values are at most 1024 characters (schema.MAX_KEYWORD_LENGTH), far below Lucene's
    # 32766-byte term limit, so no ignore_above is needed (it would silently drop values).
    "kw": {"type": "keyword"},
    "long": {"type": "long"},
    # double, not float: the embedded engine keeps 64-bit floats, and a 32-bit float would make
    # ``price lt 99.99`` match a stored 99.99.
    "double": {"type": "double"},
    # Values are sent as epoch milliseconds (see engine_value).
    "date": {"type": "date", "format": "epoch_millis"},
    "bool": {"type": "boolean"},
}

MAX_SLOT_FIELDS = MAX_FIELDS * (len(_KINDS) + len(TEXT_LANGUAGES))
"""Upper bound of slot fields in one index: every kind can hold at most MAX_FIELDS slots."""
TOTAL_FIELDS_LIMIT = MAX_SLOT_FIELDS + 100
"""``index.mapping.total_fields.limit``: the slots, the hidden fields, and a margin; reachable only
through a bug, never by tenant input."""

_NAME_PART_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Rejected(Exception):
    """The engine would refuse this document; the message is safe to show the client."""


def check_prefix(prefix: str) -> str:
    """Index prefixes are short and have no ``-``, so two prefixes' patterns never overlap."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            "the OpenSearch index prefix is 1 to 32 characters: a lowercase letter, then "
            "lowercase letters, digits and '_'"
        )
    return prefix


def check_name_part(value: str) -> str:
    """A tenant id used inside an index name (tenant ids already follow this form)."""
    if not _NAME_PART_RE.match(value):
        raise ValueError(f"not usable in an index name: {value!r}")
    return value


# -- slots -------------------------------------------------------------------------------------


def slot_kind(spec: FieldSpec) -> str:
    if spec.type is FieldType.TEXT:
        return f"text_{spec.language or NO_STEMMING}"
    return _KINDS[spec.type]


def field_slots(schema: CollectionSchema) -> dict[str, str]:
    """Declared field name -> its engine field path (``f.kw_0``), the same for the same schema."""
    counters: dict[str, int] = {}
    slots: dict[str, str] = {}
    for name in sorted(schema.fields):
        kind = slot_kind(schema.fields[name])
        n = counters.get(kind, 0)
        counters[kind] = n + 1
        slots[name] = f"{SLOTS_OBJECT}.{kind}_{n}"
    return slots


def unmapped_type(spec: FieldSpec) -> str:
    """The engine type of a slot, for sorts on a slot no document has used yet."""
    if spec.type is FieldType.TEXT:
        return "text"
    return str(_KIND_MAPPINGS[_KINDS[spec.type]]["type"])


# -- values and documents ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def date_millis(value: datetime) -> int:
    """Milliseconds since the epoch, rounded down (OpenSearch dates have millisecond precision;
    documents and filter values are truncated the same way, so comparisons stay consistent)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def engine_value(spec: FieldSpec, value: Any) -> Any:
    """A value already typed by ``schema.coerce_value`` as the engine indexes it."""
    if spec.type is FieldType.DATE:
        return date_millis(value)
    if spec.type is FieldType.FLOAT:
        number = float(value)
        if not math.isfinite(number):  # pragma: no cover - coerce_value refuses these
            raise ValueError("must be a finite number")
        return number
    return value


def engine_document(
    tenant: str,
    uid: str,
    doc_id: str,
    document: Mapping[str, Any],
    schema: CollectionSchema,
    slots: Mapping[str, str],
) -> dict[str, Any]:
    """The engine body of one put; raises :class:`Rejected` for a document the schema refuses."""
    source = document if isinstance(document, dict) else dict(document)
    typed: dict[str, Any] = {}
    for name, value in source.items():
        if name in RESERVED_FIELDS:
            continue
        spec = schema.fields.get(name)
        if spec is None:
            raise Rejected(f"/{name}: unknown field")
        if isinstance(value, list) and spec.type is FieldType.BOOLEAN:
            raise Rejected(f"/{name}: must be true or false")
        try:
            values = [engine_value(spec, v) for v in field_values(spec, value)]
        except ValueError as exc:
            raise Rejected(f"/{name}: {exc}") from exc
        if values:
            typed[slots[name].split(".", 1)[1]] = values if len(values) > 1 else values[0]
    try:
        # Fails for what JSON cannot hold (integers beyond 64 bits, non-string keys); checked here
        # so the op is refused alone instead of failing the whole bulk request.
        size = len(orjson.dumps(source))
    except TypeError as exc:
        raise Rejected(f"the document cannot be stored as JSON: {exc}") from exc
    return {
        TENANT_FIELD: tenant,
        COLLECTION_FIELD: uid,
        DOC_ID_FIELD: doc_id,
        SOURCE_OBJECT: source,
        SLOTS_OBJECT: typed,
        SIZE_FIELD: size,
    }


def tombstone(tenant: str, uid: str, doc_id: str, version: int) -> dict[str, Any]:
    """The engine body of a delete: it keeps the delete's version so older puts stay stale (as
    its external version) and can be purged by age (as ``_tomb_version``)."""
    return {
        TENANT_FIELD: tenant,
        COLLECTION_FIELD: uid,
        DOC_ID_FIELD: doc_id,
        DELETED_FIELD: True,
        TOMBSTONE_VERSION_FIELD: version,
    }


def engine_id(uid: str, doc_id: str) -> str:
    return f"{uid}:{doc_id}"


# -- analysis, template, registry --------------------------------------------------------------


def analyzer_name(language: str | None) -> str:
    return f"ts_{language or NO_STEMMING}"


def analysis_settings() -> dict[str, Any]:
    """One analyzer per text language, the same chain as the embedded engine
    (``analyzers.py``): split on anything but letters and digits, drop long tokens, lowercase,
    Snowball stemmer, ASCII folding (after stemming, which expects the language's accents)."""
    filters: dict[str, Any] = {"ts_long": {"type": "length", "min": 0, "max": MAX_TOKEN_CHARS}}
    analyzers: dict[str, Any] = {}
    for language in TEXT_LANGUAGES:
        chain = ["ts_long", "lowercase"]
        if language != NO_STEMMING:
            stemmer = f"ts_stem_{language}"
            filters[stemmer] = {"type": "snowball", "language": SNOWBALL[language]}
            chain.append(stemmer)
        chain.append("asciifolding")
        analyzers[analyzer_name(language)] = {
            "type": "custom",
            "tokenizer": "ts_words",
            "filter": chain,
        }
    return {
        "tokenizer": {
            # Like tantivy's simple tokenizer: a token is a run of letters and digits.
            "ts_words": {"type": "pattern", "pattern": r"[^\p{IsAlphabetic}\p{N}]+"}
        },
        "filter": filters,
        "analyzer": analyzers,
    }


def docs_mappings() -> dict[str, Any]:
    templates: list[dict[str, Any]] = [
        {
            f"slot_text_{language}": {
                "path_match": f"{SLOTS_OBJECT}.text_{language}_*",
                "mapping": {
                    "type": "text",
                    "analyzer": analyzer_name(language),
                    # f is not in _source; highlighting reads the stored values instead.
                    "store": True,
                },
            }
        }
        for language in TEXT_LANGUAGES
    ]
    templates += [
        {f"slot_{kind}": {"path_match": f"{SLOTS_OBJECT}.{kind}_*", "mapping": mapping}}
        for kind, mapping in _KIND_MAPPINGS.items()
    ]
    return {
        "dynamic": "strict",
        # _size is read through doc values only (indices created before it keep it in _source).
        "_source": {"excludes": [SLOTS_OBJECT, SIZE_FIELD]},
        "dynamic_templates": templates,
        "properties": {
            TENANT_FIELD: {"type": "keyword"},
            COLLECTION_FIELD: {"type": "keyword"},
            DOC_ID_FIELD: {"type": "keyword"},
            DELETED_FIELD: {"type": "boolean"},
            **{name: dict(mapping) for name, mapping in ADDED_FIELDS.items()},
            SOURCE_OBJECT: {"type": "object", "enabled": False},
            # Only fields a dynamic template maps may appear under f.
            SLOTS_OBJECT: {"type": "object", "dynamic": "strict_allow_templates"},
        },
    }


def docs_template(patterns: list[str], *, shards: int, replicas: int) -> dict[str, Any]:
    """The composable index template every document index (shared or dedicated) is made from."""
    return {
        "index_patterns": patterns,
        "priority": 100,
        "template": {
            "settings": {
                "index": {
                    "number_of_shards": shards,
                    "number_of_replicas": replicas,
                    "mapping": {
                        "total_fields": {"limit": TOTAL_FIELDS_LIMIT},
                        "depth": {"limit": 3},
                        "nested_fields": {"limit": 0},
                        "field_name_length": {"limit": 64},
                    },
                    "analysis": analysis_settings(),
                }
            },
            "mappings": docs_mappings(),
        },
        "_meta": {"owner": "tenantsearch", "mapping_version": MAPPING_VERSION},
    }


REGISTRY_STATE_ACTIVE = "active"
REGISTRY_STATE_DROPPED = "dropped"


def registry_index_body(*, replicas: int, aliases: Mapping[str, Any]) -> dict[str, Any]:
    """The collection registry: one small document per collection uid (its tenant, name, schema
    and state). ``apply`` writes only to collections registered as active, so a write that
    arrives after a drop cannot bring the dropped data back."""
    return {
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": replicas}},
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "tenant": {"type": "keyword"},
                "name": {"type": "keyword"},
                "state": {"type": "keyword"},
                "schema": {"type": "object", "enabled": False},
            },
        },
        "aliases": dict(aliases),
    }
