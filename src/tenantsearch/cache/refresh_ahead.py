"""An in-process cache for the metadata every request reads (keys, tenants, limits, collections),
refreshed ahead of its expiry so that steady traffic never waits for the metadata store.

An entry younger than ``refresh_after`` is served as it is. Between ``refresh_after`` and ``ttl``
it is still served, and one background load replaces it. Older than ``ttl`` it is never served:
the caller waits for a load. So a change made elsewhere (a key revoked by another process) is
seen within ``ttl``, as with a plain TTL cache, but the load happens off the request path: before,
every entry expired under some request, which then paid a store round trip (a visible share of the
p99 at a few hundred searches per second, see docs/benchmarks.md).

*Stale on error* (``stale``: a :class:`StaleServing` of ``seconds``; none or 0 turns it off): an
entry past ``ttl`` is kept for ``seconds`` more. When a load of it fails with
:class:`tenantsearch.errors.ServiceUnavailable` (the metadata database cannot be reached), the
last verified value is served instead, so reads go on through a database outage, for at most
``ttl + seconds`` after that value was loaded; after that the error is raised (fail closed). A
key never loaded has nothing to serve: its error is raised. After such a failure, for
``RETRY_AFTER_FAILURE`` seconds, stale entries are served without trying another load, so an
outage does not cost every request a failed round trip. A database that answers ends it at once:
a value it no longer has (a revoked key) is dropped on the first load that succeeds, as without
``stale``.

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

from tenantsearch.errors import ServiceUnavailable

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

RETRY_AFTER_FAILURE = 1.0
"""Seconds after a failed load during which stale entries are served without loading again."""


class StaleServing:
    """One process's bound on metadata served stale (``seconds`` past a cache's ``ttl``; the
    setting ``TENANTSEARCH_METADATA_STALE_SECONDS``), shared by its caches, and the record of what
    they served: the age of the oldest value served stale lately, for ``/readyz`` and the
    ``tenantsearch_metadata_stale_seconds`` gauge."""

    WINDOW = 10.0
    """A stale value served within this many seconds counts as being served now."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.seconds = seconds
        self._clock = clock
        self._served: dict[int, tuple[float, float]] = {}  # cache id -> (when, age then)

    def served(self, cache: object, age: float) -> None:
        self._served[id(cache)] = (self._clock(), age)

    def oldest_age(self) -> float:
        """The age, now, of the oldest value served stale within ``WINDOW``; 0 when none."""
        now = self._clock()
        ages = [age + now - when for when, age in self._served.values() if now - when < self.WINDOW]
        return max(ages, default=0.0)


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
        stale: StaleServing | None = None,
        maxsize: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._ttl = ttl
        self._policy = stale
        self._keep = ttl + (stale.seconds if stale is not None else 0.0)
        self._failed_at: float | None = None
        self._refresh_after = ttl * 0.6 if refresh_after is None else refresh_after
        self._maxsize = maxsize
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._loading: dict[K, asyncio.Future[V | None]] = {}
        self._epoch = 0
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value of ``key``, or ``load()``'s (stored unless it is None); a stale value
        when the load fails with ``ServiceUnavailable`` (see the module's docstring)."""
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            age = now - entry.loaded_at
            if age < self._ttl:
                if age >= self._refresh_after and key not in self._loading:
                    self._refresh_in_background(key, load)
                return entry.value
            if age >= self._keep:
                del self._entries[key]
                entry = None
            elif self._failed_at is not None and now - self._failed_at < RETRY_AFTER_FAILURE:
                return self._stale(entry, age)
        try:
            return await self._fetch(key, load)
        except ServiceUnavailable:
            if entry is None or entry is not self._entries.get(key):
                raise  # nothing verified to serve, or it was invalidated meanwhile
            age = self._clock() - entry.loaded_at
            if age >= self._keep:
                raise
            return self._stale(entry, age)

    def _stale(self, entry: _Entry[V], age: float) -> V:
        if self._policy is not None:
            self._policy.served(self, age)
        return entry.value

    async def _fetch(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
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
            if isinstance(exc, ServiceUnavailable):
                self._failed_at = self._clock()
            future.set_exception(exc)
            future.exception()  # marked retrieved: waiters re-raise it, nobody else has to
            raise
        else:
            self._failed_at = None
            if value is None:
                self._entries.pop(key, None)  # gone: stop serving it, stale or not
            elif epoch == self._epoch:
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
                await self._run(key, load, future, epoch)
            except Exception as exc:  # noqa: BLE001 - the entry ages; a request then loads again
                log.warning("cache_refresh_failed", error_type=type(exc).__name__)

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _evict(self) -> None:
        now = self._clock()
        expired = [k for k, e in self._entries.items() if now - e.loaded_at >= self._keep]
        for k in expired:
            del self._entries[k]
        if len(self._entries) >= self._maxsize:
            del self._entries[next(iter(self._entries))]  # the oldest insertion
