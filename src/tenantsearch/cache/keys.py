"""Cache keys for search results: pure functions, no I/O.

A key must differ whenever the answer could differ. The answer depends on the tenant, on what the
credential may see (role, collections, the row filter its key or token imposes), on the collection
(its uid, so a collection deleted and re-created under the same name never hits the old entries),
on the tenant's cache generation, and on the normalized request. All of it is hashed together as
canonical JSON (sorted keys, orjson), so two keys collide only if SHA-256 does, and the order of
keys in a request never matters. Array order is kept: ``sort`` order is meaningful; putting
order-insensitive arrays (``in`` lists, facet names) in a canonical order is the request
normalizer's job, as is turning equivalent values into one form (``1`` and ``1.0`` hash apart).

The readable prefix (``search:v1:<tenant>:g<generation>:``, tenant percent-encoded) exists for
operators (``SCAN search:v1:acme:*``); it is not what makes keys distinct.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

KEY_VERSION = 2
"""Bump when the hashed layout or the cached value's format changes: old entries become misses."""


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def permissions_digest(
    role: str, collections: Iterable[str] | None, document_filter: Mapping[str, Any] | None
) -> str:
    """SHA-256 (hex) of everything that limits what a credential may see.

    ``collections`` is the key's allow-list (``None``: every collection, which differs from an
    empty list: none); its order and duplicates do not matter. ``document_filter`` is the row
    filter the credential imposes (``None``: no filter).
    """
    allowed = None if collections is None else sorted(set(collections))
    return _digest({"role": role, "collections": allowed, "filter": document_filter})


def search_cache_key(
    tenant: str,
    permissions_digest: str,
    collection_uid: str,
    normalized_request: Mapping[str, Any],
    generation: int,
) -> str:
    """The cache key of one search; ``normalized_request`` must be JSON data with string keys."""
    digest = _digest(
        {
            "v": KEY_VERSION,
            "tenant": tenant,
            "permissions": permissions_digest,
            "collection": collection_uid,
            "generation": generation,
            "request": normalized_request,
        }
    )
    return f"search:v{KEY_VERSION}:{quote(tenant, safe='')}:g{generation}:{digest}"
