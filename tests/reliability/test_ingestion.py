"""The production write path under faults: ``tenantsearch api`` and ``tenantsearch indexer`` as
real processes (``tests/support/stack.py``) on real RabbitMQ, PostgreSQL and OpenSearch.

- R1: indexers SIGKILLed and the broker restarted while clients write: every write answered 202
  is searchable exactly once.
- R2: an indexer killed after the bulk succeeded and before the ack (the
  ``after_apply_before_ack`` failpoint): the redelivery duplicates nothing and no older version
  ever replaces a newer one.
- R3: the engine refuses one document for good and turns a whole bulk away with 429s for a
  while: only that document fails, with a message on its task; the rest land.
- R4: an undecodable message and a write that keeps failing retryably reach the dead letters
  (with their reasons, the latter after the retry budget) while other writes keep flowing.
- R5: the engine rejects writes for a while: a tenant's backlog fills up to its limit (then 429
  with Retry-After), another tenant is unaffected, the API's memory stays flat, and everything
  accepted lands once the engine takes writes again.
- R6: many concurrent updates of one document while indexers die: the highest version wins
  everywhere, and the write accepted last is what everyone reads.

Each test has its own PostgreSQL database, RabbitMQ queue and OpenSearch index prefix on the
session's servers (R1 has a private broker, since it restarts it). Tests marked ``xfail(strict)``
pin known bugs: they pass once the bug is fixed, and then the mark must go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text

from tenantsearch.api.deps import Services
from tenantsearch.app import create_app, indexer_config
from tenantsearch.ingest.indexer import Indexer
from tenantsearch.ingest.messages import Message, encode
from tenantsearch.queue.port import Delivery, QueueUnavailable
from tenantsearch.queue.rabbitmq import RabbitMqQueue
from tenantsearch.search.opensearch_mapping import engine_id
from tenantsearch.search.port import CollectionRef
from tenantsearch.search.query import WriteOp
from tenantsearch.search.schema import CollectionSchema, FieldSpec, FieldType
from tenantsearch.settings import Settings, load_settings
from tenantsearch.store.db import create_engine
from tests.reliability.conftest import StackFactory
from tests.support.api import ADMIN_KEY, Api, bearer, unique
from tests.support.opensearch import drop_prefix, make_backend, new_prefix
from tests.support.opensearch_node import http_request
from tests.support.services import RabbitMq
from tests.support.stack import Stack, new_queue_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

log = logging.getLogger(__name__)

ADMIN = bearer(ADMIN_KEY)
FIELDS: dict[str, Any] = {
    "title": {"type": "text", "language": "en"},
    "tag": {"type": "keyword"},
    "n": {"type": "integer"},
}
FINISHED = ("succeeded", "failed")
RETRY_STATUSES = (429, 503)


# -- helpers -------------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, every: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)


class Engine:
    """Direct HTTP to the OpenSearch node, under one stack's index prefix: what the engine holds,
    whatever the service says."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    async def call(
        self, method: str, path: str, body: object | None = None, expect: Sequence[int] = (200,)
    ) -> Any:
        _, parsed = await asyncio.to_thread(
            http_request, method, self.url + path, body, expect=expect
        )
        return parsed

    def alias(self, kind: str, tenant: str | None = None) -> str:
        placement = "shared" if tenant is None else f"tenant-{tenant}"
        return f"{self.prefix}-{placement}-{kind}"

    async def uid(self, tenant: str, collection: str) -> str:
        await self.call("POST", f"/{self.prefix}-registry/_refresh")
        found = await self.call(
            "POST",
            f"/{self.prefix}-registry/_search",
            {
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"tenant": tenant}},
                            {"term": {"name": collection}},
                            {"term": {"state": "active"}},
                        ]
                    }
                }
            },
        )
        [hit] = found["hits"]["hits"]
        return str(hit["_id"])

    @staticmethod
    def _live(tenant: str, uid: str) -> dict[str, Any]:
        return {
            "bool": {
                "filter": [{"term": {"_tenant": tenant}}, {"term": {"_collection": uid}}],
                "must_not": [{"term": {"_deleted": True}}],
            }
        }

    async def count(self, tenant: str, uid: str, *, dedicated: bool = False) -> int:
        alias = self.alias("read", tenant if dedicated else None)
        found = await self.call("POST", f"/{alias}/_count", {"query": self._live(tenant, uid)})
        return int(found["count"])

    async def duplicated_ids(self, tenant: str, uid: str) -> list[str]:
        """Document ids held by more than one engine document (across all of the prefix's
        indices)."""
        found = await self.call(
            "POST",
            f"/{self.prefix}-*/_search",
            {
                "size": 0,
                "query": self._live(tenant, uid),
                "aggs": {"ids": {"terms": {"field": "_doc_id", "min_doc_count": 2, "size": 100}}},
            },
        )
        return [str(b["key"]) for b in found["aggregations"]["ids"]["buckets"]]

    async def version(self, tenant: str, uid: str, doc_id: str) -> int | None:
        """The external version the engine holds for a document (None: not there)."""
        status, found = await asyncio.to_thread(
            http_request,
            "GET",
            f"{self.url}/{self.alias('read')}/_doc/{engine_id(uid, doc_id)}?routing={tenant}",
        )
        assert status in (200, 404), found
        return int(found["_version"]) if found.get("found") else None

    async def set_index_setting(self, alias: str, name: str, value: object) -> None:
        await self.call("PUT", f"/{alias}/_settings", {name: value})


