"""The Cache port: a byte cache of search results, plus per-namespace generations to invalidate.

Invalidation is by generation, not by deletion: a namespace (a tenant) has a counter; cache keys
include it (``cache/keys.py``); ``bump_generation`` after a write makes every older entry of that
tenant unreachable at once, and the entries age out by their TTL. Nothing ever has to enumerate
or delete a tenant's keys.

Contract (tested once for every adapter in ``tests/contract/test_cache.py``):

- ``get`` returns exactly the bytes last ``set`` under the key (any bytes, including empty), or
  ``None`` when there is none: never set, expired, evicted, or too large to store.
- ``set(key, value, ttl_seconds)`` replaces the key's value and TTL; ``ttl_seconds`` must be > 0
  (:class:`ValueError` otherwise). An entry is never returned after its TTL has passed; it may
  disappear earlier (eviction: the in-process adapter keeps at most ``max_entries`` and
  ``max_bytes`` with least-recently-used eviction; Redis evicts by the operator's ``maxmemory``).
- A value longer than ``max_value_bytes`` is not stored: ``set`` returns ``False`` and leaves
  whatever the key held as it was (it still expires by its own TTL); otherwise ``set`` returns
  ``True``. Caching is an optimisation: skipping a huge result is not an error.
- ``generation(ns)`` is 0 for a namespace never bumped. ``bump_generation(ns)`` increments it
  atomically and returns the new value: n concurrent bumps, from any number of clients, return n
  distinct values and leave the generation exactly n higher. Namespaces are independent.
  Generations are not subject to TTL or LRU eviction (losing one would make stale entries
  reachable again); with Redis, the operator must use a ``volatile-*`` or ``noeviction``
  ``maxmemory-policy`` (entries have TTLs, generations do not). A Redis restart without
  persistence loses generations and entries together, which is consistent.
- Failures of the backend raise :class:`CacheUnavailable` within the adapter's ``timeout`` (plus
  scheduling slack), never a driver error. Callers treat it as a miss (``get``) or skip the store
  (``set``): the cache never fails a request. ``generation`` failing means "do not use the cache
  for this request". ``start`` does not contact the backend; before ``start`` and after ``close``
  every call raises ``CacheUnavailable``.
"""

from __future__ import annotations

from typing import Protocol

from tenantsearch.errors import ServiceUnavailable

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024


class CacheUnavailable(ServiceUnavailable):
    code = "cache_unavailable"
    title = "The result cache is unavailable"


def check_ttl(ttl_seconds: float) -> None:
    if not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be > 0, not {ttl_seconds}")


class Cache(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`CacheUnavailable` unless the backend answers within the timeout."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        """Store ``value`` for ``ttl_seconds``; ``False`` (nothing stored) if it is too large."""
        ...

    async def generation(self, namespace: str) -> int: ...

    async def bump_generation(self, namespace: str) -> int:
        """Atomically increment the namespace's generation; returns the new value."""
        ...
