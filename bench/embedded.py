"""Benchmark of the embedded default (Tantivy + SQLite), end to end over HTTP on loopback.

Measures, in one run and on the same generated data:

- ingest: documents/s from the first batch sent to the last task succeeded (API -> queue ->
  indexer -> searchable), against the baseline of the same documents applied straight to the
  Tantivy adapter in-process (no HTTP, no queue, no metadata);
- search: p50/p99 latency of a 1-2 word query (limit 20) and of a filtered, faceted query, as a
  client on loopback sees it, against the same queries run straight on the adapter.

Prints a Markdown table and, with ``--write``, replaces the embedded section of
docs/benchmarks.md. Usage: ``python -m bench.embedded [--docs 100000] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.server import ServerProcess

from bench.docs import write_section
from tenantsearch.search.port import CollectionRef
from tenantsearch.search.query import In, SearchQuery, WriteOp
from tenantsearch.search.schema import parse_schema
from tenantsearch.search.tantivy_backend import TantivyBackend

FIELDS = {
    "title": {"type": "text", "language": "en"},
    "body": {"type": "text", "language": "en"},
    "tag": {"type": "keyword"},
    "price": {"type": "float"},
    "n": {"type": "integer"},
}
TAGS = [f"tag{i}" for i in range(20)]
FILTER_TAGS = ["tag1", "tag2", "tag3"]
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
BATCH = 1000
CONCURRENCY = 4
WARMUP = 50


def vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


def make_docs(n: int, seed: int = 7) -> tuple[list[dict[str, Any]], list[str]]:
    rng = random.Random(seed)
    words = vocabulary(rng)
    # Zipf-like: a few words are common, most are rare, as in real text.
    weights = [1 / (i + 1) for i in range(len(words))]
    docs = []
    for i in range(n):
        docs.append(
            {
                "id": f"doc-{i}",
                "title": " ".join(rng.choices(words, weights, k=6)),
                "body": " ".join(rng.choices(words, weights, k=130)),  # ~1 KB per document
                "tag": rng.choice(TAGS),
                "price": round(rng.uniform(1, 500), 2),
                "n": i,
            }
        )
    return docs, words


def queries(words: list[str], n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    common = words[:300]
    return [" ".join(rng.sample(common, rng.randint(1, 2))) for _ in range(n)]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(ingest: float, plain: list[float], filtered: list[float]) -> dict[str, float]:
    return {
        "ingest": ingest,
        "p50": statistics.median(plain),
        "p99": percentile(plain, 0.99),
        "fp50": statistics.median(filtered),
        "fp99": percentile(filtered, 0.99),
    }


async def direct(docs: list[dict[str, Any]], words: list[str], n_queries: int) -> dict[str, float]:
    """The baseline: the same work on the Tantivy adapter in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = TantivyBackend(Path(tmp))
        await backend.start()
        ref = CollectionRef("bench", "c", "uid", parse_schema(FIELDS))
        await backend.ensure_collection(ref)
        started = time.perf_counter()
        for i in range(0, len(docs), BATCH * 5):
            chunk = docs[i : i + BATCH * 5]
            await backend.apply(ref, [WriteOp(d["id"], i + j + 1, d) for j, d in enumerate(chunk)])
        ingest = len(docs) / (time.perf_counter() - started)

        async def latencies(make: Any) -> list[float]:
            out = []
            for i, text in enumerate([*qs[:WARMUP], *qs]):
                started = time.perf_counter()
                await backend.search(ref, make(text))
                if i >= WARMUP:
                    out.append((time.perf_counter() - started) * 1000)
            return out

        qs = queries(words, n_queries)
        tags = In("tag", tuple(FILTER_TAGS))
        plain = await latencies(lambda q: SearchQuery(text=q, limit=20))
        filtered = await latencies(
            lambda q: SearchQuery(text=q, limit=20, filter=tags, facets=("tag",))
        )
        await backend.close()
    return summary(ingest, plain, filtered)


