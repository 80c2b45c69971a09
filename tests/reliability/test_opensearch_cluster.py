"""The service on a real 3-node OpenSearch cluster (1 replica) while one data node is SIGKILLed.

The node killed is the one holding the primary copy of the shared documents index (the hardest
case: the replica must be promoted before writes can land). While the cluster is yellow (the lost
replica waits for ``index.unassigned.node_left.delayed_timeout``, 1 minute by default):

- every search answers 200 with every document of the collection (``total == N``), text and
  filtered searches alike, and every ``GET`` of a document answers it;
- writes sent meanwhile (``?wait=true``, to a second collection of the same tenant, which lives on
  the same shard) all finish ``succeeded``, retried by the adapter and the indexer where needed.

Then the delayed timeout is set to 0s, the replicas are re-allocated on the two survivors, the
cluster turns green, and both collections hold exactly what was written, ids included. (The node
helper cannot restart a node on its old data directory: ``spawn_node`` deletes the node's home.)

Measured timings are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tenantsearch.app import create_app
from tenantsearch.search.opensearch_backend import OpenSearchBackend
from tenantsearch.settings import Settings, load_settings
from tests.support.api import ADMIN_KEY, Api
from tests.support.opensearch import new_prefix
from tests.support.opensearch_node import OpenSearchCluster, OpenSearchNode, start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

N = 400
"""Documents in the collection searched during the failure."""
BATCH = 100
WRITE_BATCHES = 6
WRITE_BATCH_SIZE = 25
YELLOW_SECONDS = 8.0
"""How long (at least) searches run against the yellow cluster."""
SEARCH_DEADLINE_S = 5.0
"""A search during the failure must answer within this (the adapter's timeout is 10 s)."""
GREEN_TIMEOUT_S = 60.0
FIELDS = {"title": {"type": "text", "language": "en"}, "tag": {"type": "keyword"}}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[OpenSearchCluster]:
    with start_cluster(tmp_path / "cluster", n=3, heap="384m") as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, cluster: OpenSearchCluster) -> Settings:
    return load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        indexer_linger_ms=0,
        search_backend="opensearch",
        opensearch_url=",".join(node.url for node in cluster),
        opensearch_index_prefix=new_prefix(),
        opensearch_shards=1,
        opensearch_replicas=1,
        # Every search must reach the engine (no result cache), and no rate limit may interfere.
        cache_backend="none",
        default_plan="unlimited",
    )


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager:
        backend = app.state.services.backend
        assert isinstance(backend, OpenSearchBackend)
        assert backend._client is not None
        connections = list(backend._client.transport.connection_pool.orig_connections)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=60
        ) as client:
            yield Api(client)
    # opensearch-py's AsyncTransport.close() closes only the pool's *live* connections: the
    # one to the killed node was marked dead, so its aiohttp session stays open (an unclosed
    # session ResourceWarning at exit, an error under this suite's warning filter). Close it.
    for connection in connections:
        session = getattr(connection, "session", None)
        if session is not None and not session.closed:
            report(f"closing a connection the backend left open: {connection.host}")
            await connection.close()


def report(line: str) -> None:
    """Measured timings, for the record (shown with ``pytest -s``)."""
    sys.stdout.write(f"\n[opensearch-cluster] {line}\n")


def docs(prefix: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "title": f"failover document number {i}", "tag": f"t{i % 4}"}
        for i in range(start, start + count)
    ]


def primary_holder(cluster: OpenSearchCluster, index: str) -> OpenSearchNode:
    """The node that holds the primary copy of ``index``'s (only) shard."""
    shards = cluster.request("GET", f"/_cat/shards/{index}?format=json&h=prirep,state,node")
    [node_name] = {s["node"] for s in shards if s["prirep"] == "p" and s["state"] == "STARTED"}
    return next(n for n in cluster if n.node_name == node_name)


async def all_ids(api: Api, auth: dict[str, str], collection: str) -> set[str]:
    r = await api.search(auth, collection, limit=1000)
    assert r.status_code == 200, r.text
    assert r.json()["next_cursor"] is None
    return {hit["id"] for hit in r.json()["hits"]}


