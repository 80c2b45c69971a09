"""Benchmark of the search result cache through the service: cache-hit p50 vs. uncached p50.

A real ``tenantsearch serve`` process (embedded Tantivy, in-process cache) on loopback holds
20,000 documents. The same set of queries is sent twice over one keep-alive connection (stdlib
client): the first pass misses the cache (the engine answers), the second hits it. Both passes
are measured in the same run; the ratio is hit/miss. Target: ≤ 0.2x.

Usage: ``python -m bench.search_cache [--docs 20000] [--queries 1000] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import httpx
from tests.support.server import ServerProcess

from bench.docs import write_section
from bench.embedded import (
    ADMIN_KEY,
    BATCH,
    FIELDS,
    make_docs,
    percentile,
    queries,
    search_latencies,
    wait_for_task,
)


async def load(server: ServerProcess, n: int) -> tuple[dict[str, str], list[str]]:
    docs, words = make_docs(n)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
        await c.post("/v1/tenants", json={"id": "bench", "name": "bench"}, headers=admin)
        await c.patch("/v1/tenants/bench", json={"plan": "unlimited"}, headers=admin)
        r = await c.post("/v1/tenants/bench/keys", json={"role": "admin"}, headers=admin)
        auth = {"Authorization": f"Bearer {r.json()['key']}"}
        await c.put("/v1/collections/c", json={"fields": FIELDS}, headers=auth)
        for i in range(0, len(docs), BATCH):
            r = await c.post("/v1/collections/c/documents", json=docs[i : i + BATCH], headers=auth)
            await wait_for_task(c, r.json()["id"], auth)
    return auth, words


def main() -> None:
    parser = argparse.ArgumentParser(description="Search result cache: hit vs miss p50.")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    body = {"filter": {"tag": {"in": ["tag1", "tag2", "tag3"]}}, "facets": ["tag"], "limit": 20}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", {"TENANTSEARCH_ADMIN_KEY": ADMIN_KEY})
        server.start()
        try:
            auth, words = asyncio.run(load(server, args.docs))
            # Distinct texts: the warm-up of search_latencies repeats the first 50, so skip them.
            texts = list(dict.fromkeys(queries(words, args.queries * 3)))[: args.queries]
            miss = search_latencies(server.port, auth, texts, body)[50:]
            hit = search_latencies(server.port, auth, texts, body)[50:]
        finally:
            server.stop()
    rows = [
        "| measure | cache miss (engine) | cache hit | ratio |",
        "|---|---|---|---|",
        f"| filtered + faceted search p50, ms | {statistics.median(miss):.2f} | "
        f"{statistics.median(hit):.2f} | {statistics.median(hit) / statistics.median(miss):.2f}x |",
        f"| p99, ms | {percentile(miss, 0.99):.2f} | {percentile(hit, 0.99):.2f} | "
        f"{percentile(hit, 0.99) / percentile(miss, 0.99):.2f}x |",
    ]
    text = (
        f"{args.docs:,} documents, {len(miss)} distinct queries sent twice through a `serve` "
        "process (in-process cache), sequential over one keep-alive connection.\n\n"
        + "\n".join(rows)
    )
    print(text)
    if args.write:
        write_section("cache", text, "## Search result cache (`bench/search_cache.py`)")


if __name__ == "__main__":
    main()