def search_latencies(
    port: int, auth: dict[str, str], texts: list[str], body: dict[str, Any]
) -> list[float]:
    """Milliseconds per search, sent one after the other over one keep-alive connection with the
    standard library's client (httpx's own overhead is of the order of the service time)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {**auth, "Content-Type": "application/json"}
    out = []
    for i, text in enumerate([*texts[:WARMUP], *texts]):
        payload = json.dumps({"q": text, **body})
        started = time.perf_counter()
        conn.request("POST", "/v1/collections/c/search", payload, headers)
        response = conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"search answered {response.status}")
        if i >= WARMUP:
            out.append(elapsed)
    conn.close()
    return out


async def wait_for_task(c: httpx.AsyncClient, task_id: str, auth: dict[str, str]) -> None:
    while True:
        status = (await c.get(f"/v1/tasks/{task_id}", headers=auth)).json()["status"]
        if status in ("succeeded", "failed"):
            return
        await asyncio.sleep(0.05)


async def drive(
    server: ServerProcess, docs: list[dict[str, Any]], words: list[str], n_queries: int
) -> dict[str, float]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    limits = httpx.Limits(max_connections=CONCURRENCY + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
        await c.post("/v1/tenants", json={"id": "bench", "name": "bench"}, headers=admin)
        # Measure the service, not the standard plan's rate limits.
        await c.patch("/v1/tenants/bench", json={"plan": "unlimited"}, headers=admin)
        r = await c.post("/v1/tenants/bench/keys", json={"role": "admin"}, headers=admin)
        auth = {"Authorization": f"Bearer {r.json()['key']}"}
        await c.put("/v1/collections/c", json={"fields": FIELDS}, headers=auth)
        batches = [docs[i : i + BATCH] for i in range(0, len(docs), BATCH)]
        task_ids: list[str] = []
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def send(batch: list[dict[str, Any]]) -> None:
            async with semaphore:
                r = await c.post("/v1/collections/c/documents", json=batch, headers=auth)
                r.raise_for_status()
                task_ids.append(r.json()["id"])

        started = time.perf_counter()
        await asyncio.gather(*(send(b) for b in batches))
        for task_id in task_ids:
            await wait_for_task(c, task_id, auth)
        ingest = len(docs) / (time.perf_counter() - started)
        total = (await c.post("/v1/collections/c/search", json={}, headers=auth)).json()["total"]
        if total != len(docs):
            raise RuntimeError(f"{total} documents searchable, {len(docs)} sent")

    qs = queries(words, n_queries)
    plain_body: dict[str, Any] = {"limit": 20}
    filtered_body = {"filter": {"tag": {"in": FILTER_TAGS}}, "facets": ["tag"], "limit": 20}
    plain = await asyncio.to_thread(search_latencies, server.port, auth, qs, plain_body)
    filtered = await asyncio.to_thread(search_latencies, server.port, auth, qs, filtered_body)
    return summary(ingest, plain, filtered)


async def service(docs: list[dict[str, Any]], words: list[str], n_queries: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", {"TENANTSEARCH_ADMIN_KEY": ADMIN_KEY})
        server.start()
        try:
            return await drive(server, docs, words, n_queries)
        finally:
            server.stop()


def report(n: int, svc: dict[str, float], base: dict[str, float]) -> str:
    rows = [
        ("ingest, documents/s (higher is better)", "ingest", "{:,.0f}"),
        ("search p50, ms", "p50", "{:.2f}"),
        ("search p99, ms", "p99", "{:.2f}"),
        ("filtered + faceted search p50, ms", "fp50", "{:.2f}"),
        ("filtered + faceted search p99, ms", "fp99", "{:.2f}"),
    ]
    lines = [
        f"{n:,} documents of ~1 KB (2 text fields in English, a keyword, a float, an integer); "
        f"batches of {BATCH}, {CONCURRENCY} concurrent senders; searches sequential over one "
        "keep-alive connection (stdlib client), limit 20.",
        "",
        "| measure | service (HTTP, end to end) | Tantivy adapter direct | ratio |",
        "|---|---|---|---|",
    ]
    for label, key, fmt in rows:
        lines.append(
            f"| {label} | {fmt.format(svc[key])} | {fmt.format(base[key])} | "
            f"{svc[key] / base[key]:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark of the embedded default.")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    print(f"generating {args.docs:,} documents...", flush=True)
    docs, words = make_docs(args.docs)
    print("baseline: the Tantivy adapter, in-process...", flush=True)
    base = asyncio.run(direct(docs, words, args.queries))
    print("service: tenantsearch serve over HTTP...", flush=True)
    svc = asyncio.run(service(docs, words, args.queries))
    text = report(args.docs, svc, base)
    print(text)
    if args.write:
        write_section(
            "embedded", text, "## Embedded default (`make bench-embedded`, `bench/embedded.py`)"
        )


if __name__ == "__main__":
    main()
