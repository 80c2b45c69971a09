"""The SearchBackend port: what the service needs from a search engine.

Contract (tested once for every adapter in ``tests/contract/test_search_backend.py``):

- A collection is addressed by a :class:`CollectionRef`. Two refs with different ``uid`` never
  see each other's documents, whatever their tenant and name; the adapter adds the tenant and
  collection scoping to every read and write itself.
- ``ensure_collection`` is idempotent. ``drop_collection`` and ``drop_tenant`` are idempotent and a
  missing collection is a no-op; after they return, nothing of the dropped data can be read.
- ``apply`` takes puts and deletes with versions and returns one result per op, in order. An op
  whose version is not higher than the stored one (document or delete tombstone) is ``stale`` and
  changes nothing. When ``apply`` returns, every ``applied`` op is visible to ``get``, ``search``
  and ``count``. ``retryable`` means the same op may succeed later (overload, timeout);
  ``permanent`` means it never will (the engine refused the document).
- ``search`` returns hits in a total order: relevance or the sort key, ties broken the same way
  every time while the data does not change, so paging with ``next_after`` never skips or repeats
  a hit. ``total`` counts every match; ``facets`` count values of keyword fields among the matches;
  highlights wrap matched terms in ``<em>``/``</em>`` with the rest HTML-escaped.
- ``stats`` returns the collection's live documents (delete tombstones excluded; the same number as
  ``count``) and their ``stored_bytes``: the sum, over live documents, of
  ``len(orjson.dumps(document))`` for the document exactly as the applied put carried it (the
  stored original, default orjson options: compact UTF-8, keys in the order sent). Tombstones
  count 0; an update replaces the old size. A missing collection is ``(0, 0)``. Documents written
  by an adapter version that did not record sizes count 0 bytes (see each adapter).
- ``purge_tombstones(refs, through_version)`` removes the delete tombstones of those collections
  whose version is at or below ``through_version`` and returns how many it removed; documents,
  newer tombstones and other collections are untouched. Nothing then stops a put of a purged id
  with an older version (OpenSearch still refuses one for ``index.gc_deletes``, 60 s), so the
  caller must make sure none at or below ``through_version`` can arrive any more (the indexer's
  tombstone horizon, docs/architecture.md). Tombstones an adapter cannot date (see each
  adapter) stay.
- Raises ``BackendUnavailable`` (a ``ServiceUnavailable``) when the engine cannot be reached and
  ``InvalidCursor`` for an ``after`` token it did not produce; never a driver's own error.
- ``start`` before first use and ``close`` at the end; ``ping`` raises when the engine is unhealthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from tenantsearch.errors import InvalidInput, ServiceUnavailable
from tenantsearch.search.query import SearchQuery, SearchResult, WriteOp, WriteResult
from tenantsearch.search.schema import CollectionSchema


@dataclass(frozen=True)
class CollectionRef:
    """Where one tenant's collection lives. ``uid`` is unique for every created collection, so a
    collection deleted and created again under the same name starts empty."""

    tenant: str
    name: str
    uid: str
    schema: CollectionSchema


@dataclass(frozen=True)
class CollectionStats:
    """Size of one collection: see ``stats`` in the module docstring."""

    documents: int
    stored_bytes: int


def stored_size(document: Any) -> int:
    """The byte length ``stored_bytes`` counts for one document (raises ``TypeError`` for what
    JSON cannot hold)."""
    return len(orjson.dumps(document))


class BackendUnavailable(ServiceUnavailable):
    code = "search_unavailable"
    title = "The search engine is unavailable"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    title = "The cursor is not valid for this search"


class SearchBackend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def ensure_collection(self, ref: CollectionRef) -> None: ...

    async def drop_collection(self, ref: CollectionRef) -> None: ...

    async def drop_tenant(self, tenant: str) -> None: ...

    async def apply(self, ref: CollectionRef, ops: Sequence[WriteOp]) -> list[WriteResult]: ...

    async def get(self, ref: CollectionRef, doc_id: str) -> dict[str, Any] | None: ...

    async def count(self, ref: CollectionRef) -> int: ...

    async def stats(self, ref: CollectionRef) -> CollectionStats: ...

    async def search(self, ref: CollectionRef, query: SearchQuery) -> SearchResult: ...

    async def purge_tombstones(
        self, refs: Sequence[CollectionRef], through_version: int
    ) -> int: ...
