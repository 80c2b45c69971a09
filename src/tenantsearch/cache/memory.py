"""The in-process Cache: the embedded default. An LRU bounded by entries and bytes, with TTLs.

Expiry uses the monotonic clock and is checked on read (an expired entry is never returned) and
at the cold end of the LRU order on write, so memory is bounded by ``max_entries`` and
``max_bytes`` (keys and values counted) whatever the TTLs. Generations live apart from the
entries and are never evicted: one integer per namespace (tenant). No operation awaits, so each
is atomic within the event loop; the adapter is meant for one event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from tenantsearch.cache.port import DEFAULT_MAX_VALUE_BYTES, CacheUnavailable, check_ttl

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_SWEEP = 8
"""How many cold entries one write may inspect for expiry: amortised O(1)."""


class MemoryCache:
    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_value_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 1, max_value_bytes >= 0")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_value_bytes = max_value_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # -> (expires, value)
        self._bytes = 0
        self._generations: dict[str, int] = {}
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        self._running = False
        self._entries.clear()
        self._bytes = 0
        self._generations.clear()

    async def ping(self) -> None:
        self._check_running()

    @property
    def size(self) -> tuple[int, int]:
        """``(entries, bytes)`` currently held, expired entries not yet swept included."""
        return len(self._entries), self._bytes

    async def get(self, key: str) -> bytes | None:
        self._check_running()
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        self._check_running()
        if len(value) > self._max_value_bytes:
            return False
        size = _size(key, value)
        if size > self._max_bytes:
            return False
        now = self._clock()
        self._remove(key)
        self._entries[key] = (now + ttl_seconds, bytes(value))
        self._bytes += size
        self._evict(now)
        return True

    async def generation(self, namespace: str) -> int:
        self._check_running()
        return self._generations.get(namespace, 0)

    async def bump_generation(self, namespace: str) -> int:
        self._check_running()
        value = self._generations.get(namespace, 0) + 1
        self._generations[namespace] = value
        return value

    def _check_running(self) -> None:
        if not self._running:
            raise CacheUnavailable("the cache is not running")

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry[1])

    def _evict(self, now: float) -> None:
        for _ in range(_SWEEP):
            oldest = next(iter(self._entries.items()), None)
            if oldest is None or oldest[1][0] > now:
                break
            self._remove(oldest[0])
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(next(iter(self._entries)))


def _size(key: str, value: bytes) -> int:
    return len(key.encode()) + len(value)
