"""Writes retried with the same ``Idempotency-Key`` after an API process died or while the broker
stalls: a 202 only ever answers a write the queue holds, and no task stays unfinished.

``tenantsearch api`` processes and an indexer as real processes on real RabbitMQ, PostgreSQL and
OpenSearch (``tests/support/stack.py``); the API processes' publish lease is 2 s here (30 s by
default), so taking over a dead process's write is quick.

- K1: an API process dies at each point between recording a write and forgetting its pending
  publish (``TENANTSEARCH_FAILPOINT``: after the task commit, after the backlog ledger write,
  after the broker's confirm); the client sends the same request with the same key to another API
  process: it answers 202 with the same task, and the write is applied exactly once.
- K2: an API process dies after the task commit and the client never retries: the sweeper of the
  other process publishes the write, and its task succeeds.
- K3: the broker is frozen (SIGSTOP) while a write waits on it and a same-key retry goes to the
  other API process: neither answers 202 before the broker is resumed, the task never says
  ``failed``, and the write is applied once.
- K4: API processes SIGKILLed in turn while writers send batches with keys, retrying each on the
  other process until a 202: every acknowledged batch is applied exactly once, every task
  succeeded, none stays queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import StackFactory
from tests.reliability.test_ingestion import (
    Client,
    Engine,
    dead_letters,
    document,
    eventually,
    new_tenant,
)
from tests.reliability.test_outages import each_landed_once, events
from tests.support.services import RabbitMq
from tests.support.stack import Stack, TenantsearchProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

QUICK_TAKEOVER = {
    "TENANTSEARCH_PUBLISH_LEASE_SECONDS": "2",
    "TENANTSEARCH_PUBLISH_SWEEP_SECONDS": "0.5",
    "TENANTSEARCH_RABBITMQ_PUBLISH_TIMEOUT_SECONDS": "1.5",
    "TENANTSEARCH_LOG_LEVEL": "info",  # for publish_taken_over and publish_swept
}
FINISHED = ("succeeded", "failed")
ACCEPTED = (200, 202)
"""A write's answers once it is queued: 202, or 200 for a same-key replay of a finished task."""


def batch(first: int, size: int, tag: str = "k") -> list[dict[str, Any]]:
    return [document(i, tag) for i in range(first, first + size)]


async def keyed_post(
    http: httpx.AsyncClient, api: TenantsearchProcess, client: Client, key: str, docs: object
) -> httpx.Response:
    return await http.post(
        f"{api.url}/v1/collections/docs/documents",
        json=docs,
        headers={**client.auth, "Idempotency-Key": key},
    )


async def unfinished_tasks(client: Client) -> list[dict[str, Any]]:
    r = await client.http.get("/v1/tasks", params={"limit": 1000}, headers=client.auth)
    assert r.status_code == 200, r.text
    return [t for t in r.json()["tasks"] if t["status"] not in FINISHED]


@contextlib.asynccontextmanager
async def session(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30.0) as http:
        yield http


async def two_apis(
    make_stack: StackFactory, doomed_env: dict[str, str], broker_url: str | None = None
) -> tuple[Stack, TenantsearchProcess]:
    """A stack (its API and an indexer) with a second API process started with ``doomed_env``."""
    stack = make_stack(env=QUICK_TAKEOVER, broker_url=broker_url)
    await asyncio.to_thread(stack.start, indexers=1)
    doomed = stack.add_api(env=doomed_env)
    await asyncio.to_thread(doomed.start)
    return stack, doomed


async def until_dead(process: TenantsearchProcess) -> None:
    async def dead() -> bool:
        return not process.running()

    await eventually(dead, timeout=30, what=f"{process.command} killed by its failpoint")


# -- K1 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failpoint", ["after_task_commit", "after_ledger_write", "after_publish_before_record"]
)
async def test_k1_a_same_key_retry_after_an_api_died_is_applied_once(
    make_stack: StackFactory, failpoint: str
) -> None:
    stack, doomed = await two_apis(make_stack, {"TENANTSEARCH_FAILPOINT": failpoint})
    engine = Engine(stack.config.opensearch_url, stack.config.index_prefix)
    async with session(stack) as http:
        client = await new_tenant(http)
        uid = await engine.uid(client.tenant, "docs")
        docs = batch(1, 20)
        with pytest.raises(httpx.TransportError):
            await keyed_post(http, doomed, client, "k1", docs)
        await until_dead(doomed)
        assert events(doomed, "failpoint_kill")[0]["failpoint"] == failpoint

        r = await keyed_post(http, stack.api, client, "k1", docs)
        assert r.status_code in ACCEPTED, r.text
        task_id = r.json()["id"]
        again = await keyed_post(http, stack.api, client, "k1", docs)
        assert again.status_code in ACCEPTED
        assert again.json()["id"] == task_id
        await each_landed_once(
            http, client, engine, uid, {d["id"]: task_id for d in docs}, timeout=60
        )
        assert await unfinished_tasks(client) == []
        if failpoint != "after_publish_before_record":
            # The first attempt never reached the broker: the retry published it, or the
            # sweeper of its process did, once the dead process's lease ended.
            assert events(stack.api, "publish_taken_over") or events(stack.api, "publish_swept")


# -- K2 ------------------------------------------------------------------------------------------


