"""Benchmark of the Queue adapters: publish latency and consume throughput, SQLite vs RabbitMQ.

For each adapter, on private servers (``tests/support/services.py``: a RabbitMQ broker, and a
PostgreSQL server holding the RabbitMQ adapter's backlog ledger):

- publish: p50/p99 latency of one confirmed publish, one at a time, of a 10 KB and a 1 MB body
  (RabbitMQ: the ledger insert plus the publisher confirm);
- consume: messages/s of ``receive(100)`` + ``ack`` until a pre-filled queue is empty.

Usage: ``python -m bench.queues [--small 2000] [--large 200] [--consume 5000]``. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path

from tests.support.services import postgres, postgres_database, rabbitmq

from tenantsearch.queue.port import Queue
from tenantsearch.queue.rabbitmq import RabbitMqQueue
from tenantsearch.queue.sqlite import SqliteQueue
from tenantsearch.store.db import create_engine, migrate

SMALL = 10 * 1024
LARGE = 1024 * 1024


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def publish_latencies(queue: Queue, size: int, count: int) -> list[float]:
    body = os.urandom(size)
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await queue.publish(body, tenant="bench", documents=1)
        out.append(time.perf_counter() - started)
    return out


async def consume_rate(queue: Queue, size: int, count: int) -> float:
    body = os.urandom(size)
    for start in range(0, count, 50):
        await asyncio.gather(
            *(
                queue.publish(body, tenant="bench", documents=1)
                for _ in range(min(50, count - start))
            )
        )
    taken = 0
    started = time.perf_counter()
    while taken < count:
        batch = await queue.receive(100, 2.0)
        if not batch:
            break
        await queue.ack(batch)
        taken += len(batch)
    return taken / (time.perf_counter() - started)


async def drain(queue: Queue) -> None:
    while batch := await queue.receive(100, 0.2):
        await queue.ack(batch)


Opener = Callable[[], AbstractAsyncContextManager[Queue]]


async def measure(name: str, open_queue: Opener, args: argparse.Namespace) -> list[str]:
    rows = []
    async with open_queue() as queue:
        await publish_latencies(queue, SMALL, 50)  # warm up
        await drain(queue)
        for label, size, count in (("10 KB", SMALL, args.small), ("1 MB", LARGE, args.large)):
            samples = await publish_latencies(queue, size, count)
            rows.append(
                f"| {name} | publish {label} | {quantile(samples, 0.5) * 1000:.2f} ms"
                f" | {quantile(samples, 0.99) * 1000:.2f} ms | n={count},"
                f" mean {statistics.mean(samples) * 1000:.2f} ms |"
            )
            await drain(queue)
        for label, size, count in (
            ("10 KB", SMALL, args.consume),
            ("1 MB", LARGE, max(1, args.consume // 20)),
        ):
            rate = await consume_rate(queue, size, count)
            rows.append(f"| {name} | consume {label} | {rate:,.0f} msg/s | | n={count} |")
    return rows


async def main(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        rabbitmq(Path(tmp)) as broker,
        postgres(Path(tmp)) as pg,
        postgres_database(pg.url) as ledger_url,
    ):

        @asynccontextmanager
        async def sqlite_queue() -> AsyncIterator[Queue]:
            queue = SqliteQueue(Path(tmp) / "queue.db")
            await queue.start()
            try:
                yield queue
            finally:
                await queue.close()

        @asynccontextmanager
        async def rabbitmq_queue() -> AsyncIterator[Queue]:
            async with AsyncExitStack() as stack:
                engine = create_engine(ledger_url)
                stack.push_async_callback(engine.dispose)
                await migrate(engine)
                queue = RabbitMqQueue(
                    broker.url, ledger_engine=engine, queue=f"bench.{uuid.uuid4().hex[:6]}"
                )
                await queue.start()
                stack.push_async_callback(queue.close)
                yield queue

        rows = ["| adapter | what | p50 / rate | p99 | notes |", "|---|---|---|---|---|"]
        rows += await measure("sqlite", sqlite_queue, args)
        rows += await measure("rabbitmq (+ PostgreSQL ledger)", rabbitmq_queue, args)
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=2000, help="10 KB publishes timed")
    parser.add_argument("--large", type=int, default=200, help="1 MB publishes timed")
    parser.add_argument("--consume", type=int, default=5000, help="10 KB messages consumed")
    asyncio.run(main(parser.parse_args()))
