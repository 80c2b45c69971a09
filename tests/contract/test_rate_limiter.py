"""The RateLimiter port's contract (``tenantsearch.limits.port``), run against every adapter.

Tests talk to the adapter through the port and assert on decisions. Rates are chosen so timing
cannot blur the outcome: either the period is long (an hour: nothing refills during the test) or
the test measures against bounds that hold for any scheduling delay. Adapter-specific behaviour
(the in-process adapter's memory bound and clock, Redis' shared budget, unreachable server and
restart) is at the end, in explicitly named sections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from tenantsearch.limits.memory import MemoryRateLimiter
from tenantsearch.limits.port import Decision, LimiterUnavailable, Rate, RateLimiter
from tenantsearch.limits.redis import RedisRateLimiter
from tests.support.server import free_port
from tests.support.services import redis as redis_service

pytestmark = pytest.mark.timeout(60)

CONTRACT_TIMEOUT = 5.0
"""The Redis adapter's bound in contract tests: generous, so 500 concurrent calls opening 50
connections on a loaded 2-core machine never trip it (these tests are about decisions). The
default (0.05 s) is what the unavailability tests check."""

UNAVAILABLE_WITHIN = 0.2
"""How soon an unreachable backend must be reported: the default 0.05 s timeout plus slack for
a loaded 2-core machine (typically 0.05-0.06 s; without the bounds it takes seconds: redis-py's
default retries back off exponentially and its blocking pool waits 20 s)."""

HOUR = 3600.0

T = TypeVar("T")


@dataclass
class _Backend:
    """Builds limiters of one kind that share one backend (one Redis key prefix per test)."""

    kind: str
    redis_url: str = ""
    prefix: str = field(default_factory=lambda: f"test:{uuid.uuid4().hex[:12]}:")
    made: list[RateLimiter] = field(default_factory=list)

    def make(self, **options: Any) -> RateLimiter:
        limiter: RateLimiter
        if self.kind == "memory":
            limiter = MemoryRateLimiter(**options)
        elif self.kind == "redis":
            options.setdefault("timeout", CONTRACT_TIMEOUT)
            limiter = RedisRateLimiter(self.redis_url, prefix=self.prefix, **options)
        else:
            raise AssertionError(f"unknown limiter adapter {self.kind!r}")
        self.made.append(limiter)
        return limiter


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[_Backend]:
    kind: str = request.param
    where = _Backend(kind)
    if kind == "redis":
        where.redis_url = request.getfixturevalue("redis_url")
    try:
        yield where
    finally:
        for limiter in where.made:
            await limiter.close()


@pytest.fixture
async def limiter(backend: _Backend) -> RateLimiter:
    started = backend.make()
    await started.start()
    return started


async def acquire_many(limiter: RateLimiter, key: str, rate: Rate, n: int) -> list[Decision]:
    return [await limiter.acquire(key, rate) for _ in range(n)]


async def all_of(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``calls`` concurrently; every one has finished (none left running) when this fails."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return cast(list[T], results)


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


# -- a fresh key, refusal, retry-after --------------------------------------------------------


async def test_fresh_key_admits_capacity_at_once_then_refuses(limiter: RateLimiter) -> None:
    rate = Rate(limit=5, period=60.0, burst=3)  # capacity 8, one cell every 12 s
    interval = 12.0

    decisions = await acquire_many(limiter, "k", rate, 9)

    admitted, refused = decisions[:8], decisions[8]
    assert all(d.allowed for d in admitted)
    assert [d.remaining for d in admitted] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert all(d.limit == 8 and d.retry_after == 0 for d in admitted)
    for i, d in enumerate(admitted):  # full again once every cell spent so far has refilled
        assert (i + 1) * interval - 1 < d.reset_after <= (i + 1) * interval
    assert not refused.allowed
    assert refused.limit == 8
    assert refused.remaining == 0
    assert interval - 1 < refused.retry_after <= interval
    assert 8 * interval - 1 < refused.reset_after <= 8 * interval


async def test_waiting_retry_after_admits_the_next_request(limiter: RateLimiter) -> None:
    rate = Rate(limit=2, period=1.0)  # capacity 2, one cell every 0.5 s: room for slow scheduling
    assert all(d.allowed for d in await acquire_many(limiter, "k", rate, 2))
    refused = await limiter.acquire("k", rate)
    assert not refused.allowed
    assert 0 < refused.retry_after <= 0.5

    await asyncio.sleep(refused.retry_after)
    admitted = await limiter.acquire("k", rate)
    again = await limiter.acquire("k", rate)

    assert admitted.allowed
    assert admitted.remaining == 0
    assert not again.allowed  # exactly one cell had refilled
    assert 0 < again.retry_after <= 0.5


async def test_bucket_is_full_again_after_reset_after(limiter: RateLimiter) -> None:
    rate = Rate(limit=5, period=0.5, burst=1)  # capacity 6, one cell every 0.1 s
    spent = await limiter.acquire("k", rate, cost=4)
    assert spent.allowed
    assert spent.remaining == 2
    assert 0.35 < spent.reset_after <= 0.4

    await asyncio.sleep(spent.reset_after)
    after = await limiter.acquire("k", rate)

    assert after.allowed
    assert after.remaining == 5


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    rate = Rate(limit=2, period=HOUR)
    assert [d.allowed for d in await acquire_many(limiter, "a", rate, 3)] == [True, True, False]

    other = await limiter.acquire("b", rate)

    assert other.allowed
    assert other.remaining == 1
    assert not (await limiter.acquire("a", rate)).allowed


# -- cost ---------------------------------------------------------------------------------------


async def test_cost_counts_cells_and_a_refusal_consumes_nothing(limiter: RateLimiter) -> None:
    rate = Rate(limit=10, period=60.0)  # one cell every 6 s

    first = await limiter.acquire("k", rate, cost=4)
    too_much = await limiter.acquire("k", rate, cost=7)
    rest = await limiter.acquire("k", rate, cost=6)

    assert (first.allowed, first.remaining) == (True, 6)
    assert (too_much.allowed, too_much.remaining) == (False, 6)
    assert 5 < too_much.retry_after <= 6  # one more cell was missing
    assert (rest.allowed, rest.remaining) == (True, 0)
    assert 59 < rest.reset_after <= 60


@pytest.mark.parametrize("cost", [0, -1, 11])
async def test_cost_outside_one_to_capacity_is_a_programming_error(
    limiter: RateLimiter, cost: int
) -> None:
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire("k", Rate(limit=8, period=60.0, burst=2), cost=cost)


def test_rate_rejects_nonsense() -> None:
    for args in [(0, 1.0), (1, 0.0), (1, -1.0), (10, 0.000001)]:
        with pytest.raises(ValueError, match="Rate"):
            Rate(*args)
    with pytest.raises(ValueError, match="burst"):
        Rate(1, 1.0, burst=-1)
    assert Rate.per_minute(30, burst=5) == Rate(30, 60.0, 5)
    assert Rate.per_minute(30, burst=5).capacity == 35
    assert Rate(3, 1.0).interval_us == 333_333


# -- atomicity and bounds over time -------------------------------------------------------------


async def test_concurrent_requests_admit_exactly_the_capacity(limiter: RateLimiter) -> None:
    rate = Rate(limit=100, period=HOUR)

    decisions = await all_of(limiter.acquire("k", rate) for _ in range(500))

    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 100
    assert sorted(d.remaining for d in admitted) == list(range(100))  # each saw its own state
    assert all(d.remaining == 0 and d.retry_after > 0 for d in decisions if not d.allowed)


async def test_admissions_over_time_stay_within_the_gcra_bounds(limiter: RateLimiter) -> None:
    """A client retrying every 10 ms for 3 s against 10/s with a burst of 5.

    Bounds (``limits/port.py``): the first ``capacity`` requests pass at once; any window of one
    period admits at most ``capacity + limit`` (15 + 10); a period that starts with the bucket
    empty (at a refusal) admits at most ``limit`` (+1: a decision's instant is only known to
    within its round trip); and the client gets everything the refill offers (liveness).
    """
    rate = Rate(limit=10, period=1.0, burst=5)
    # 3 s, not less: on a loaded 2-core machine the first refusal can come late, and the
    # "period that starts empty" bound needs one whole period of admissions after it.
    capacity, per_period, interval, duration = 15, 10, 0.1, 3.0
    outcomes: list[bool] = []
    admitted: list[float] = []
    refused: list[float] = []
    started = time.monotonic()
    while (sent := time.monotonic()) - started < duration:
        decision = await limiter.acquire("k", rate)
        at = (sent + time.monotonic()) / 2
        outcomes.append(decision.allowed)
        (admitted if decision.allowed else refused).append(at)
        await asyncio.sleep(0.01)

    def in_window(start: float, length: float) -> int:
        return sum(1 for t in admitted if start <= t < start + length)

    assert all(outcomes[:capacity])
    assert max(in_window(t, rate.period) for t in admitted) <= capacity + per_period
    assert refused, "the client never ran out"
    empty_starts = [t for t in refused if t + rate.period <= admitted[-1]]
    assert empty_starts
    assert max(in_window(t, rate.period) for t in empty_starts) <= per_period + 1
    elapsed = admitted[-1] - started
    assert len(admitted) <= capacity + int(elapsed / interval) + 1
    assert len(admitted) >= capacity + int(duration / interval) - 4


# -- daily quota --------------------------------------------------------------------------------


async def test_daily_quota_counts_cost_until_utc_midnight(limiter: RateLimiter) -> None:
    if seconds_to_utc_midnight() < 3:  # do not straddle the day boundary
        await asyncio.sleep(seconds_to_utc_midnight() + 0.1)
    to_midnight = seconds_to_utc_midnight()

    first = await limiter.consume_quota("k", 5, cost=2)
    second = await limiter.consume_quota("k", 5, cost=2)
    refused = await limiter.consume_quota("k", 5, cost=2)
    last = await limiter.consume_quota("k", 5)
    after = await limiter.consume_quota("k", 5)

    assert [(d.allowed, d.remaining) for d in (first, second, refused, last, after)] == [
        (True, 3),
        (True, 1),
        (False, 1),  # a refusal consumes nothing
        (True, 0),
        (False, 0),
    ]
    assert all(d.limit == 5 for d in (first, refused))
    assert abs(first.reset_after - to_midnight) < 2
    assert first.retry_after == 0
    assert refused.retry_after == refused.reset_after
    assert abs(refused.retry_after - to_midnight) < 2


async def test_daily_quota_keys_are_independent_of_each_other_and_of_rates(
    limiter: RateLimiter,
) -> None:
    assert (await limiter.consume_quota("a", 1)).allowed
    assert not (await limiter.consume_quota("a", 1)).allowed

    other = await limiter.consume_quota("b", 3)
    rate = await limiter.acquire("a", Rate(limit=1, period=HOUR))

    assert (other.allowed, other.remaining) == (True, 2)
    assert (rate.allowed, rate.remaining) == (True, 0)


@pytest.mark.parametrize(("limit_per_day", "cost"), [(0, 1), (5, 0), (5, 6)])
async def test_daily_quota_rejects_impossible_costs(
    limiter: RateLimiter, limit_per_day: int, cost: int
) -> None:
    with pytest.raises(ValueError, match="limit"):
        await limiter.consume_quota("k", limit_per_day, cost)


# -- lifecycle ----------------------------------------------------------------------------------


async def test_calls_before_start_and_after_close_raise_unavailable(backend: _Backend) -> None:
    limiter = backend.make()
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("k", Rate(1, 1.0))

    await limiter.start()
    await limiter.ping()
    assert (await limiter.acquire("k", Rate(1, 1.0))).allowed
    await limiter.close()

    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("k", Rate(1, 1.0))
    with pytest.raises(LimiterUnavailable):
        await limiter.consume_quota("k", 1)
    with pytest.raises(LimiterUnavailable):
        await limiter.ping()
    await limiter.close()  # closing twice is a no-op


# -- in-process adapter only: memory bound, clocks ----------------------------------------------


class _Clock:
    def __init__(self, start_us: int) -> None:
        self.now_us = start_us

    def __call__(self) -> int:
        return self.now_us


async def test_memory_limiter_keeps_at_most_max_keys() -> None:
    limiter = MemoryRateLimiter(max_keys=10)
    await limiter.start()
    rate = Rate(limit=1, period=HOUR)

    for i in range(100):
        assert (await limiter.acquire(f"k{i}", rate)).allowed

    assert len(limiter) == 10
    assert not (await limiter.acquire("k99", rate)).allowed  # recent keys keep their state
    assert (await limiter.acquire("k0", rate)).allowed  # the coldest were forgotten


async def test_memory_limiter_forgets_idle_full_buckets() -> None:
    clock = _Clock(1_000_000_000)
    limiter = MemoryRateLimiter(clock_us=clock)
    await limiter.start()
    rate = Rate(limit=2, period=1.0)  # full again 0.5 s after one request
    await limiter.acquire("idle", rate)
    clock.now_us += 600_000

    await limiter.acquire("busy", rate)

    assert len(limiter) == 1  # "idle" was full, so dropping it changed nothing


async def test_memory_quota_resets_at_utc_midnight() -> None:
    midnight = int(datetime(2030, 1, 2, tzinfo=UTC).timestamp()) * 1_000_000
    wall = _Clock(midnight - 1_500_000)  # 23:59:58.5
    limiter = MemoryRateLimiter(wall_clock_us=wall)
    await limiter.start()

    assert (await limiter.consume_quota("k", 1)).allowed
    refused = await limiter.consume_quota("k", 1)
    assert not refused.allowed
    assert refused.retry_after == 1.5
    wall.now_us = midnight
    fresh = await limiter.consume_quota("k", 1)

    assert fresh.allowed
    assert fresh.reset_after == 86_400


# -- Redis adapter only: one budget for every process, failures ---------------------------------


async def test_redis_limiters_in_two_processes_share_one_budget(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    one = RedisRateLimiter(redis_url, prefix=prefix, timeout=CONTRACT_TIMEOUT)
    two = RedisRateLimiter(redis_url, prefix=prefix, timeout=CONTRACT_TIMEOUT)
    await one.start()
    await two.start()
    rate = Rate(limit=100, period=HOUR)
    try:
        decisions = await all_of(
            client.acquire("shared", rate) for _ in range(250) for client in (one, two)
        )
        quotas = await all_of(
            client.consume_quota("shared", 30) for _ in range(25) for client in (one, two)
        )
    finally:
        await one.close()
        await two.close()

    assert sum(d.allowed for d in decisions) == 100
    assert sum(d.allowed for d in quotas) == 30


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
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0")  # default timeout: 0.05 s
        await limiter.start()  # does not contact the server
        try:
            for call in (
                lambda: limiter.acquire("k", Rate(1, 1.0)),
                lambda: limiter.consume_quota("k", 1),
                limiter.ping,
            ):
                started = time.monotonic()
                with pytest.raises(LimiterUnavailable):
                    await call()
                assert time.monotonic() - started < UNAVAILABLE_WITHIN
        finally:
            await limiter.close()


async def test_redis_restart_admits_at_most_one_extra_burst(tmp_path: Path) -> None:
    """Redis without persistence restarts empty: every bucket is full again.

    Outcome, per restart: the key admits exactly one more ``capacity`` (the loss is bounded);
    nothing raises but :class:`LimiterUnavailable`, and only while Redis is down (within the
    bound); the first call after the restart already succeeds, whether the pooled connection
    went stale while idle (first restart) or failed during the outage (second one); the script
    is reloaded after NOSCRIPT without the caller noticing.
    """
    rate = Rate(limit=5, period=HOUR, burst=2)  # capacity 7
    with redis_service(tmp_path) as server:
        limiter = RedisRateLimiter(server.url)  # default timeout: 0.05 s
        await limiter.start()
        try:
            before = await acquire_many(limiter, "k", rate, 10)

            server.stop()
            server.start()
            after_idle_restart = await acquire_many(limiter, "k", rate, 10)

            server.stop()
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable):
                await limiter.acquire("k", rate)
            assert time.monotonic() - started < UNAVAILABLE_WITHIN
            server.start()
            after_outage = await acquire_many(limiter, "k", rate, 10)
        finally:
            await limiter.close()

    expected = [True] * 7 + [False] * 3
    assert [d.allowed for d in before] == expected
    assert [d.allowed for d in after_idle_restart] == expected
    assert [d.allowed for d in after_outage] == expected
