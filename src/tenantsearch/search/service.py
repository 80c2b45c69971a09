"""The search path: check a request against the collection's schema, run it, wrap the cursor.

The public cursor is opaque: base64url JSON holding the backend's own token and a digest of the
query it belongs to, so a cursor replayed with another query (or tampered with) is refused as
``invalid_cursor`` instead of returning a wrong page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import orjson

from tenantsearch.auth.rbac import Principal
from tenantsearch.cache.keys import permissions_digest, search_cache_key
from tenantsearch.cache.port import Cache, CacheUnavailable
from tenantsearch.errors import FieldError, Forbidden, InvalidInput
from tenantsearch.observability.metrics import Metrics
from tenantsearch.search.collections import ref_of
from tenantsearch.search.port import CollectionRef, InvalidCursor, SearchBackend
from tenantsearch.search.query import (
    And,
    Filter,
    FilterErrors,
    SearchQuery,
    SearchResult,
    parse_facets,
    parse_filter,
    parse_sort,
    query_words,
)
from tenantsearch.store.records import Collection

MAX_CURSOR_LENGTH = 4096
MAX_QUERY_WORDS = 64
"""Most distinct words in ``q``: each is a clause of the engine query (docs/relevance.md)."""


RequestMatching = Literal["ranked", "all", "last", "frequency"]
"""``matching`` of a search request: the backends' rules (``Matching``), and ``last`` and
``frequency``, which this service runs over ``all`` (:meth:`SearchService.search`;
docs/relevance.md)."""


@dataclass(frozen=True)
class SearchRequest:
    q: str
    matching: RequestMatching
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
    dropped_words: tuple[str, ...] = ()
    """Words of ``q`` the ``last`` or ``frequency`` rule left out to find any document."""


def _digest(request: SearchRequest) -> str:
    shape = orjson.dumps(
        [
            request.q,
            request.matching,
            request.filter,
            request.sort,
            request.facets,
            request.facet_size,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(shape).hexdigest()[:24]


def encode_cursor(request: SearchRequest, token: str, kept: Sequence[int] | None = None) -> str:
    """The client's cursor: the backend's ``token``, the request's digest and, for ``last`` and
    ``frequency``, the positions of the words the first page kept (the next pages search for the
    same words)."""
    cursor: dict[str, object] = {"d": _digest(request), "t": token}
    if kept is not None:
        cursor["w"] = list(kept)
    raw = orjson.dumps(cursor)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(request: SearchRequest) -> tuple[str | None, list[int] | None]:
    """``(backend token, positions of the words kept)`` of the request's cursor; ``(None,
    None)`` without one."""
    if request.cursor is None:
        return None, None
    try:
        if len(request.cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        padded = request.cursor + "=" * (-len(request.cursor) % 4)
        raw = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        digest, token, kept = raw["d"], raw["t"], raw.get("w")
        if not isinstance(token, str):
            raise TypeError("token")
        if kept is not None and (
            not isinstance(kept, list)
            or len(kept) > MAX_QUERY_WORDS
            or not all(type(i) is int and 0 <= i < MAX_QUERY_WORDS for i in kept)
        ):
            raise TypeError("kept")
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidCursor("the cursor is malformed") from exc
    if digest != _digest(request):
        raise InvalidCursor(
            "the cursor belongs to another query; send the same q, filter, sort "
            "and facets as for the first page"
        )
    return token, kept


def _words_at(words: Sequence[str], positions: Sequence[int]) -> str:
    return " ".join(words[i] for i in sorted(positions))


def tenant_namespace(tenant: str) -> str:
    """The cache generation namespace of a tenant (bumped by the indexer after each batch)."""
    return f"tenant:{tenant}"


def render(page: SearchPage) -> bytes:
    hits = []
    for hit in page.result.hits:
        out: dict[str, object] = {"id": hit.id, "score": hit.score, "document": hit.document}
        if hit.highlights is not None:
            out["highlights"] = hit.highlights
        hits.append(out)
    return orjson.dumps(
        {
            "hits": hits,
            "total": page.result.total,
            "facets": page.result.facets,
            "next_cursor": page.next_cursor,
            **({"dropped_words": list(page.dropped_words)} if page.dropped_words else {}),
        }
    )


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
    def __init__(
        self,
        backend: SearchBackend,
        cache: Cache | None = None,
        metrics: Metrics | None = None,
        ttl_seconds: float = 60.0,
    ) -> None:
        self._backend = backend
        self._cache = cache
        self._metrics = metrics
        self._ttl = ttl_seconds

    async def search_json(
        self, collection: Collection, request: SearchRequest, principal: Principal
    ) -> bytes:
        """The response body of one search, from the result cache when it holds it.

        The cache key covers the tenant, everything that limits what the credential may see
        (role, collections, mandatory filter), the collection's uid, the whole request and the
        tenant's generation, which the indexer bumps after every applied batch: a hit is what
        this very credential would get from the engine now."""
        cache = self._cache
        tenant = collection.tenant_id
        key = None
        if cache is not None:
            try:
                generation = await cache.generation(tenant_namespace(tenant))
                key = search_cache_key(
                    tenant,
                    permissions_digest(
                        principal.role.value, principal.collections, principal.filter
                    ),
                    collection.uid,
                    asdict(request),
                    generation,
                )
                cached = await cache.get(key)
            except CacheUnavailable:
                self._count(tenant, "error")
                cache = None
            else:
                if cached is not None:
                    self._count(tenant, "hit")
                    return cached
                self._count(tenant, "miss")
        page = await self.search(collection, request, principal.filter)
        body = render(page)
        if cache is not None and key is not None:
            with contextlib.suppress(CacheUnavailable):
                await cache.set(key, body, self._ttl)
        return body

    def _count(self, tenant: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.cache_requests.labels(tenant, outcome).inc()

    async def search(
        self,
        collection: Collection,
        request: SearchRequest,
        mandatory: Mapping[str, Any] | None = None,
    ) -> SearchPage:
        """One page of results; ``mandatory`` (a tenant token's filter) restricts hits, totals
        and facets alike."""
        schema = collection.schema
        words = query_words(request.q)
        after, kept_before = decode_cursor(request)
        if len(words) > MAX_QUERY_WORDS:
            raise InvalidInput(
                f"q holds {len(words)} distinct words; at most {MAX_QUERY_WORDS} are searched for",
                code="too_many_words",
                errors=[FieldError("/q", f"at most {MAX_QUERY_WORDS} distinct words")],
            )
        try:
            user_filter = (
                parse_filter(schema, request.filter) if request.filter is not None else None
            )
            query = SearchQuery(
                text=request.q,
                matching="ranked" if request.matching == "ranked" else "all",
                filter=combine(mandatory_filter(collection, mandatory), user_filter),
                sort=parse_sort(schema, request.sort),
                facets=parse_facets(schema, request.facets),
                facet_size=request.facet_size,
                limit=request.limit,
                after=after,
                highlight=request.highlight,
            )
        except FilterErrors as exc:
            raise InvalidInput(
                "the search request is not valid", errors=exc.errors, code="invalid_query"
            ) from exc
        ref = ref_of(collection)
        dropping = request.matching in ("last", "frequency")
        kept = list(range(len(words)))
        if dropping and kept_before is not None:
            kept = [i for i in kept_before if i < len(words)]  # the words the first page kept
            query = replace(query, text=_words_at(words, kept))
        result = await self._backend.search(ref, query)
        if dropping and result.total == 0 and len(kept) > 1 and after is None:
            # Drop words, one at a time, until some document matches: the words dropped are
            # reported, and the cursor keeps the rest for the next pages.
            order = (
                kept[::-1]
                if request.matching == "last"
                else await self._by_frequency(ref, query, words)
            )
            for i in order[:-1]:
                kept.remove(i)
                result = await self._backend.search(
                    ref, replace(query, text=_words_at(words, kept))
                )
                if result.total:
                    break
        next_cursor = (
            encode_cursor(request, result.next_after, kept if dropping else None)
            if result.next_after
            else None
        )
        dropped = tuple(w for i, w in enumerate(words) if i not in kept) if result.total else ()
        return SearchPage(result=result, next_cursor=next_cursor, dropped_words=dropped)

    async def _by_frequency(
        self, ref: CollectionRef, query: SearchQuery, words: Sequence[str]
    ) -> list[int]:
        """Positions of ``words`` in the order ``frequency`` drops them: words no candidate holds
        first (while one is left, nothing can match), then the most common ones; ties from the
        end of ``q``. One count per word (a search of one page of 0 hits, no facets)."""
        counts = await asyncio.gather(
            *(
                self._backend.search(
                    ref,
                    replace(
                        query, text=word, limit=0, facets=(), highlight=False, sort=(), after=None
                    ),
                )
                for word in words
            )
        )
        totals = [c.total for c in counts]
        return sorted(range(len(words)), key=lambda i: (totals[i] != 0, -totals[i], -i))