async def test_k2_the_sweeper_publishes_a_write_whose_api_died(make_stack: StackFactory) -> None:
    stack, doomed = await two_apis(make_stack, {"TENANTSEARCH_FAILPOINT": "after_task_commit"})
    engine = Engine(stack.config.opensearch_url, stack.config.index_prefix)
    async with session(stack) as http:
        client = await new_tenant(http)
        uid = await engine.uid(client.tenant, "docs")
        docs = batch(1, 5)
        with pytest.raises(httpx.TransportError):
            await http.post(
                f"{doomed.url}/v1/collections/docs/documents", json=docs, headers=client.auth
            )
        await until_dead(doomed)
        [task] = await unfinished_tasks(client)  # recorded, and not acknowledged
        await each_landed_once(
            http, client, engine, uid, {d["id"]: task["id"] for d in docs}, timeout=60
        )
        assert await unfinished_tasks(client) == []
        assert events(stack.api, "publish_swept")


# -- K3 ------------------------------------------------------------------------------------------


async def test_k3_a_same_key_retry_while_the_broker_is_frozen_waits_for_it(
    make_stack: StackFactory, private_broker: RabbitMq
) -> None:
    stack, other = await two_apis(make_stack, {}, broker_url=private_broker.url)
    engine = Engine(stack.config.opensearch_url, stack.config.index_prefix)
    async with session(stack) as http:
        client = await new_tenant(http)
        uid = await engine.uid(client.tenant, "docs")
        docs = batch(1, 10)
        statuses: list[str] = []
        answers: list[tuple[float, int]] = []  # (when, status) of every attempt
        thawed_at: list[float] = []

        async def attempt_until_202(api: TenantsearchProcess, delay: float) -> str:
            await asyncio.sleep(delay)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                r = await keyed_post(http, api, client, "k3", docs)
                answers.append((time.monotonic(), r.status_code))
                if r.status_code in ACCEPTED:
                    return str(r.json()["id"])
                assert r.status_code == 503, r.text
                await asyncio.sleep(0.2)
            raise AssertionError("no 202 within 60 s")

        async def watch_task(stop: asyncio.Event) -> None:
            while not stop.is_set():
                r = await http.get("/v1/tasks", headers=client.auth)
                statuses.extend(t["status"] for t in r.json()["tasks"])
                await asyncio.sleep(0.1)

        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_task(stop))
        private_broker.freeze()
        try:
            first = asyncio.create_task(attempt_until_202(stack.api, 0))
            retry = asyncio.create_task(attempt_until_202(other, 0.3))
            await asyncio.sleep(5)  # both attempts wait on the broker, then on each other
            assert not first.done()
            assert not retry.done()
        finally:
            thawed_at.append(time.monotonic())
            private_broker.thaw()
        ids = await asyncio.gather(first, retry)
        assert ids[0] == ids[1]
        assert [s for when, s in answers if s in ACCEPTED and when < thawed_at[0]] == []
        await each_landed_once(
            http, client, engine, uid, {d["id"]: ids[0] for d in docs}, timeout=60
        )
        stop.set()
        await watcher
        assert "failed" not in statuses
        assert await unfinished_tasks(client) == []


# -- K4 ------------------------------------------------------------------------------------------

K4_SECONDS = 20.0


async def test_k4_api_processes_killed_under_same_key_retries_lose_nothing(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(env=QUICK_TAKEOVER)
    await asyncio.to_thread(stack.start, indexers=1)
    second = stack.add_api()
    await asyncio.to_thread(second.start)
    apis = [stack.api, second]
    engine = Engine(stack.config.opensearch_url, stack.config.index_prefix)
    rng = random.Random(22)
    limits = httpx.Limits(max_connections=32)
    async with session(stack) as admin, httpx.AsyncClient(timeout=10.0, limits=limits) as http:
        client = await new_tenant(admin)
        uid = await engine.uid(client.tenant, "docs")
        accepted: dict[str, str] = {}
        counter = iter(range(1, 1_000_000))
        stop = asyncio.Event()
        tries: list[int] = []

        async def writer() -> None:
            while not stop.is_set():
                size = rng.choice((1, 5, 20))
                docs = [document(next(counter), "k4") for _ in range(size)]
                key = uuid.uuid4().hex
                api = rng.choice(apis)
                deadline = time.monotonic() + 90
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        r = await keyed_post(http, api, client, key, docs)
                    except httpx.TransportError:
                        r = None
                    if r is not None and r.status_code in ACCEPTED:
                        break
                    assert r is None or r.status_code in (429, 503), r.text
                    assert time.monotonic() < deadline, "no 202 within 90 s"
                    api = apis[1 - apis.index(api)]  # the same request, to the other process
                    await asyncio.sleep(0.05)
                tries.append(attempts)
                accepted.update({d["id"]: r.json()["id"] for d in docs})

        async def chaos() -> None:
            kills = 0
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(1.0, 2.5))
                victim = apis[kills % 2]
                await asyncio.to_thread(victim.kill)
                kills += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                await asyncio.to_thread(victim.start)

        writers = [asyncio.create_task(writer()) for _ in range(8)]
        chaos_task = asyncio.create_task(chaos())
        await asyncio.sleep(K4_SECONDS)
        stop.set()
        await asyncio.gather(*writers)
        await chaos_task
        for api in apis:  # the last victim may still be starting
            if not api.running():
                await asyncio.to_thread(api.start)
        assert any(n > 1 for n in tries), "no write was retried: the kills hit nothing"
        await each_landed_once(admin, client, engine, uid, accepted, timeout=90)

        async def all_tasks_finished() -> bool:
            return await unfinished_tasks(client) == []

        # Tasks of requests nobody retried (killed before any answer) end too: the sweeper.
        await eventually(all_tasks_finished, timeout=30, what="every task finished")
        assert await dead_letters(admin, client.tenant) == []
