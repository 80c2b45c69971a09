"""Benchmark of the rate limiter and the result cache against raw Redis round trips.

Starts a private ``redis-server`` and measures, sequentially (one request in flight, as one API
request sees it), with the two operations of each pair interleaved so drift hits both alike:

- limiter decision (``RedisRateLimiter.acquire``: EVALSHA of the GCRA script) against a raw
  ``PING`` of a bare redis-py single-connection client (the kind of connection the limiter
  itself holds: the baseline the target refers to), and against the adapter's own ``ping()``
  (same connection and same timeout/error wrapper: isolates the script);
- cache hit (``RedisCache.get`` of a 2 KB value) against a raw ``GET`` of the same value, both on
  a client built like the cache's (redis-py's blocking pool) and on a bare single connection;
- for scale, the in-process adapters' decision and hit.

Prints p50/p99 in microseconds and the ratios. Usage: ``python -m bench.limits_cache [-n 5000]``.
The target: a limiter decision within 1.5x a raw PING round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tests.support.services import redis as redis_service

from tenantsearch.cache.memory import MemoryCache
from tenantsearch.cache.redis import RedisCache
from tenantsearch.limits.memory import MemoryRateLimiter
from tenantsearch.limits.port import Rate
from tenantsearch.limits.redis import RedisRateLimiter

WARMUP = 300
TIMEOUT = 1.0
VALUE = bytes(range(256)) * 8  # 2 KB, a small result page
RATE = Rate(limit=1_000_000, period=1.0)  # never refuses: every call is a full decision

Op = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Stats:
    p50: float
    p99: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Stats:
        cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
        return cls(p50=statistics.median(samples_ns) / 1000, p99=cuts[98] / 1000)


async def paired(baseline: Op, candidate: Op, n: int) -> tuple[Stats, Stats]:
    """Latencies of ``baseline`` and ``candidate``, called alternately ``n`` times each."""
    for _ in range(WARMUP):
        await baseline()
        await candidate()
    base: list[int] = []
    cand: list[int] = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await baseline()
        middle = time.perf_counter_ns()
        await candidate()
        base.append(middle - started)
        cand.append(time.perf_counter_ns() - middle)
    return Stats.of(base), Stats.of(cand)


async def single_stats(op: Op, n: int) -> Stats:
    for _ in range(WARMUP):
        await op()
    samples: list[int] = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await op()
        samples.append(time.perf_counter_ns() - started)
    return Stats.of(samples)


def row(name: str, stats: Stats, baseline: Stats | None = None) -> str:
    ratio = "" if baseline is None else f"{stats.p50 / baseline.p50:.2f}x"
    ratio99 = "" if baseline is None else f"{stats.p99 / baseline.p99:.2f}x"
    return f"| {name} | {stats.p50:.1f} | {stats.p99:.1f} | {ratio} | {ratio99} |"


def pooled_client(url: str) -> Redis:
    """A raw client built like the cache adapter's (redis-py's blocking pool, of one connection
    here, the same timeouts, no retries): the cache's "same connection" baseline."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=1,
        timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


async def run(url: str, n: int) -> list[str]:
    single = Redis.from_url(url, single_connection_client=True)
    raw = pooled_client(url)
    limiter = RedisRateLimiter(url, prefix="bench:", timeout=TIMEOUT, max_connections=1)
    cache = RedisCache(url, prefix="bench:", timeout=TIMEOUT, max_connections=1)
    memory_limiter = MemoryRateLimiter()
    memory_cache = MemoryCache()
    for adapter in (limiter, cache, memory_limiter, memory_cache):
        await adapter.start()
    try:
        await cache.set("hit", VALUE, 3600)
        await raw.set("bench:raw", VALUE)
        await memory_cache.set("hit", VALUE, 3600)

        def decide() -> Awaitable[object]:
            return limiter.acquire("k", RATE)

        def hit() -> Awaitable[object]:
            return cache.get("hit")

        ping, decision = await paired(single.ping, decide, n)
        adapter_ping, decision_b = await paired(limiter.ping, decide, n)
        pooled_get, cache_hit = await paired(lambda: raw.get("bench:raw"), hit, n)
        single_get, cache_hit_b = await paired(lambda: single.get("bench:raw"), hit, n)
        memory_decision = await single_stats(lambda: memory_limiter.acquire("k", RATE), n)
        memory_hit = await single_stats(lambda: memory_cache.get("hit"), n)
    finally:
        for adapter in (limiter, cache, memory_limiter, memory_cache):
            await adapter.close()
        await raw.aclose()
        await single.aclose()

    return [
        "| operation | p50 µs | p99 µs | p50 ratio | p99 ratio |",
        "|---|---:|---:|---:|---:|",
        row("raw PING, single-connection client (baseline)", ping),
        row("limiter decision (EVALSHA GCRA)", decision, ping),
        row("limiter ping(): PING on the adapter's connection (baseline)", adapter_ping),
        row("limiter decision (EVALSHA GCRA)", decision_b, adapter_ping),
        row("raw GET 2 KB, pooled client like the cache's (baseline)", pooled_get),
        row("cache hit 2 KB", cache_hit, pooled_get),
        row("raw GET 2 KB, single-connection client (baseline)", single_get),
        row("cache hit 2 KB", cache_hit_b, single_get),
        row("in-process limiter decision", memory_decision),
        row("in-process cache hit", memory_hit),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Limiter and cache latency against raw Redis.")
    parser.add_argument("-n", type=int, default=5000, help="samples per operation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_service(Path(tmp)) as server:
        lines = asyncio.run(run(server.url, args.n))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
