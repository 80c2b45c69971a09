"""The RateLimiter port: one atomic admit-or-refuse decision per request, shared by API processes.

Algorithm: GCRA (generic cell rate algorithm), i.e. a token bucket kept as one timestamp.

A :class:`Rate` of ``limit`` per ``period`` with ``burst`` is a bucket of ``capacity = limit +
burst`` cells that refills continuously, one cell every ``interval = period / limit`` (rounded to
the microsecond, at least 1 µs). State per key is one number, the *theoretical arrival time* (TAT):
the instant at which the bucket would be full again. A request of ``cost`` cells at time ``now``::

    base = max(tat, now)
    new_tat = base + cost * interval
    allowed  iff  new_tat - now <= capacity * interval      (then tat := new_tat)

Contract (tested once for every adapter in ``tests/contract/test_rate_limiter.py``):

- A key never seen (or idle long enough to have refilled) admits exactly ``capacity`` cost at
  once; the next request is refused. With ``burst=0``, 500 concurrent requests against a limit of
  100 per period admit exactly 100: every decision is atomic, whichever process makes it.
- Refill is continuous at ``limit / period``. In any interval of length ``W`` at most
  ``capacity + floor(W / interval)`` cost is admitted (so at most ``capacity + limit`` in any one
  period, and never more than ``capacity`` in an instant: no fixed-window "2x at the boundary").
  A period that starts with the bucket empty (``remaining`` 0) admits at most ``limit``.
  Over a long horizon the admitted rate tends to exactly ``limit / period``. (No bucket can
  promise both ``capacity`` at once and at most ``capacity`` per sliding period: that needs a log
  of every request, O(limit) memory per key, and no sustained rate apart from the burst.)
- A refused request consumes nothing. ``retry_after`` is the exact delay after which the same
  request is allowed if nothing else consumes in between (0 when allowed); ``remaining`` is the
  cost that would be allowed right now after this decision, ``0 <= remaining <= limit``, where
  ``Decision.limit`` is the capacity; ``reset_after`` is the delay until the bucket is full again.
- ``cost`` must be between 1 and ``rate.capacity``; anything else is a programming error
  (:class:`ValueError`), because such a request could never be admitted.
- A key's state is independent of the Rate it is checked against: a plan change applies at once,
  with the debt already accrued (the TAT) carried over.
- ``consume_quota(key, limit_per_day, cost)`` is a separate fixed-window counter per key and UTC
  day (the backend's clock): allowed iff ``used + cost <= limit_per_day``; a refusal consumes
  nothing; ``reset_after`` (and ``retry_after`` when refused) is the time to the next UTC midnight.
  Quota keys and rate keys are separate namespaces. ``1 <= cost <= limit_per_day`` or ValueError.
- Time is the backend's: the Redis adapter reads Redis' clock, so API processes with skewed clocks
  agree; the in-process adapter uses the monotonic clock (UTC wall clock for daily quotas).
- Idle keys are forgotten once their bucket is full (forgetting a full bucket changes nothing);
  the adapter may also forget a non-full key under memory pressure, which forgives its debt.
- Failure: when the backend cannot answer, ``acquire``, ``consume_quota`` and ``ping`` raise
  :class:`LimiterUnavailable` within the adapter's ``timeout`` (plus scheduling slack), never a
  driver error and never an unbounded wait. Whether to admit then (fail open) or refuse (fail
  closed) is the caller's decision. A call that raised may still have been counted (the reply,
  not the decision, was lost), like a queue publish that raised.
- ``start`` does not contact the backend and does not fail because it is unreachable (use
  ``ping`` for readiness); before ``start`` and after ``close`` every call raises
  ``LimiterUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tenantsearch.errors import ServiceUnavailable

MICROSECONDS = 1_000_000
"""Both adapters compute in integer microseconds, so their decisions agree exactly."""

SECONDS_PER_DAY = 86_400


class LimiterUnavailable(ServiceUnavailable):
    code = "rate_limiter_unavailable"
    title = "The rate limiter is unavailable"


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` cost per ``period`` seconds, sustained, plus ``burst`` extra at once."""

    limit: int
    period: float
    burst: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"Rate.limit must be >= 1, not {self.limit}")
        if not self.period > 0:
            raise ValueError(f"Rate.period must be > 0 seconds, not {self.period}")
        if self.burst < 0:
            raise ValueError(f"Rate.burst must be >= 0, not {self.burst}")
        if self.period * MICROSECONDS / self.limit < 1:
            raise ValueError("Rate: period / limit must be at least one microsecond")

    @classmethod
    def per_second(cls, limit: int, burst: int = 0) -> Rate:
        return cls(limit, 1.0, burst)

    @classmethod
    def per_minute(cls, limit: int, burst: int = 0) -> Rate:
        return cls(limit, 60.0, burst)

    @classmethod
    def per_hour(cls, limit: int, burst: int = 0) -> Rate:
        return cls(limit, 3600.0, burst)

    @property
    def capacity(self) -> int:
        """The most cost admitted at once: ``limit + burst``."""
        return self.limit + self.burst

    @property
    def interval_us(self) -> int:
        """Microseconds to refill one cell: ``period / limit``, rounded."""
        return max(1, round(self.period * MICROSECONDS / self.limit))

    def check_cost(self, cost: int) -> None:
        if not 1 <= cost <= self.capacity:
            raise ValueError(f"cost must be between 1 and the capacity {self.capacity}, not {cost}")


def check_quota_cost(limit_per_day: int, cost: int) -> None:
    if limit_per_day < 1:
        raise ValueError(f"limit_per_day must be >= 1, not {limit_per_day}")
    if not 1 <= cost <= limit_per_day:
        raise ValueError(f"cost must be between 1 and the daily limit {limit_per_day}, not {cost}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request; everything a ``429`` and ``RateLimit-*`` headers need."""

    allowed: bool
    limit: int
    """The most ``remaining`` can be: the Rate's capacity, or the daily quota."""
    remaining: int
    """Cost that would be admitted right now, after this decision."""
    reset_after: float
    """Seconds until the budget is whole again (bucket full; next UTC day for a quota)."""
    retry_after: float
    """Seconds until this same request would be admitted; 0 when it was."""


class RateLimiter(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`LimiterUnavailable` unless the backend answers within the timeout."""
        ...

    async def acquire(self, key: str, limit: Rate, cost: int = 1) -> Decision:
        """Admit ``cost`` against ``key``'s bucket under ``limit``, or refuse; one atomic step."""
        ...

    async def consume_quota(self, key: str, limit_per_day: int, cost: int = 1) -> Decision:
        """Count ``cost`` against ``key``'s UTC-day quota, or refuse; one atomic step."""
        ...
