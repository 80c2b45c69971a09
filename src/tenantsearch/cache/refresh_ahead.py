"""An in-process cache for the metadata every request reads (keys, tenants, limits, collections),
refreshed ahead of its expiry so that steady traffic never waits for the metadata store.

An entry younger than ``refresh_after`` is served as it is. Between ``refresh_after`` and ``ttl``
it is still served, and one background load replaces it. Older than ``ttl`` it is never served:
the caller waits for a load. So a change made elsewhere (a key revoked by another process) is
seen within ``ttl``, as with a plain TTL cache, but the load happens off the request path: before,
every entry expired under some request, which then paid a store round trip (a visible share of the
p99 at a few hundred searches per second, see docs/benchmarks.md).

Loads of one key are shared (one in flight at a time). ``None`` (not found) is not cached. A load
that started before an invalidation (``pop``/``clear``) does not store its result: a key revoked
by this process cannot come back from a refresh that read it just before.

Written here because the libraries we looked at either have no refresh-ahead for asyncio
(cachetools, which this replaced, and async-lru) or bring their own backends and decorators
(cashews), much more than these four call sites need.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    loaded_at: float


class RefreshAheadCache(Generic[K, V]):
    def __init__(
        self,
        ttl: float,
        *,
        refresh_after: float | None = None,
        maxsize: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._ttl = ttl
        self._refresh_after = ttl * 0.6 if refresh_after is None else refresh_after
        self._maxsize = maxsize
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._loading: dict[K, asyncio.Future[V | None]] = {}
        self._epoch = 0
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value of ``key``, or ``load()``'s (stored unless it is None)."""
        entry = self._entries.get(key)
        if entry is not None:
            age = self._clock() - entry.loaded_at
            if age < self._ttl:
                if age >= self._refresh_after and key not in self._loading:
                    self._refresh_in_background(key, load)
                return entry.value
            del self._entries[key]
        pending = self._loading.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # The load it waited for was cancelled (its caller went away): load here.
        return await self._load(key, load)

    def peek(self, key: K) -> V | None:
        """The value if cached and not expired; never loads."""
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry.loaded_at >= self._ttl:
            return None
        return entry.value

    def put(self, key: K, value: V) -> None:
        if key not in self._entries and len(self._entries) >= self._maxsize:
            self._evict()
        self._entries[key] = _Entry(value, self._clock())

    def update(self, key: K, value: V) -> None:
        """Replace a cached value derived from the same load, keeping its age (so it is not served
        longer than the load it came from allows); nothing when ``key`` is not cached."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.value = value

    def pop(self, key: K) -> None:
        """Forget ``key``; a load in flight will not store what it read."""
        self._epoch += 1
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    def items(self) -> Iterator[tuple[K, V]]:
        return iter([(k, e.value) for k, e in self._entries.items()])

    def _begin(self, key: K) -> tuple[asyncio.Future[V | None], int]:
        """Register a load of ``key`` (synchronously, so nobody starts a second one)."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        return future, self._epoch

    async def _load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        future, epoch = self._begin(key)
        return await self._run(key, load, future, epoch)

    async def _run(
        self,
        key: K,
        load: Callable[[], Awaitable[V | None]],
        future: asyncio.Future[V | None],
        epoch: int,
    ) -> V | None:
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: waiters re-raise it, nobody else has to
            raise
        else:
            if value is not None and epoch == self._epoch:
                self.put(key, value)
            future.set_result(value)
            return value
        finally:
            if self._loading.get(key) is future:
                del self._loading[key]

    def _refresh_in_background(self, key: K, load: Callable[[], Awaitable[V | None]]) -> None:
        future, epoch = self._begin(key)

        async def refresh() -> None:
            try:
                value = await self._run(key, load, future, epoch)
            except Exception as exc:  # noqa: BLE001 - the entry expires; a request then retries
                log.warning("cache_refresh_failed", error_type=type(exc).__name__)
                return
            if value is None:
                self._entries.pop(key, None)  # gone: stop serving it

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _evict(self) -> None:
        now = self._clock()
        expired = [k for k, e in self._entries.items() if now - e.loaded_at >= self._ttl]
        for k in expired:
            del self._entries[k]
        if len(self._entries) >= self._maxsize:
            del self._entries[next(iter(self._entries))]  # the oldest insertion
