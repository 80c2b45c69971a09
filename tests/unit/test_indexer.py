"""The indexer's lanes and its handling of failures, on the embedded adapters (SQLite queue and
metadata, Tantivy) with faults injected into the engine's answers.

- an engine outage does not spend delivery attempts: the batch is held and lands afterwards;
- a stop during an outage gives the batch back to the queue;
- ops the engine keeps turning away are retried for the retry budget, then dead-lettered, and they
  do not hold back another collection of the same batch;
- a message that makes the engine call raise is retried alone and dead-lettered past
  ``max_deliveries``, while the rest of its batch lands;
- lanes apply batches at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tenantsearch.api.deps import Services
from tenantsearch.app import create_app, indexer_config
from tenantsearch.ingest.indexer import Indexer, IndexerConfig, capped_backoff
from tenantsearch.search.collections import ref_of
from tenantsearch.search.port import BackendUnavailable, CollectionRef, SearchBackend
from tenantsearch.search.query import WriteOp, WriteResult
from tenantsearch.settings import load_settings
from tests.support.api import ADMIN_KEY, Api

pytestmark = pytest.mark.timeout(60)

FAST = {"retry_base_seconds": 0.02, "retry_max_seconds": 0.1}


class FaultyEngine:
    """The real backend, with faults chosen per collection name: ``down`` (every call raises
    BackendUnavailable, ping included), ``refuse`` (apply answers retryable for every op),
    ``crash`` (apply raises RuntimeError). Counts the applies and the most that ran at once."""

    def __init__(self, real: SearchBackend) -> None:
        self.real = real
        self.down = False
        self.refuse: set[str] = set()
        self.crash: set[str] = set()
        self.applies: list[str] = []
        self.slow_seconds = 0.0
        self.running = 0
        self.most_at_once = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def ping(self) -> None:
        if self.down:
            raise BackendUnavailable("injected: the engine cannot be reached")
        await self.real.ping()

    async def apply(self, ref: CollectionRef, ops: Sequence[WriteOp]) -> list[WriteResult]:
        self.applies.append(ref.name)
        if self.down:
            raise BackendUnavailable("injected: the engine cannot be reached")
        if ref.name in self.crash:
            raise RuntimeError("injected: the engine call broke")
        if ref.name in self.refuse:
            return [WriteResult(op.id, "retryable", "injected: the engine is busy") for op in ops]
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.slow_seconds:
                await asyncio.sleep(self.slow_seconds)
            return await self.real.apply(ref, ops)
        finally:
            self.running -= 1


class World:
    def __init__(self, services: Services, http: httpx.AsyncClient, base: IndexerConfig) -> None:
        self.services = services
        self.http = http
        self.base = base
        self.engine = FaultyEngine(services.backend)
        self.auth: dict[str, str] = {}
        self.tenant = ""

    def indexer(self, **config: Any) -> Indexer:
        return Indexer(
            self.services.queue,
            cast(SearchBackend, self.engine),
            self.services.store,
            replace(self.base, **{**FAST, **config}),
        )

    async def write(self, collection: str, doc_id: str) -> str:
        r = await self.http.post(
            f"/v1/collections/{collection}/documents",
            json=[{"id": doc_id, "title": f"document {doc_id}"}],
            headers=self.auth,
        )
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    async def task(self, task_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/tasks/{task_id}", headers=self.auth)
        assert r.status_code == 200, r.text
        task: dict[str, Any] = r.json()
        return task

    async def finished(self, task_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (task := await self.task(task_id))["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, task
            await asyncio.sleep(0.02)
        return task


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = load_settings(
        environ={}, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, log_level="warning"
    )
    app = create_app(settings, run_indexer=False)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            world = World(app.state.services, http, indexer_config(settings))
            world.tenant, world.auth = await Api(http).tenant()
            for name in ("open", "blocked"):
                await Api(http).collection(world.auth, name, {"title": {"type": "text"}})
            yield world


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(indexer: Indexer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(indexer.run())
    try:
        yield task
    finally:
        indexer.stop()
        await asyncio.wait_for(task, 10)


def test_capped_backoff_grows_to_its_cap_and_never_collapses() -> None:
    waits = [capped_backoff(n, 0.5, 10.0) for n in range(1, 40)]
    assert 0.25 <= waits[0] <= 0.5
    assert all(5.0 <= w <= 10.0 for w in waits[6:])


async def test_an_engine_outage_spends_no_delivery_attempts(world: World) -> None:
    world.engine.down = True
    task_id = await world.write("open", "a")
    async with running(world.indexer(max_deliveries=3)):
        # Far more tries than the delivery limit (3 here, 4 for the queue) would allow.
        await until(lambda: len(world.engine.applies) >= 12)
        assert (await world.task(task_id))["status"] == "processing"  # held by the indexer
        world.engine.down = False
        task = await world.finished(task_id)
    assert (task["status"], task["indexed"], task["failed"]) == ("succeeded", 1, 0)
    assert await world.services.queue.list_dead_letters() == []
    assert (await world.services.queue.backlog()).messages == 0


async def test_a_stop_during_an_outage_gives_the_batch_back(world: World) -> None:
    world.engine.down = True
    task_id = await world.write("open", "a")
    indexer = world.indexer()
    run = asyncio.create_task(indexer.run())
    await until(lambda: len(world.engine.applies) >= 2)
    indexer.stop()
    await asyncio.wait_for(run, 5)
    [again] = await world.services.queue.receive(10, 1.0)
    assert again.attempts == 2  # given back at once, not left leased
    await world.services.queue.retry(again, 0)
    world.engine.down = False
    async with running(world.indexer()):
        task = await world.finished(task_id)
    assert task["status"] == "succeeded"


async def test_refused_ops_are_retried_for_the_budget_without_holding_back_others(
    world: World,
) -> None:
    world.engine.refuse.add("blocked")
    blocked = await world.write("blocked", "b")
    fine = await world.write("open", "a")  # the same batch as the refused one
    started = time.monotonic()
    async with running(world.indexer(retry_budget_seconds=1.0)):
        task = await world.finished(fine)
        assert task["status"] == "succeeded"
        assert time.monotonic() - started < 1.0  # before the refused one was given up on
        failed = await world.finished(blocked)
    assert failed["status"] == "failed"
    assert time.monotonic() - started >= 1.0
    assert world.engine.applies.count("blocked") >= 4  # retried meanwhile
    [letter] = await world.services.queue.list_dead_letters()
    assert letter.attempts == 1  # held and retried in the indexer, not redelivered
    assert letter.reason.startswith("gave up after 1s of retries: injected: the engine is busy")
    assert letter.reason in str(failed["errors"])


async def test_refusals_during_an_outage_do_not_spend_the_budget(world: World) -> None:
    world.engine.refuse.add("blocked")
    world.engine.down = True
    blocked = await world.write("blocked", "b")
    async with running(world.indexer(retry_budget_seconds=0.5)):
        await asyncio.sleep(1.0)  # twice the budget, all of it down
        assert (await world.task(blocked))["status"] == "processing"
        world.engine.down = False
        world.engine.refuse.clear()
        task = await world.finished(blocked)
    assert task["status"] == "succeeded"
    assert await world.services.queue.list_dead_letters() == []


async def test_a_message_that_breaks_the_engine_call_is_dead_lettered_and_its_batch_lands(
    world: World,
) -> None:
    world.engine.crash.add("blocked")
    broken = await world.write("blocked", "b")
    fine = await world.write("open", "a")
    async with running(world.indexer(max_deliveries=3)):
        assert (await world.finished(fine))["status"] == "succeeded"
        failed = await world.finished(broken)
    assert failed["status"] == "failed"
    [letter] = await world.services.queue.list_dead_letters()
    assert letter.attempts == 3
    assert letter.reason == "failed 3 times: RuntimeError: injected: the engine call broke"


@pytest.mark.parametrize("lanes", [1, 2])
async def test_lanes_apply_batches_at_the_same_time(world: World, lanes: int) -> None:
    world.engine.slow_seconds = 0.2
    tasks = [await world.write("open", f"d{i}") for i in range(6)]
    async with running(world.indexer(concurrency=lanes, max_messages=1, linger_seconds=0)):
        for task_id in tasks:
            assert (await world.finished(task_id))["status"] == "succeeded"
    assert world.engine.most_at_once == lanes


async def test_a_put_older_than_the_tombstone_horizon_is_refused_not_resurrected(
    world: World,
) -> None:
    """A delete's tombstone is purged once the horizon passes it; a put accepted before it that
    arrives only then (a redelivery, a replayed dead letter) would bring the document back, so it
    is refused (permanent, on its task) instead. Retention 0 here: the horizon is where the last
    checkpoint put it."""
    queue = world.services.queue
    late_put = await world.write("open", "gone")  # version 1, held back below
    [held] = await queue.receive(10, 1.0)
    r = await world.http.delete("/v1/collections/open/documents/gone", headers=world.auth)
    assert r.status_code == 202, r.text
    indexer = world.indexer(task_retention=timedelta(0))
    assert await indexer.run_once(wait_seconds=1.0) == 1  # the delete: a tombstone
    now = datetime.now(UTC)
    await indexer.prune(now - timedelta(hours=1))  # a checkpoint after every version so far
    await indexer.prune(now)  # purges the tombstones below it
    collection = await world.services.store.get_collection(world.tenant, "open")
    assert collection is not None
    assert await world.services.backend.purge_tombstones([ref_of(collection)], 10**9) == 0

    await queue.retry(held, 0)
    assert await indexer.run_once(wait_seconds=1.0) == 1
    task = await world.finished(late_put)
    assert (task["status"], task["indexed"], task["failed"]) == ("failed", 0, 1)
    assert "older than the tombstone horizon" in task["errors"][0]["message"]
    r = await world.http.get("/v1/collections/open/documents/gone", headers=world.auth)
    assert r.status_code == 404  # still deleted

    # A write accepted now is above the horizon and lands.
    fresh = await world.write("open", "gone")
    assert await indexer.run_once(wait_seconds=1.0) == 1
    assert (await world.finished(fresh))["status"] == "succeeded"
