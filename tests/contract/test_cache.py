"""The Cache port's contract (``tenantsearch.cache.port``), run against every adapter.

Tests talk to the adapter through the port only. TTLs are short (0.5 s: room for a slow scheduler
before the first read) and the waits past them have a margin. Adapter-specific behaviour (the
in-process adapter's LRU bounds, an unreachable Redis) is at the end, in explicitly named
sections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tenantsearch.cache.memory import MemoryCache
from tenantsearch.cache.port import Cache, CacheUnavailable
from tenantsearch.cache.redis import RedisCache
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(60)

MAX_VALUE_BYTES = 64 * 1024
"""Every adapter under test refuses values longer than this."""

CONTRACT_TIMEOUT = 5.0
"""The Redis adapter's bound in contract tests: generous, for a loaded 2-core machine (the
default 0.05 s is what the unavailability tests check)."""

UNAVAILABLE_WITHIN = 0.2
"""The default 0.05 s timeout plus slack for a loaded 2-core machine."""


@dataclass
class _Backend:
    """Builds caches of one kind that share one backend (one Redis key prefix per test)."""

    kind: str
    redis_url: str = ""
    prefix: str = field(default_factory=lambda: f"test:{uuid.uuid4().hex[:12]}:")
    made: list[Cache] = field(default_factory=list)

    def make(self, **options: Any) -> Cache:
        options.setdefault("max_value_bytes", MAX_VALUE_BYTES)
        cache: Cache
        if self.kind == "memory":
            cache = MemoryCache(**options)
        elif self.kind == "redis":
            options.setdefault("timeout", CONTRACT_TIMEOUT)
            cache = RedisCache(self.redis_url, prefix=self.prefix, **options)
        else:
            raise AssertionError(f"unknown cache adapter {self.kind!r}")
        self.made.append(cache)
        return cache


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[_Backend]:
    kind: str = request.param
    where = _Backend(kind)
    if kind == "redis":
        where.redis_url = request.getfixturevalue("redis_url")
    try:
        yield where
    finally:
        for cache in where.made:
            await cache.close()


@pytest.fixture
async def cache(backend: _Backend) -> Cache:
    started = backend.make()
    await started.start()
    return started


# -- values -------------------------------------------------------------------------------------


async def test_values_round_trip_byte_for_byte(cache: Cache) -> None:
    values = [b"", bytes(range(256)), b"\x00\xff not utf-8 \x80", os.urandom(MAX_VALUE_BYTES)]
    for index, value in enumerate(values):
        assert await cache.set(f"k{index}", value, 10)

    assert [await cache.get(f"k{i}") for i in range(len(values))] == values


async def test_missing_key_is_a_miss(cache: Cache) -> None:
    assert await cache.get("never-set") is None


async def test_entry_expires_after_its_ttl(cache: Cache) -> None:
    await cache.set("short", b"v", 0.5)
    await cache.set("long", b"v", 10)
    assert await cache.get("short") == b"v"

    await asyncio.sleep(0.6)

    assert await cache.get("short") is None
    assert await cache.get("long") == b"v"


async def test_set_replaces_value_and_ttl(cache: Cache) -> None:
    await cache.set("k", b"old", 0.5)
    await cache.set("k", b"new", 10)

    await asyncio.sleep(0.6)

    assert await cache.get("k") == b"new"


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_ttl_must_be_positive(cache: Cache, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", b"v", ttl)


async def test_too_large_value_is_not_stored(cache: Cache) -> None:
    assert await cache.set("k", b"a" * MAX_VALUE_BYTES, 10)

    stored = await cache.set("k", b"b" * (MAX_VALUE_BYTES + 1), 10)
    also = await cache.set("fresh", b"c" * (MAX_VALUE_BYTES + 1), 10)

    assert stored is False
    assert also is False
    assert await cache.get("k") == b"a" * MAX_VALUE_BYTES  # left as it was
    assert await cache.get("fresh") is None


# -- generations --------------------------------------------------------------------------------


async def test_generation_starts_at_zero_and_bumps_by_one(cache: Cache) -> None:
    assert await cache.generation("acme") == 0

    assert await cache.bump_generation("acme") == 1
    assert await cache.bump_generation("acme") == 2
    assert await cache.generation("acme") == 2


async def test_concurrent_bumps_are_atomic(backend: _Backend, cache: Cache) -> None:
    other = backend.make() if backend.kind == "redis" else cache  # another API process
    await other.start()
    await cache.bump_generation("acme")

    results = await asyncio.gather(
        *(client.bump_generation("acme") for _ in range(50) for client in (cache, other)),
        return_exceptions=True,  # let every call finish before the fixture closes the clients
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    bumped = [r for r in results if isinstance(r, int)]

    assert sorted(bumped) == list(range(2, 102))
    assert await cache.generation("acme") == 101
    assert await other.generation("acme") == 101


async def test_generations_of_namespaces_are_independent(cache: Cache) -> None:
    await cache.bump_generation("acme")
    await cache.bump_generation("acme")

    assert await cache.bump_generation("globex") == 1
    assert await cache.generation("acme") == 2
    assert await cache.generation("initech") == 0


async def test_generations_are_not_entries(cache: Cache) -> None:
    await cache.set("acme", b"an entry named like a namespace", 10)
    await cache.bump_generation("acme")

    assert await cache.get("acme") == b"an entry named like a namespace"
    assert await cache.generation("acme") == 1


# -- lifecycle ----------------------------------------------------------------------------------


async def test_calls_before_start_and_after_close_raise_unavailable(backend: _Backend) -> None:
    cache = backend.make()
    with pytest.raises(CacheUnavailable):
        await cache.get("k")

    await cache.start()
    await cache.ping()
    assert await cache.set("k", b"v", 10)
    await cache.close()

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: cache.get("k"),
        lambda: cache.set("k", b"v", 10),
        lambda: cache.set("k", b"v" * (MAX_VALUE_BYTES + 1), 10),
        lambda: cache.generation("acme"),
        lambda: cache.bump_generation("acme"),
        cache.ping,
    ]
    for call in calls:
        with pytest.raises(CacheUnavailable):
            await call()
    await cache.close()  # closing twice is a no-op


# -- in-process adapter only: bounds ------------------------------------------------------------


async def test_memory_cache_evicts_least_recently_used_beyond_max_entries() -> None:
    cache = MemoryCache(max_entries=3)
    await cache.start()
    for key in ("a", "b", "c"):
        await cache.set(key, b"v", 10)
    assert await cache.get("a") == b"v"  # "a" is now the most recently used

    await cache.set("d", b"v", 10)

    assert await cache.get("b") is None
    assert [await cache.get(k) for k in ("a", "c", "d")] == [b"v", b"v", b"v"]
    assert cache.size == (3, 6)


async def test_memory_cache_evicts_to_stay_within_max_bytes() -> None:
    cache = MemoryCache(max_bytes=1000, max_value_bytes=1000)
    await cache.start()
    for key in ("a", "b", "c"):
        await cache.set(key, b"x" * 299, 10)  # 300 bytes with the key
    assert cache.size == (3, 900)

    await cache.set("d", b"x" * 299, 10)
    huge = await cache.set("e", b"x" * 1000, 10)  # fits max_value_bytes, not with its key

    assert await cache.get("a") is None
    assert cache.size == (3, 900)
    assert huge is False


async def test_memory_cache_drops_expired_entries_on_write() -> None:
    now = [100.0]
    cache = MemoryCache(clock=lambda: now[0])
    await cache.start()
    for key in ("a", "b", "c"):
        await cache.set(key, b"v", 1)
    now[0] += 2

    await cache.set("d", b"v", 1)

    assert cache.size == (1, 2)


async def test_memory_cache_never_evicts_generations() -> None:
    cache = MemoryCache(max_entries=1)
    await cache.start()
    await cache.bump_generation("acme")
    for i in range(10):
        await cache.set(f"k{i}", b"v", 10)

    assert await cache.generation("acme") == 1


# -- Redis adapter only: unreachable server ----------------------------------------------------


@contextlib.contextmanager
def unresponsive_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.mark.parametrize("failure", ["closed port", "unresponsive server"])
async def test_redis_unreachable_raises_unavailable_quickly(failure: str) -> None:
    with contextlib.ExitStack() as stack:
        port = free_port() if failure == "closed port" else stack.enter_context(unresponsive_port())
        cache = RedisCache(f"redis://127.0.0.1:{port}/0")  # default timeout: 0.05 s
        await cache.start()  # does not contact the server
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: cache.get("k"),
            lambda: cache.set("k", b"v", 10),
            lambda: cache.generation("acme"),
            lambda: cache.bump_generation("acme"),
            cache.ping,
        ]
        try:
            for call in calls:
                started = time.monotonic()
                with pytest.raises(CacheUnavailable):
                    await call()
                assert time.monotonic() - started < UNAVAILABLE_WITHIN
        finally:
            await cache.close()
