"""Collection schemas and the validation of documents against them.

A collection declares its fields up front. Each field has one of six types; a text field also has a
language, which picks its analyzer (stemming for that language, lowercasing, accent folding). A
document may hold, for each declared field, a value of that type or a list of such values (except
boolean); ``id`` is the document's own id and is never a schema field. Both search backends receive
documents that passed :func:`validate_document` and convert them with the helpers here, so the two
engines agree on what a value means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from tenantsearch.errors import FieldError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""Tenant ids and collection names: lowercase, digits, ``_`` and ``-``, at most 64 characters."""

FIELD_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
"""Field names: a letter, then letters, digits and ``_``; names starting with ``_`` are reserved."""

DOCUMENT_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@=+-]{0,255}$")
"""Document ids: at most 256 characters of letters, digits and ``_ . : @ = + -``."""

RESERVED_FIELDS = frozenset({"id"})
MAX_FIELDS = 100
MAX_VALUES_PER_FIELD = 1000
MAX_KEYWORD_LENGTH = 1024
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class FieldType(StrEnum):
    TEXT = "text"
    KEYWORD = "keyword"
    INTEGER = "integer"
    FLOAT = "float"
    DATE = "date"
    BOOLEAN = "boolean"


# ISO 639-1 code -> the Snowball stemmer's language name (tantivy and OpenSearch both ship these).
LANGUAGES: Mapping[str, str] = {
    "ar": "arabic",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "fi": "finnish",
    "fr": "french",
    "hu": "hungarian",
    "it": "italian",
    "nl": "dutch",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
}
NO_STEMMING = "none"
"""Language value for text that is tokenized, lowercased and folded but not stemmed."""

FILTERABLE = frozenset(
    {FieldType.KEYWORD, FieldType.INTEGER, FieldType.FLOAT, FieldType.DATE, FieldType.BOOLEAN}
)
"""Types that filters, sorting and (for keyword) facets work on; text is for full-text search."""


@dataclass(frozen=True)
class FieldSpec:
    type: FieldType
    language: str | None = None

    def as_dict(self) -> dict[str, str]:
        if self.type is FieldType.TEXT:
            return {"type": self.type.value, "language": self.language or NO_STEMMING}
        return {"type": self.type.value}


@dataclass(frozen=True)
class CollectionSchema:
    fields: Mapping[str, FieldSpec]

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {name: spec.as_dict() for name, spec in sorted(self.fields.items())}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Mapping[str, str]]) -> CollectionSchema:
        """Rebuild a schema that was stored with :meth:`as_dict` (already validated)."""
        return cls(
            fields={
                name: FieldSpec(FieldType(spec["type"]), spec.get("language"))
                for name, spec in raw.items()
            }
        )

    def text_fields(self) -> list[str]:
        return sorted(n for n, s in self.fields.items() if s.type is FieldType.TEXT)


def parse_schema(raw: Any, path: str = "/fields") -> CollectionSchema:
    """Validate a client's ``fields`` object; raises nothing, returns or lists every problem."""
    errors: list[FieldError] = []
    fields: dict[str, FieldSpec] = {}
    if not isinstance(raw, dict):
        raise SchemaErrors([FieldError(path, "must be an object of field name to field spec")])
    if len(raw) > MAX_FIELDS:
        errors.append(FieldError(path, f"at most {MAX_FIELDS} fields per collection"))
    for name, spec in raw.items():
        here = f"{path}/{name}"
        if not FIELD_NAME_RE.match(name) or name in RESERVED_FIELDS:
            errors.append(
                FieldError(
                    here,
                    "field names start with a letter and hold letters, digits and '_' (at most "
                    "64); 'id' is reserved for the document id",
                )
            )
            continue
        if not isinstance(spec, dict):
            errors.append(FieldError(here, 'must be an object such as {"type": "keyword"}'))
            continue
        unknown = set(spec) - {"type", "language"}
        if unknown:
            errors.append(FieldError(f"{here}/{sorted(unknown)[0]}", "unknown property"))
        try:
            ftype = FieldType(str(spec.get("type")))
        except ValueError:
            allowed = ", ".join(t.value for t in FieldType)
            errors.append(FieldError(f"{here}/type", f"must be one of: {allowed}"))
            continue
        language = spec.get("language")
        if ftype is FieldType.TEXT:
            language = NO_STEMMING if language is None else language
            if language != NO_STEMMING and language not in LANGUAGES:
                allowed = ", ".join([*sorted(LANGUAGES), NO_STEMMING])
                errors.append(FieldError(f"{here}/language", f"must be one of: {allowed}"))
                continue
        elif language is not None:
            errors.append(FieldError(f"{here}/language", "only text fields have a language"))
            continue
        fields[name] = FieldSpec(ftype, language)
    if errors:
        raise SchemaErrors(errors)
    return CollectionSchema(fields)


