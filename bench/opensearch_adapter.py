"""Latency of the OpenSearch adapter called directly (no HTTP API, no queue), on a real node.

Measures ``apply`` of 1000 and of 10 documents with each refresh mode (``refresh=true`` on the
bulk vs ``refresh=wait_for``), and the latency of a few search shapes and of ``get``. Starts its
own node from ``tools/opensearch-node`` (full JIT, 512 MB heap) unless ``--url`` is given.
Usage: ``python -m bench.opensearch_adapter [--url http://127.0.0.1:9200] [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.support.opensearch import drop_prefix, new_prefix
from tests.support.opensearch_node import build_node, start_node

from tenantsearch.search.opensearch_backend import OpenSearchBackend, RefreshMode
from tenantsearch.search.port import CollectionRef
from tenantsearch.search.query import SearchQuery, SortKey, WriteOp, parse_filter
from tenantsearch.search.schema import parse_schema

SCHEMA = parse_schema(
    {
        "title": {"type": "text", "language": "en"},
        "body": {"type": "text", "language": "en"},
        "tag": {"type": "keyword"},
        "price": {"type": "float"},
        "n": {"type": "integer"},
        "at": {"type": "date"},
    }
)
WORDS = [f"w{i}" for i in range(2000)] + ["quick", "brown", "fox", "lamp", "red", "shoes"]


def document(rng: random.Random) -> dict[str, Any]:
    return {
        "title": " ".join(rng.choices(WORDS, k=6)),
        "body": " ".join(rng.choices(WORDS, k=60)),
        "tag": rng.sample([f"tag{i}" for i in range(20)], 2),
        "price": round(rng.random() * 100, 2),
        "n": rng.randint(0, 10_000),
        "at": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
    }


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    return f"{statistics.median(ordered) * 1000:.1f} ms (p90 {p90 * 1000:.1f} ms)"


async def timed(call: Callable[[], Awaitable[Any]], rounds: int, warmup: int) -> list[float]:
    out = []
    for i in range(rounds + warmup):
        start = time.perf_counter()
        await call()
        if i >= warmup:
            out.append(time.perf_counter() - start)
    return out


async def measure_mode(url: str, refresh: RefreshMode, rounds: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    rng = random.Random(7)
    prefix = new_prefix()
    backend = OpenSearchBackend([url], index_prefix=prefix, replicas=0, refresh=refresh)
    await backend.start()
    try:
        ref = CollectionRef("acme", "products", "u1", SCHEMA)
        await backend.ensure_collection(ref)
        version = 0

        async def apply(count: int) -> None:
            nonlocal version
            version += 1
            ops = [WriteOp(f"d{i}", version, document(rng)) for i in range(count)]
            results = await backend.apply(ref, ops)
            assert all(r.outcome == "applied" for r in results)

        for count in (1000, 10):
            seconds = await timed(functools.partial(apply, count), rounds, 3)
            rows.append((f"apply {count} docs, refresh={refresh}", summary(seconds)))
        if refresh != "true":
            return rows
        queries = {
            "search: 2 words, limit 20": SearchQuery(text="quick fox", limit=20),
            "search: 1 word + range filter + facet": SearchQuery(
                text="lamp", filter=parse_filter(SCHEMA, {"price": {"lt": 50}}), facets=("tag",)
            ),
            "search: match all, sort by price": SearchQuery(sort=(SortKey("price"),)),
            "search: 2 words + highlight": SearchQuery(text="red shoes", highlight=True),
        }
        for name, query in queries.items():
            search = functools.partial(backend.search, ref, query)
            rows.append((name, summary(await timed(search, rounds * 3, 10))))
        get = functools.partial(backend.get, ref, "d5")
        rows.append(("get", summary(await timed(get, rounds * 3, 10))))
        return rows
    finally:
        await backend.close()
        drop_prefix(url, prefix)


async def measure(url: str, rounds: int) -> list[tuple[str, str]]:
    rows = await measure_mode(url, "true", rounds)
    return rows + await measure_mode(url, "wait_for", rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="an OpenSearch node to use instead of starting one")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.url:
        rows = asyncio.run(measure(args.url, args.rounds))
    else:
        build_node()
        with (
            tempfile.TemporaryDirectory() as tmp,
            start_node(Path(tmp), node_name="bench", fast_start=False) as node,
        ):
            rows = asyncio.run(measure(node.url, args.rounds))
    print("| operation (adapter called directly) | median (p90) |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
