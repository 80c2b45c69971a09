"""The Redis Cache: the production adapter, shared by every API process.

Entries are plain strings (``SET key value PX ttl``, ``GET``); generations are counters without a
TTL (``INCR``; a missing counter reads as 0). Keys are ``{prefix}c:{key}`` and ``{prefix}g:{ns}``.
Memory is the operator's: ``maxmemory`` with a ``volatile-*`` policy (entries have TTLs,
generations do not and must not be evicted) or ``noeviction``. Values over ``max_value_bytes`` are
refused before they cross the network.

Every call is bounded by ``timeout``: connect and socket timeouts, the pool's wait for a free
connection and an overall ``asyncio.timeout`` around the whole call, with redis-py's retries off.
Any driver failure becomes :class:`CacheUnavailable`. ``start`` opens nothing.

Connections come from redis-py's ``BlockingConnectionPool``, which checks every connection on
checkout (stale ones after a Redis restart are replaced transparently). The rate limiter keeps a
lighter pool of its own (``limits/redis.py``: ~40 µs less per call on our machines); a cache hit
is one call per search and measures within 1.1x a raw ``GET`` through the same kind of pool
(``bench/limits_cache.py``), so the cache keeps the library's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tenantsearch.cache.port import DEFAULT_MAX_VALUE_BYTES, CacheUnavailable, check_ttl

DEFAULT_TIMEOUT = 0.05
DEFAULT_MAX_CONNECTIONS = 50

T = TypeVar("T")


class RedisCache:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ts:",
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_value_bytes = max_value_bytes
        self._client: Redis | None = None

    async def start(self) -> None:
        if self._client is None:
            # Every wait (connect, pool, socket) is bounded by the timeout; no retries.
            pool = BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._client = Redis.from_pool(pool)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        await self._call(lambda client: client.ping())

    async def get(self, key: str) -> bytes | None:
        value = await self._call(lambda client: client.get(f"{self._prefix}c:{key}"))
        if isinstance(value, str):  # only with decode_responses, which this client never sets
            return value.encode()
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        if len(value) > self._max_value_bytes:
            self._running_client()  # the lifecycle rule holds even for a skipped store
            return False
        ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        await self._call(lambda client: client.set(f"{self._prefix}c:{key}", value, px=ttl_ms))
        return True

    async def generation(self, namespace: str) -> int:
        value = await self._call(lambda client: client.get(f"{self._prefix}g:{namespace}"))
        return 0 if value is None else int(value)

    async def bump_generation(self, namespace: str) -> int:
        value = await self._call(lambda client: client.incr(f"{self._prefix}g:{namespace}"))
        return int(value)

    def _running_client(self) -> Redis:
        if self._client is None:
            raise CacheUnavailable("the cache is not running")
        return self._client

    async def _call(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        client = self._running_client()
        try:
            async with asyncio.timeout(self._timeout):
                return await command(client)
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable(f"cache backend: {type(exc).__name__}") from exc