class Client:
    """The public API of one stack for one tenant, counting every status it got. Writes answered
    429 or 503 are sent again (after Retry-After, bounded), as a well-behaved client does."""

    def __init__(self, http: httpx.AsyncClient, auth: dict[str, str], tenant: str) -> None:
        self.http = http
        self.auth = auth
        self.tenant = tenant
        self.statuses: Counter[int] = Counter()

    async def write(
        self,
        method: str,
        path: str,
        body: object,
        *,
        retry: bool = True,
        timeout: float = 120.0,
    ) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = await self.http.request(method, path, json=body, headers=self.auth)
            except httpx.TransportError:
                # No answer: the write may or may not have been queued; sending it again is safe
                # (same id, same content).
                self.statuses[0] += 1
                r = None
            if r is not None:
                self.statuses[r.status_code] += 1
                if r.status_code not in RETRY_STATUSES:
                    return r
                assert r.headers["content-type"].startswith("application/problem+json"), r.text
                if not retry:
                    return r
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path} still refused after {timeout}s")
            after = float(r.headers.get("Retry-After", "0.3")) if r is not None else 0.3
            await asyncio.sleep(min(after, 1.0) * random.uniform(0.5, 1.0))

    async def put(self, collection: str, doc: dict[str, Any], **kw: Any) -> httpx.Response:
        return await self.write(
            "PUT", f"/v1/collections/{collection}/documents/{doc['id']}", doc, **kw
        )

    async def post(self, collection: str, docs: list[dict[str, Any]], **kw: Any) -> httpx.Response:
        return await self.write("POST", f"/v1/collections/{collection}/documents", docs, **kw)

    async def tasks(self, ids: Sequence[str], *, timeout: float) -> dict[str, dict[str, Any]]:
        """The tasks ``ids`` once every one has finished."""
        found: dict[str, dict[str, Any]] = {}

        async def all_finished() -> bool:
            r = await self.http.get("/v1/tasks", params={"limit": 1000}, headers=self.auth)
            assert r.status_code == 200, r.text
            listed = {t["id"]: t for t in r.json()["tasks"]}
            found.update(listed)
            unlisted = [i for i in ids if i not in listed]  # beyond the newest 1000
            for task_id in [i for i in unlisted if found.get(i, {}).get("status") not in FINISHED]:
                r = await self.http.get(f"/v1/tasks/{task_id}", headers=self.auth)
                assert r.status_code == 200, r.text
                found[task_id] = r.json()
            return all(found[i]["status"] in FINISHED for i in ids)

        await eventually(all_finished, timeout=timeout, what=f"{len(ids)} tasks finished", every=1)
        return {i: found[i] for i in ids}

    async def all_ids(self, collection: str) -> list[str]:
        """Every document id of the collection, through the search API, page by page."""
        ids: list[str] = []
        cursor: str | None = None
        while True:
            r = await self.http.post(
                f"/v1/collections/{collection}/search",
                json={"q": "", "sort": [{"n": "asc"}], "limit": 1000, "cursor": cursor},
                headers=self.auth,
            )
            assert r.status_code == 200, r.text
            page = r.json()
            ids += [hit["id"] for hit in page["hits"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return ids

    async def get(self, collection: str, doc_id: str) -> httpx.Response:
        return await self.http.get(
            f"/v1/collections/{collection}/documents/{doc_id}", headers=self.auth
        )


@contextlib.asynccontextmanager
async def connect(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60.0, limits=limits) as http:
        yield http


async def new_tenant(
    http: httpx.AsyncClient, collection: str = "docs", tenant: str | None = None
) -> Client:
    tenant_id, auth = await Api(http).tenant(tenant)
    await Api(http).collection(auth, collection, FIELDS)
    return Client(http, auth, tenant_id)


async def dead_letters(http: httpx.AsyncClient, tenant: str) -> list[dict[str, Any]]:
    r = await http.get("/v1/admin/dead-letters", params={"tenant": tenant}, headers=ADMIN)
    assert r.status_code == 200, r.text
    letters: list[dict[str, Any]] = r.json()["dead_letters"]
    return letters


@contextlib.asynccontextmanager
async def queue_client(stack: Stack) -> AsyncIterator[RabbitMqQueue]:
    """The stack's queue through the adapter, to put crafted messages straight on it."""
    ledger = create_engine(stack.config.database_url)
    queue = RabbitMqQueue(
        stack.config.rabbitmq_url,
        ledger_engine=ledger,
        queue=stack.config.queue,
        max_deliveries=6,  # as the stack declared it: TENANTSEARCH_INDEXER_MAX_DELIVERIES + 1
    )
    await queue.start()
    try:
        yield queue
    finally:
        await queue.close()
        await ledger.dispose()


async def ledger_rows(database_url: str, queue: str) -> int:
    """Messages of ``queue`` the backlog ledger still counts."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.scalar(
                text("SELECT count(*) FROM queued_messages WHERE queue = :q"), {"q": queue}
            )
    finally:
        await engine.dispose()
    return int(rows or 0)


async def last_version(database_url: str) -> int:
    """The highest document version the API has handed out (one counter for every write)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(
                text("SELECT value FROM counters WHERE name = 'document_version'")
            )
    finally:
        await engine.dispose()
    return int(value or 0)


def document(i: int, tag: str = "r") -> dict[str, Any]:
    return {"id": f"d{i:05d}", "title": f"document {i} about item{i}", "tag": tag, "n": i}


# -- R1 ------------------------------------------------------------------------------------------


R1_DOCUMENTS = 2400
R1_CLIENTS = 6


async def test_r1_accepted_writes_land_exactly_once_through_indexer_kills_and_a_broker_restart(
    private_broker: RabbitMq, make_stack: StackFactory, opensearch_url: str, database_url: str
) -> None:
    stack = make_stack(
        broker_url=private_broker.url,
        # While the broker is down a write answers 503 after this, instead of 10 s.
        env={"TENANTSEARCH_RABBITMQ_PUBLISH_TIMEOUT_SECONDS": "2"},
    )
    await asyncio.to_thread(stack.start, indexers=2)
    engine = Engine(opensearch_url, stack.config.index_prefix)
    rng = random.Random(1)
    async with connect(stack) as http:
        client = await new_tenant(http)
        uid = await engine.uid(client.tenant, "docs")
        docs = [document(i) for i in range(R1_DOCUMENTS)]
        batches: list[list[dict[str, Any]]] = []
        start = 0
        while start < len(docs):
            size = rng.choice([1, 1, 2, 5, 10, 20])
            batches.append(docs[start : start + size])
            start += size
        todo = iter(batches)
        accepted: dict[str, str] = {}  # document id -> task id of its 202
        gate = [0.25]  # senders pause at this fraction until the faults below move it on
        events: list[str] = []
        began = time.monotonic()

        def event(what: str) -> None:
            events.append(f"{time.monotonic() - began:5.1f}s {len(accepted):4d} accepted: {what}")

        async def sender() -> None:
            for batch in todo:
                await eventually(
                    lambda: asyncio.sleep(0, len(accepted) < gate[0] * R1_DOCUMENTS),
                    timeout=120,
                    what="the gate opened",
                    every=0.02,
                )
                if len(batch) == 1:
                    r = await client.put("docs", batch[0])
                else:
                    r = await client.post("docs", batch)
                assert r.status_code == 202, r.text
                accepted.update({d["id"]: r.json()["id"] for d in batch})
                await asyncio.sleep(0.02)

        async def reached(fraction: float) -> None:
            await eventually(
                lambda: asyncio.sleep(0, len(accepted) >= fraction * R1_DOCUMENTS),
                timeout=120,
                what=f"{fraction:.0%} accepted",
                every=0.02,
            )

        async def kill_an_indexer() -> None:
            """SIGKILL a working indexer and start a replacement (ready some seconds later)."""

            async def one_ready() -> bool:
                return any(p.ready() for p in stack.live_indexers)

            await eventually(one_ready, timeout=60, what="a ready indexer")
            victim = next(p for p in stack.live_indexers if p.ready())
            await asyncio.to_thread(stack.kill_indexer, victim)
            event("indexer killed")
            await asyncio.to_thread(stack.start_indexer, wait=False)

        async def chaos() -> None:
            await reached(0.2)
            await kill_an_indexer()
            gate[0] = 0.45
            await reached(0.35)
            await kill_an_indexer()
            await reached(0.45)

            async def all_ready() -> bool:
                # An indexer started while the broker is down waits for it (test_outages.py O2);
                # here every one must be consuming before the broker goes away.
                return all(p.ready() for p in stack.live_indexers)

            await eventually(all_ready, timeout=60, what="every indexer ready")
            await asyncio.to_thread(private_broker.stop)
            event("broker stopped")
            gate[0] = 0.8  # writes go on while the broker is down: 503, sent again
            await asyncio.to_thread(private_broker.start)
            event("broker back")
            await reached(0.7)
            await kill_an_indexer()
            gate[0] = 1.0
            await reached(0.9)
            await kill_an_indexer()

        await asyncio.gather(chaos(), *(sender() for _ in range(R1_CLIENTS)))
        event("all accepted")
        assert len(accepted) == R1_DOCUMENTS
        assert client.statuses[503] > 0, ("no write met the broker outage", events)

        async def all_indexed() -> bool:
            return await engine.count(client.tenant, uid) >= R1_DOCUMENTS

        await eventually(all_indexed, timeout=60, what="every accepted document indexed", every=1)
        event("all indexed")
        tasks = await client.tasks(sorted(set(accepted.values())), timeout=60)

        # Exactly once, as the engine sees it and as the service lists it.
        assert await engine.count(client.tenant, uid) == R1_DOCUMENTS
        assert await engine.duplicated_ids(client.tenant, uid) == []
        listed = await client.all_ids("docs")
        assert len(listed) == len(set(listed)) == R1_DOCUMENTS
        assert set(listed) == set(accepted)
        r = await client.get("docs", "d01234")
        assert r.status_code == 200
        assert r.json() == document(1234)

        bad = {i: t for i, t in tasks.items() if t["status"] != "succeeded" or t["failed"]}
        assert not bad, bad
        assert await dead_letters(http, client.tenant) == []
        # Nothing left counted as queued (the backlog limit would otherwise drift up).
        assert await ledger_rows(database_url, stack.config.queue) == 0
        event("checked")
        log.info("R1 timeline (%s):\n%s", dict(client.statuses), "\n".join(events))


# -- R2 ------------------------------------------------------------------------------------------


async def test_r2_a_kill_between_bulk_and_ack_redelivers_without_duplicates_or_regression(
    make_stack: StackFactory, opensearch_url: str, database_url: str
) -> None:
    stack = make_stack()
    failpoint = {"TENANTSEARCH_FAILPOINT": "after_apply_before_ack"}
    await asyncio.to_thread(stack.start, indexers=1, indexer_env=failpoint)
    [doomed] = stack.indexers
    engine = Engine(opensearch_url, stack.config.index_prefix)
    async with connect(stack) as http:
        client = await new_tenant(http)
        uid = await engine.uid(client.tenant, "docs")
        first = [document(i, tag="v1") for i in range(50)]
        r = await client.post("docs", first)
        assert r.status_code == 202, r.text
        v1_task = r.json()["id"]

        # The failpoint: the bulk went through, then the process died before anything was
        # settled (no task outcome, no ack: the task says processing).
        await eventually(
            lambda: asyncio.sleep(0, not doomed.running()), timeout=30, what="failpoint kill"
        )
        assert doomed.process is not None
        assert doomed.process.returncode == -9
        assert '"failpoint_kill"' in doomed.output()
        assert await engine.count(client.tenant, uid) == 50
        v1_version = await engine.version(client.tenant, uid, "d00000")
        assert v1_version is not None
        r = await http.get(f"/v1/tasks/{v1_task}", headers=client.auth)
        assert r.json()["status"] == "processing"  # taken, not finished

        # A newer version of one document is queued behind the unacked batch.
        v2 = {**document(0, tag="v2"), "title": "the second version"}
        r = await client.put("docs", v2)
        assert r.status_code == 202, r.text
        v2_task = r.json()["id"]

        await asyncio.to_thread(stack.start_indexer)
        tasks = await client.tasks([v1_task, v2_task], timeout=60)
        assert tasks[v1_task]["status"] == "succeeded"
        assert tasks[v1_task]["failed"] == 0
        assert tasks[v1_task]["indexed"] == 50  # the redelivery was counted once
        assert tasks[v2_task]["status"] == "succeeded"

        assert await engine.count(client.tenant, uid) == 50
        assert await engine.duplicated_ids(client.tenant, uid) == []
        assert sorted(await client.all_ids("docs")) == sorted(d["id"] for d in first)
        v2_version = await engine.version(client.tenant, uid, "d00000")
        assert v2_version is not None
        assert v2_version > v1_version
        assert (await client.get("docs", "d00000")).json() == v2
        assert (await client.get("docs", "d00001")).json() == first[1]

        # The old batch delivered once more, late (as after another crash): nothing moves back.
        async with queue_client(stack) as queue:
            late = Message(
                kind="documents",
                task_id=unique("late"),
                tenant=client.tenant,
                collection="docs",
                uid=uid,
                ops=[WriteOp(d["id"], v1_version + i, d) for i, d in enumerate(first)],
            )
            await queue.publish(encode(late), tenant=client.tenant, documents=len(first))

            async def drained() -> bool:
                return (await queue.backlog(client.tenant)).messages == 0

            await eventually(drained, timeout=30, what="the late copy consumed")
        assert await engine.version(client.tenant, uid, "d00000") == v2_version
        assert (await client.get("docs", "d00000")).json() == v2
        found = await http.post(
            "/v1/collections/docs/search", json={"q": "second"}, headers=client.auth
        )
        assert [h["id"] for h in found.json()["hits"]] == ["d00000"]
        assert await engine.count(client.tenant, uid) == 50


# -- R3 ------------------------------------------------------------------------------------------


async def test_r3_one_refused_document_fails_alone_and_overloaded_bulks_are_retried(
    make_stack: StackFactory, opensearch_url: str
) -> None:
    stack = make_stack()
    await asyncio.to_thread(stack.start)
    engine = Engine(opensearch_url, stack.config.index_prefix)
    write_index = engine.alias("write")
    async with connect(stack) as http:
        tenant_id, auth = await Api(http).tenant()
        fields = {**FIELDS, "code": {"type": "keyword"}}  # slot f.kw_0 (fields sorted by name)
        await Api(http).collection(auth, "docs", fields)
        client = Client(http, auth, tenant_id)
        uid = await engine.uid(tenant_id, "docs")
        # A value our validation accepts (any string for a keyword) that the engine refuses for
        # good: the slot is mapped as a number in this test's index, so "not-a-number" cannot
        # be parsed (a mapper_parsing_exception for that one item of the bulk).
        await engine.call(
            "PUT",
            f"/{write_index}/_mapping",
            {"properties": {"f": {"properties": {"kw_0": {"type": "long"}}}}},
        )
        # And the engine turns every write away with 429 for a while (the flood-stage block).
        await engine.set_index_setting(write_index, "index.blocks.read_only_allow_delete", True)

        batches = [
            [{**document(b * 20 + i), "code": str(1000 + b * 20 + i)} for i in range(20)]
            for b in range(5)
        ]
        bad = {"id": "bad", "title": "refused by the engine", "code": "not-a-number", "n": -1}
        batches[2][7] = bad
        task_ids = []
        for batch in batches:
            r = await client.post("docs", batch)
            assert r.status_code == 202, r.text
            task_ids.append(r.json()["id"])

        await eventually(
            lambda: asyncio.sleep(0, '"write_retry"' in stack.indexer_logs()),
            timeout=30,
            what="the indexer met the 429s and scheduled a retry",
        )
        await asyncio.sleep(1)
        await engine.set_index_setting(write_index, "index.blocks.read_only_allow_delete", None)

        tasks = await client.tasks(task_ids, timeout=60)
        for i, task_id in enumerate(task_ids):
            task = tasks[task_id]
            assert task["status"] == "succeeded", task
            if i == 2:
                assert (task["indexed"], task["failed"]) == (19, 1), task
                assert task["errors"] == [
                    {"id": "bad", "message": "a field value was refused by the search engine"}
                ]
            else:
                assert (task["indexed"], task["failed"], task["errors"]) == (20, 0, []), task

        good = {d["id"] for batch in batches for d in batch} - {"bad"}
        assert await engine.count(tenant_id, uid) == len(good) == 99
        assert set(await client.all_ids("docs")) == good
        assert (await client.get("docs", "bad")).status_code == 404
        assert (await client.get("docs", "d00041")).json() == batches[2][1]
        assert await dead_letters(http, tenant_id) == []


# -- R4 ------------------------------------------------------------------------------------------


async def test_r4_poison_messages_reach_the_dead_letters_while_other_writes_flow(
    make_stack: StackFactory, opensearch_url: str, database_url: str
) -> None:
    poisoned_tenant = unique("poisoned")
    stack = make_stack(
        env={
            "TENANTSEARCH_OPENSEARCH_DEDICATED_TENANTS": poisoned_tenant,
            # Refused writes are retried this long (default: minutes) before they are given up.
            "TENANTSEARCH_INDEXER_RETRY_BUDGET_SECONDS": "5",
        }
    )
    await asyncio.to_thread(stack.start)
    engine = Engine(opensearch_url, stack.config.index_prefix)
    async with connect(stack) as http:
        healthy = await new_tenant(http)
        poisoned = await new_tenant(http, tenant=poisoned_tenant)
        # Every write of the poisoned tenant (its own index) is turned away with 429, for good.
        await engine.set_index_setting(
            engine.alias("write", poisoned_tenant), "index.blocks.read_only_allow_delete", True
        )

        async with queue_client(stack) as queue:
            await queue.publish(b"\x00\xff not a message {", tenant="garbage", documents=0)
        r = await poisoned.put("docs", document(1, tag="poison"))
        assert r.status_code == 202, r.text
        poisoned_task = r.json()["id"]

        latencies: list[float] = []
        stop = asyncio.Event()

        async def healthy_writer() -> None:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                r = await healthy.http.put(
                    f"/v1/collections/docs/documents/d{i:05d}?wait=true",
                    json=document(i),
                    headers=healthy.auth,
                )
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "succeeded"
                latencies.append(time.monotonic() - started)
                i += 1

        writer = asyncio.create_task(healthy_writer())
        try:

            async def both_dead() -> bool:
                assert not writer.done() or writer.exception() is None
                return (
                    len(await dead_letters(http, "garbage")) == 1
                    and len(await dead_letters(http, poisoned_tenant)) == 1
                )

            await eventually(both_dead, timeout=60, what="both poison messages dead-lettered")
        finally:
            stop.set()
            await writer

        [garbage] = await dead_letters(http, "garbage")
        assert garbage["reason"].startswith("cannot decode message")
        assert garbage["attempts"] == 1
        assert garbage["task_id"] is None
        [letter] = await dead_letters(http, poisoned_tenant)
        assert letter["task_id"] == poisoned_task
        assert letter["document_ids"] == ["d00001"]
        assert re.fullmatch(r"gave up after [5-9]s of retries: .*busy.*", letter["reason"]), letter
        assert letter["attempts"] == 1  # retried in the indexer: no delivery was spent on it
        r = await http.get(f"/v1/tasks/{poisoned_task}", headers=poisoned.auth)
        assert r.json()["status"] == "failed"
        assert letter["reason"] in str(r.json()["errors"])

        # Meanwhile the other tenant's writes went through, one after another, promptly.
        assert len(latencies) >= 5, latencies
        assert max(latencies) < 10, latencies
        assert await healthy.all_ids("docs") == [f"d{i:05d}" for i in range(len(latencies))]

        # Once the engine takes the writes again, a replay of the dead letter lands.
        await engine.set_index_setting(
            engine.alias("write", poisoned_tenant), "index.blocks.read_only_allow_delete", None
        )
        r = await http.post(f"/v1/admin/dead-letters/{letter['id']}/replay", headers=ADMIN)
        assert r.status_code == 200, r.text
        tasks = await poisoned.tasks([poisoned_task], timeout=30)
        assert tasks[poisoned_task]["status"] == "succeeded"
        assert (await poisoned.get("docs", "d00001")).json() == document(1, tag="poison")
        assert await dead_letters(http, poisoned_tenant) == []


# -- R5 ------------------------------------------------------------------------------------------


R5_BACKLOG_LIMIT = 40
R5_BLOCK_SECONDS = 8.0


async def test_r5_backpressure_while_the_engine_rejects_writes(
    make_stack: StackFactory, opensearch_url: str, database_url: str
) -> None:
    stack = make_stack(
        env={
            "TENANTSEARCH_MAX_TENANT_BACKLOG_DOCUMENTS": str(R5_BACKLOG_LIMIT),
            # The indexer's retry budget for refused writes is left at its default (minutes),
            # far longer than the block: every accepted write is kept.
        }
    )
    await asyncio.to_thread(stack.start)
    engine = Engine(opensearch_url, stack.config.index_prefix)
    write_index = engine.alias("write")
    async with connect(stack) as http:
        flooding = await new_tenant(http)
        other = await new_tenant(http)
        uid = await engine.uid(flooding.tenant, "docs")
        other_uid = await engine.uid(other.tenant, "docs")
        # Warm the API up (first requests import and cache) before measuring its memory.
        for tenant in (flooding, other):
            r = await tenant.write(
                "PUT", "/v1/collections/docs/documents/d99999?wait=true", document(99_999)
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "succeeded"
        rss_before = stack.api.rss_bytes()

        await engine.set_index_setting(write_index, "index.blocks.read_only_allow_delete", True)
        blocked_at = time.monotonic()
        accepted: dict[str, str] = {}  # during the block
        refusals: list[httpx.Response] = []
        filler = "x" * 8000  # ~8 KB per write, so memory kept per refused request would show
        counter = iter(range(100_000))

        async def flood() -> None:
            while len(refusals) < 400:
                i = next(counter)
                doc = {**document(i), "title": f"document {i} {filler}"}
                r = await flooding.put("docs", doc, retry=False)
                if r.status_code == 202:
                    accepted[doc["id"]] = r.json()["id"]
                else:
                    assert r.status_code == 429, r.text
                    refusals.append(r)

        await asyncio.gather(*(flood() for _ in range(4)))
        # Every refusal says why and when to come back.
        assert {r.json()["code"] for r in refusals} == {"tenant_backlog_full"}
        assert all(int(r.headers["Retry-After"]) > 0 for r in refusals)
        # The backlog filled up to the limit (this process's own count keeps the overshoot to
        # the writes in flight at that moment) and nothing was indexed meanwhile.
        assert R5_BACKLOG_LIMIT - 4 <= len(accepted) <= R5_BACKLOG_LIMIT + 4, len(accepted)
        assert await engine.count(flooding.tenant, uid) == 1

        # Another tenant is not held back by the first one's backlog.
        other_ids = []
        for i in range(10):
            r = await other.put("docs", document(i, tag="other"), retry=False)
            assert r.status_code == 202, r.text
            other_ids.append(r.json()["id"])

        # The engine keeps refusing for a while longer; the indexers keep retrying.
        await asyncio.sleep(max(0.0, R5_BLOCK_SECONDS - (time.monotonic() - blocked_at)))
        assert await engine.count(flooding.tenant, uid) == 1
        assert await dead_letters(http, flooding.tenant) == []
        rss_after = stack.api.rss_bytes()
        assert rss_after - rss_before < 64 * 1024**2, (rss_before, rss_after)

        await engine.set_index_setting(write_index, "index.blocks.read_only_allow_delete", None)
        tasks = await flooding.tasks(sorted(set(accepted.values())), timeout=75)
        assert all(t["status"] == "succeeded" for t in tasks.values()), tasks
        other_tasks = await other.tasks(other_ids, timeout=30)
        assert all(t["status"] == "succeeded" for t in other_tasks.values()), other_tasks
        assert await engine.count(flooding.tenant, uid) == len(accepted) + 1
        assert set(await flooding.all_ids("docs")) == {*accepted, "d99999"}
        assert await engine.count(other.tenant, other_uid) == 10 + 1
        # The backlog drained, so the flooding tenant may write again.
        r = await flooding.put("docs", document(100_001), retry=True, timeout=30)
        assert r.status_code == 202
        assert await ledger_rows(database_url, stack.config.queue) <= 1


# -- R6 ------------------------------------------------------------------------------------------


R6_WRITES = 200
R6_CLIENTS = 10
R6_BURST = 20


def hot_version(k: int) -> dict[str, Any]:
    """The k-th write of the one contended document; ``w<k>x`` is a word only it contains."""
    return {"id": "hot", "title": f"hot document w{k:04d}x", "tag": "hot", "n": k}


async def test_r6_the_last_accepted_write_of_a_contended_document_wins_everywhere(
    make_stack: StackFactory, opensearch_url: str, database_url: str
) -> None:
    stack = make_stack(env={"TENANTSEARCH_RABBITMQ_PREFETCH": "5"})  # spread over both indexers
    await asyncio.to_thread(stack.start, indexers=2)
    engine = Engine(opensearch_url, stack.config.index_prefix)
    async with connect(stack) as http:
        client = await new_tenant(http)
        uid = await engine.uid(client.tenant, "docs")
        order = iter(range(R6_WRITES))
        accepted: list[tuple[int, str]] = []  # (k, task id) in the order the 202s came back
        observed: list[int] = []  # engine versions of "hot", polled during the storm

        async def writer() -> None:
            for k in order:
                r = await client.put("docs", hot_version(k))
                assert r.status_code == 202, r.text
                accepted.append((k, r.json()["id"]))
                await asyncio.sleep(random.uniform(0, 0.05))

        async def watch(stop: asyncio.Event) -> None:
            while not stop.is_set():
                version = await engine.version(client.tenant, uid, "hot")
                if version is not None:
                    observed.append(version)
                await asyncio.sleep(0.02)

        async def chaos() -> None:
            for at in (R6_WRITES // 3, 2 * R6_WRITES // 3):
                await eventually(
                    lambda at=at: asyncio.sleep(0, len(accepted) >= at),  # type: ignore[misc]
                    timeout=60,
                    what=f"{at} writes accepted",
                    every=0.02,
                )
                await asyncio.to_thread(stack.kill_indexer)
                await asyncio.to_thread(stack.start_indexer, wait=False)

        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(stop))
        await asyncio.gather(chaos(), *(writer() for _ in range(R6_CLIENTS)))
        tasks = await client.tasks([t for _, t in accepted], timeout=90)
        assert all(t["status"] == "succeeded" for t in tasks.values())

        # The highest version handed out won, whatever order the indexers applied them in.
        highest = await last_version(database_url)
        assert await engine.version(client.tenant, uid, "hot") == highest
        current = (await client.get("docs", "hot")).json()
        assert current in [hot_version(k) for k in range(R6_WRITES)]

        # A write sent after every other one was acknowledged is the last one, everywhere, even
        # with earlier writes still in flight and delivered again: a burst, an indexer killed
        # while it applies it, then the final write.
        burst = [hot_version(k) for k in range(R6_WRITES, R6_WRITES + R6_BURST)]
        responses = await asyncio.gather(*(client.put("docs", doc) for doc in burst))
        assert all(r.status_code == 202 for r in responses)
        await asyncio.to_thread(stack.kill_indexer)
        final = hot_version(R6_WRITES + R6_BURST)
        r = await http.put(
            "/v1/collections/docs/documents/hot?wait=true", json=final, headers=client.auth
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded"
        stop.set()
        await watcher
        assert observed == sorted(observed), "a version went back"

        assert (await client.get("docs", "hot")).json() == final
        assert await engine.version(client.tenant, uid, "hot") == await last_version(database_url)
        assert await engine.count(client.tenant, uid) == 1
        assert await engine.duplicated_ids(client.tenant, uid) == []
        checks = [(final["n"], ["hot"]), (current["n"], []), (0, []), (R6_WRITES, [])]
        for k, hits in checks:
            found = await http.post(
                "/v1/collections/docs/search", json={"q": f"w{k:04d}x"}, headers=client.auth
            )
            assert [h["id"] for h in found.json()["hits"]] == hits, k
        found = await http.post(
            "/v1/collections/docs/search",
            json={"q": "hot", "filter": {"n": {"eq": final["n"]}}},
            headers=client.auth,
        )
        assert found.json()["total"] == 1


# -- known bugs ----------------------------------------------------------------------------------
# Each test states the behaviour the design asks for and fails today; ``strict`` makes it fail
# the run once the bug is fixed, so the mark is removed then.


@contextlib.asynccontextmanager
async def in_process_api(
    tmp_path: Path, opensearch_url: str, rabbitmq_url: str, database_url: str
) -> AsyncIterator[tuple[Settings, Services, Client, Engine]]:
    """The API in this process (no indexer), on the real services: tests that need to drive an
    :class:`Indexer` step by step build their own beside it."""
    prefix = new_prefix()
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        database_url=database_url,
        search_backend="opensearch",
        opensearch_url=opensearch_url,
        opensearch_index_prefix=prefix,
        opensearch_replicas=0,
        queue_backend="rabbitmq",
        rabbitmq_url=rabbitmq_url,
        rabbitmq_queue=new_queue_name(),
    )
    app = create_app(settings, run_indexer=False)
    try:
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                client = await new_tenant(http)
                services: Services = app.state.services
                yield settings, services, client, Engine(opensearch_url, prefix)
    finally:
        await asyncio.to_thread(drop_prefix, opensearch_url, prefix)


async def test_r5_a_write_block_is_waited_out_not_taken_as_a_refusal(opensearch_url: str) -> None:
    prefix = new_prefix()
    backend = make_backend(opensearch_url, prefix)
    await backend.start()
    try:
        schema = CollectionSchema({"title": FieldSpec(FieldType.TEXT, "en")})
        ref = CollectionRef("acme", "docs", unique("uid"), schema)
        await backend.ensure_collection(ref)
        engine = Engine(opensearch_url, prefix)
        await engine.set_index_setting(engine.alias("write"), "index.blocks.write", True)
        [result] = await backend.apply(ref, [WriteOp("1", 1, {"title": "blocked for now"})])
        assert result.outcome == "retryable", result
    finally:
        await backend.close()
        await asyncio.to_thread(drop_prefix, opensearch_url, prefix)


@pytest.mark.timeout(90)
async def test_r4_a_message_that_breaks_the_indexer_is_dead_lettered_and_its_batch_lands(
    tmp_path: Path, opensearch_url: str, rabbitmq_url: str, database_url: str
) -> None:
    async with in_process_api(tmp_path, opensearch_url, rabbitmq_url, database_url) as (
        settings,
        services,
        client,
        engine,
    ):
        uid = await engine.uid(client.tenant, "docs")
        poison = {
            "v": 1,
            "kind": "documents",
            "task": unique("poison"),
            "tenant": client.tenant,
            "collection": "docs",
            "uid": uid,
            "ops": [{"id": "p", "ver": 1, "doc": "not an object"}],
        }
        await services.queue.publish(orjson.dumps(poison), tenant=client.tenant, documents=1)
        r = await client.post("docs", [document(1), document(2)])  # the same batch
        assert r.status_code == 202, r.text
        indexer = Indexer(
            services.queue, services.backend, services.store, indexer_config(settings)
        )
        running = asyncio.create_task(indexer.run())
        try:
            tasks = await client.tasks([r.json()["id"]], timeout=20)
            assert tasks[r.json()["id"]]["status"] == "succeeded"

            async def settled() -> bool:  # refused or dead-lettered, but no longer held
                return (await services.queue.backlog(client.tenant)).messages == 0

            await eventually(settled, timeout=30, what="the poison message settled")
        finally:
            indexer.stop()
            await running


class AckLost(RabbitMqQueue):
    """The connection to the broker is lost right when the indexer acks (fault injection)."""

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        raise QueueUnavailable("the connection was lost before the ack (injected)")


async def test_r2_a_write_delivered_again_after_its_progress_was_recorded_is_counted_once(
    tmp_path: Path, opensearch_url: str, rabbitmq_url: str, database_url: str
) -> None:
    async with in_process_api(tmp_path, opensearch_url, rabbitmq_url, database_url) as (
        settings,
        services,
        client,
        _,
    ):
        r = await client.post("docs", [document(1), document(2), document(3)])
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        config = indexer_config(settings)
        ledger = create_engine(database_url)
        lossy = AckLost(
            rabbitmq_url, ledger_engine=ledger, queue=settings.rabbitmq_queue, max_deliveries=6
        )
        await lossy.start()
        try:
            with pytest.raises(QueueUnavailable):
                await Indexer(lossy, services.backend, services.store, config).run_once(5.0)
        finally:
            await lossy.close()  # the unacked delivery goes back to the queue
            await ledger.dispose()
        assert await Indexer(services.queue, services.backend, services.store, config).run_once(5.0)
        task = (await client.tasks([task_id], timeout=10))[task_id]
        assert (task["received"], task["indexed"], task["failed"]) == (3, 3, 0), task
