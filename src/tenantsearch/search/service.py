"""The search path: check a request against the collection's schema, run it, wrap the cursor.

The public cursor is opaque: base64url JSON holding the backend's own token and a digest of the
query it belongs to, so a cursor replayed with another query (or tampered with) is refused as
``invalid_cursor`` instead of returning a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tenantsearch.errors import Forbidden, InvalidInput
from tenantsearch.search.collections import ref_of
from tenantsearch.search.port import InvalidCursor, SearchBackend
from tenantsearch.search.query import (
    And,
    Filter,
    FilterErrors,
    SearchQuery,
    SearchResult,
    parse_facets,
    parse_filter,
    parse_sort,
)
from tenantsearch.store.records import Collection

MAX_CURSOR_LENGTH = 4096


@dataclass(frozen=True)
class SearchRequest:
    q: str
    filter: Any
    sort: Any
    facets: list[str]
    facet_size: int
    limit: int
    cursor: str | None
    highlight: bool


@dataclass(frozen=True)
class SearchPage:
    result: SearchResult
    next_cursor: str | None


def _digest(request: SearchRequest) -> str:
    shape = orjson.dumps(
        [request.q, request.filter, request.sort, request.facets, request.facet_size],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(shape).hexdigest()[:24]


def encode_cursor(request: SearchRequest, token: str) -> str:
    raw = orjson.dumps({"d": _digest(request), "t": token})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(request: SearchRequest) -> str | None:
    if request.cursor is None:
        return None
    try:
        if len(request.cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        padded = request.cursor + "=" * (-len(request.cursor) % 4)
        raw = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        digest, token = raw["d"], raw["t"]
        if not isinstance(token, str):
            raise TypeError("token")
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidCursor("the cursor is malformed") from exc
    if digest != _digest(request):
        raise InvalidCursor(
            "the cursor belongs to another query; send the same q, filter, sort "
            "and facets as for the first page"
        )
    return token


def mandatory_filter(collection: Collection, raw: Mapping[str, Any] | None) -> Filter | None:
    """A credential's mandatory filter for this collection. It was checked against the schema
    when the credential was made; a collection since recreated with other fields refuses it."""
    if raw is None:
        return None
    try:
        return parse_filter(collection.schema, raw)
    except FilterErrors as exc:
        raise Forbidden(
            "the credential's filter does not apply to this collection", code="filter_mismatch"
        ) from exc


def combine(mandatory: Filter | None, user: Filter | None) -> Filter | None:
    if mandatory is None or user is None:
        return mandatory or user
    return And((mandatory, user))


class SearchService:
    def __init__(self, backend: SearchBackend) -> None:
        self._backend = backend

    async def search(
        self,
        collection: Collection,
        request: SearchRequest,
        mandatory: Mapping[str, Any] | None = None,
    ) -> SearchPage:
        """One page of results; ``mandatory`` (a tenant token's filter) restricts hits, totals
        and facets alike."""
        schema = collection.schema
        try:
            user_filter = (
                parse_filter(schema, request.filter) if request.filter is not None else None
            )
            query = SearchQuery(
                text=request.q,
                filter=combine(mandatory_filter(collection, mandatory), user_filter),
                sort=parse_sort(schema, request.sort),
                facets=parse_facets(schema, request.facets),
                facet_size=request.facet_size,
                limit=request.limit,
                after=decode_cursor(request),
                highlight=request.highlight,
            )
        except FilterErrors as exc:
            raise InvalidInput(
                "the search request is not valid", errors=exc.errors, code="invalid_query"
            ) from exc
        result = await self._backend.search(ref_of(collection), query)
        next_cursor = encode_cursor(request, result.next_after) if result.next_after else None
        return SearchPage(result=result, next_cursor=next_cursor)