class SchemaErrors(Exception):
    """Raised by :func:`parse_schema` with every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


def parse_date(value: Any) -> datetime | None:
    """An RFC 3339 / ISO 8601 date or date-time string as an aware UTC datetime, else None.

    A date-time without an offset is taken as UTC; a bare date is midnight UTC.
    """
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def coerce_value(spec: FieldSpec, value: Any) -> Any:
    """The typed value of one scalar for ``spec``, or raise ValueError with a message."""
    match spec.type:
        case FieldType.TEXT:
            if isinstance(value, str):
                return value
            raise ValueError("must be a string")
        case FieldType.KEYWORD:
            if isinstance(value, str) and len(value) <= MAX_KEYWORD_LENGTH:
                return value
            raise ValueError(f"must be a string of at most {MAX_KEYWORD_LENGTH} characters")
        case FieldType.INTEGER:
            if isinstance(value, int) and not isinstance(value, bool):
                if INT64_MIN <= value <= INT64_MAX:
                    return value
                raise ValueError("must fit in a signed 64-bit integer")
            raise ValueError("must be an integer")
        case FieldType.FLOAT:
            if isinstance(value, int | float) and not isinstance(value, bool):
                f = float(value)
                if math.isfinite(f):
                    return f
            raise ValueError("must be a finite number")
        case FieldType.DATE:
            parsed = parse_date(value)
            if parsed is None:
                raise ValueError("must be an ISO 8601 date or date-time string")
            return parsed
        case FieldType.BOOLEAN:
            if isinstance(value, bool):
                return value
            raise ValueError("must be true or false")
    raise AssertionError(spec.type)  # pragma: no cover - the match is exhaustive


def field_values(spec: FieldSpec, value: Any) -> list[Any]:
    """All typed values a document holds for one field (a scalar or a list; null is none)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [coerce_value(spec, v) for v in value if v is not None]
    return [coerce_value(spec, value)]


def validate_document(schema: CollectionSchema, doc: Any, path: str = "") -> list[FieldError]:
    """Every problem with one document (its ``id`` is checked by the caller)."""
    if not isinstance(doc, dict):
        return [FieldError(path or "/", "a document must be a JSON object")]
    errors: list[FieldError] = []
    for name, value in doc.items():
        if name in RESERVED_FIELDS:
            continue
        spec = schema.fields.get(name)
        here = f"{path}/{name}"
        if spec is None:
            errors.append(FieldError(here, "unknown field: declare it in the collection's schema"))
            continue
        if isinstance(value, list):
            if spec.type is FieldType.BOOLEAN:
                errors.append(FieldError(here, "must be true or false"))
                continue
            if len(value) > MAX_VALUES_PER_FIELD:
                errors.append(FieldError(here, f"at most {MAX_VALUES_PER_FIELD} values"))
                continue
            for i, item in enumerate(value):
                if item is None:
                    continue
                try:
                    coerce_value(spec, item)
                except ValueError as exc:
                    errors.append(FieldError(f"{here}/{i}", str(exc)))
        elif value is not None:
            try:
                coerce_value(spec, value)
            except ValueError as exc:
                errors.append(FieldError(here, str(exc)))
    return errors


def normalize_document_id(value: Any) -> str | None:
    """A document id as a string (integers are accepted and turned into strings), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and DOCUMENT_ID_RE.match(value):
        return value
    return None
