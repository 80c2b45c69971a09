"""The in-process RateLimiter: the embedded default (one API process, no server).

Same GCRA arithmetic as the Redis script (integer microseconds, see ``limits/port.py``) on the
monotonic clock; daily quotas use the UTC wall clock. Memory is bounded: a key whose bucket is full
again is dropped when met at the cold end of the LRU order (dropping it changes no decision), and
beyond ``max_keys`` buckets (and as many quota counters) the least recently used key is dropped
even if not full (its debt is forgiven, as Redis would under ``maxmemory`` eviction). Decisions
contain no ``await``, so each one is atomic within the event loop; the adapter is meant for one
event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from tenantsearch.limits.port import (
    MICROSECONDS,
    SECONDS_PER_DAY,
    Decision,
    LimiterUnavailable,
    Rate,
    check_quota_cost,
)

DEFAULT_MAX_KEYS = 100_000
_SWEEP = 8
"""How many cold keys one decision may inspect for expiry: amortised O(1)."""

_DAY_US = SECONDS_PER_DAY * MICROSECONDS


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _wall_us() -> int:
    return time.time_ns() // 1000


def gcra(tat: int, now: int, rate: Rate, cost: int) -> tuple[int, Decision]:
    """One GCRA decision in integer microseconds: ``(new_tat, decision)``; pure."""
    interval = rate.interval_us
    tolerance = rate.capacity * interval
    base = max(tat, now)
    new_tat = base + cost * interval
    if new_tat - now <= tolerance:
        remaining = (now + tolerance - new_tat) // interval
        return new_tat, Decision(
            allowed=True,
            limit=rate.capacity,
            remaining=remaining,
            reset_after=(new_tat - now) / MICROSECONDS,
            retry_after=0.0,
        )
    remaining = min(rate.capacity, max(0, (now + tolerance - base) // interval))
    return tat, Decision(
        allowed=False,
        limit=rate.capacity,
        remaining=remaining,
        reset_after=(base - now) / MICROSECONDS,
        retry_after=(new_tat - tolerance - now) / MICROSECONDS,
    )


class MemoryRateLimiter:
    """GCRA buckets and UTC-day quota counters in this process's memory."""

    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock_us: Callable[[], int] = _monotonic_us,
        wall_clock_us: Callable[[], int] = _wall_us,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._max_keys = max_keys
        self._clock_us = clock_us
        self._wall_clock_us = wall_clock_us
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._quotas: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key -> (day, used)
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        self._running = False
        self._tats.clear()
        self._quotas.clear()

    async def ping(self) -> None:
        self._check_running()

    def __len__(self) -> int:
        """Keys currently held (rate buckets and quota counters)."""
        return len(self._tats) + len(self._quotas)

    async def acquire(self, key: str, limit: Rate, cost: int = 1) -> Decision:
        limit.check_cost(cost)
        self._check_running()
        now = self._clock_us()
        tat = self._tats.get(key, now)
        new_tat, decision = gcra(tat, now, limit, cost)
        if decision.allowed:
            self._tats[key] = new_tat
            self._tats.move_to_end(key)
            self._sweep_buckets(now)
        return decision

    async def consume_quota(self, key: str, limit_per_day: int, cost: int = 1) -> Decision:
        check_quota_cost(limit_per_day, cost)
        self._check_running()
        now = self._wall_clock_us()
        day = now // _DAY_US
        reset_after = ((day + 1) * _DAY_US - now) / MICROSECONDS
        stored_day, used = self._quotas.get(key, (day, 0))
        if stored_day != day:
            used = 0
        if used + cost > limit_per_day:
            remaining = max(0, limit_per_day - used)  # a lowered quota may be overspent already
            return Decision(False, limit_per_day, remaining, reset_after, reset_after)
        used += cost
        self._quotas[key] = (day, used)
        self._quotas.move_to_end(key)
        self._sweep_quotas(day)
        return Decision(True, limit_per_day, limit_per_day - used, reset_after, 0.0)

    def _check_running(self) -> None:
        if not self._running:
            raise LimiterUnavailable("the rate limiter is not running")

    def _sweep_buckets(self, now: int) -> None:
        for _ in range(_SWEEP):
            if not self._tats:
                break
            oldest, tat = next(iter(self._tats.items()))
            if tat > now:  # not full yet: still matters
                break
            del self._tats[oldest]
        while len(self._tats) > self._max_keys:
            self._tats.popitem(last=False)

    def _sweep_quotas(self, day: int) -> None:
        for _ in range(_SWEEP):
            if not self._quotas:
                break
            oldest, (stored_day, _used) = next(iter(self._quotas.items()))
            if stored_day == day:
                break
            del self._quotas[oldest]
        while len(self._quotas) > self._max_keys:
            self._quotas.popitem(last=False)