async def wait_for_task(api: Api, auth: dict[str, str], task: dict[str, Any]) -> dict[str, Any]:
    """The task once finished (``?wait=true`` answers 202 if it takes longer than its limit)."""
    deadline = time.monotonic() + 120
    while task["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, task
        await asyncio.sleep(0.2)
        r = await api.client.get(f"/v1/tasks/{task['id']}", headers=auth)
        assert r.status_code == 200, r.text
        task = r.json()
    return task


@dataclass
class Observed:
    searches: int = 0
    gets: int = 0
    latencies: list[float] = field(default_factory=list)
    health: list[str] = field(default_factory=list)
    first_ok_after_kill: float | None = None
    writes: list[float] = field(default_factory=list)


async def test_searches_and_writes_survive_a_killed_node(
    api: Api, cluster: OpenSearchCluster, settings: Settings
) -> None:
    prefix = settings.opensearch_index_prefix
    _, auth = await api.tenant()
    await api.collection(auth, "stable", FIELDS)
    await api.collection(auth, "written", FIELDS)
    for start in range(0, N, BATCH):
        await api.index(auth, "stable", docs("s", BATCH, start))
    await api.index(auth, "written", docs("w", WRITE_BATCH_SIZE))
    await asyncio.to_thread(cluster.wait_for_health, "green", nodes=3, timeout=60)
    assert await all_ids(api, auth, "stable") == {d["id"] for d in docs("s", N)}

    # The node with the primary of the shared documents index (both collections live there).
    victim = primary_holder(cluster, f"{prefix}-shared-read")
    survivors = [n for n in cluster if n is not victim]
    manager = cluster.request("GET", "/_cat/cluster_manager?format=json")[0]["node"]
    killed_at = time.monotonic()
    victim.kill()
    report(f"killed {victim.node_name} (primary holder; cluster manager: {manager})")

    seen = Observed()
    writes_done = asyncio.Event()

    async def search_loop() -> None:
        rng = random.Random(5)
        last_health = 0.0
        while not writes_done.is_set() or time.monotonic() - killed_at < YELLOW_SECONDS:
            body: dict[str, Any] = rng.choice(
                [{}, {"q": "failover document"}, {"filter": {"tag": {"in": ["t0", "t1"]}}}]
            )
            expected = N // 2 if "filter" in body else N
            started = time.monotonic()
            r = await asyncio.wait_for(api.search(auth, "stable", **body), SEARCH_DEADLINE_S)
            seen.latencies.append(time.monotonic() - started)
            assert r.status_code == 200, r.text
            assert r.json()["total"] == expected, (body, r.json()["total"])
            if seen.first_ok_after_kill is None:
                seen.first_ok_after_kill = time.monotonic() - killed_at
            seen.searches += 1

            doc_id = f"s-{rng.randrange(N)}"
            r = await api.client.get(f"/v1/collections/stable/documents/{doc_id}", headers=auth)
            assert r.status_code == 200, r.text
            seen.gets += 1

            if time.monotonic() - last_health > 1.0:
                last_health = time.monotonic()
                health = await asyncio.to_thread(
                    survivors[0].request, "GET", "/_cluster/health?timeout=5s"
                )
                seen.health.append(f"{health['status']}/{health['number_of_nodes']}")
            await asyncio.sleep(0.02)

    async def write_loop() -> None:
        try:
            for b in range(1, WRITE_BATCHES + 1):
                started = time.monotonic()
                r = await api.client.post(
                    "/v1/collections/written/documents?wait=true",
                    json=docs("w", WRITE_BATCH_SIZE, b * WRITE_BATCH_SIZE),
                    headers=auth,
                )
                assert r.status_code in (200, 202), r.text
                task = await wait_for_task(api, auth, r.json())
                assert task["status"] == "succeeded", task
                assert task["indexed"] == WRITE_BATCH_SIZE, task
                assert task["failed"] == 0, task
                seen.writes.append(time.monotonic() - started)
                await asyncio.sleep(0.3)
        finally:
            writes_done.set()

    await asyncio.gather(search_loop(), write_loop())
    health = await asyncio.to_thread(survivors[0].request, "GET", "/_cluster/health")
    yellow_for = time.monotonic() - killed_at
    assert health["number_of_nodes"] == 2, health
    assert health["status"] == "yellow", health  # the replica still waits for delayed_timeout
    assert not any(h.startswith("red") for h in seen.health), seen.health

    # Re-allocate the lost replicas on the two survivors now, instead of after 1 minute.
    await asyncio.to_thread(
        survivors[0].request,
        "PUT",
        f"/{prefix}-*/_settings",
        {"index.unassigned.node_left.delayed_timeout": "0s"},
    )
    green_started = time.monotonic()
    await asyncio.to_thread(cluster.wait_for_health, "green", nodes=2, timeout=GREEN_TIMEOUT_S)
    green_after = time.monotonic() - green_started

    written = {d["id"] for d in docs("w", WRITE_BATCH_SIZE * (WRITE_BATCHES + 1))}
    assert await all_ids(api, auth, "written") == written
    assert await all_ids(api, auth, "stable") == {d["id"] for d in docs("s", N)}
    for body in ({}, {"q": "failover document"}):
        r = await api.search(auth, "written", **body)
        assert r.json()["total"] == len(written), r.text

    ordered = sorted(seen.latencies)
    report(
        f"yellow phase {yellow_for:.1f}s: {seen.searches} searches + {seen.gets} gets, all "
        f"complete; first search OK {seen.first_ok_after_kill:.3f}s after the kill; search "
        f"p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms; "
        f"{WRITE_BATCHES} write batches, {min(seen.writes):.2f}-{max(seen.writes):.2f}s each; "
        f"health seen {seen.health}; green {green_after:.1f}s after delayed_timeout=0s"
    )
