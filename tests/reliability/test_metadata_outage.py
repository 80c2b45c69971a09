"""M1: reads go on through a metadata-database outage; writes fail cleanly and resume.

A stack (one ``api``, one ``indexer``) on a PostgreSQL server of the test's own (durable: the keys
made just before the kill must survive it, as in production). Three tenants
search and read their documents by id, with keys they used before, while PostgreSQL is
SIGKILLed and kept down for ``M1_DOWN_SECONDS`` (far past the caches' 1 s refresh): every read
answers 200 with the tenant's own documents (served from the last verified metadata, within
``TENANTSEARCH_METADATA_STALE_SECONDS``), ``/readyz`` answers 200 ``degraded`` and the
``tenantsearch_metadata_stale_seconds`` gauge shows the age of what is served; writes answer
503 ``problem+json`` with ``Retry-After``, never 500 nor 202; a key this process never saw
answers 503, never 401 or 200.
Once the database is back, writes are accepted again within seconds and a key revoked then stops
working.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.test_ingestion import FIELDS, document, eventually
from tests.support.api import Api
from tests.support.services import Postgres
from tests.support.stack import Stack, StackConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

M1_DOWN_SECONDS = 60.0
TENANTS = 3
DOCS_PER_TENANT = 6


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_m1_reads_answer_through_a_database_outage_and_writes_resume(
    tmp_path: Path, opensearch_url: str, rabbitmq_url: str, durable_postgres: Postgres
) -> None:
    config = StackConfig(
        opensearch_url,
        rabbitmq_url,
        durable_postgres.url,
        env={"TENANTSEARCH_METADATA_STALE_SECONDS": "300"},
    )
    with Stack(tmp_path, config) as stack:
        await asyncio.to_thread(stack.start, indexers=1)
        async with httpx.AsyncClient(base_url=stack.url, timeout=15.0) as http:
            api = Api(http)
            tenants: list[tuple[str, dict[str, str]]] = []
            for _ in range(TENANTS):
                tenant, auth = await api.tenant()
                await api.collection(auth, "docs", FIELDS)
                docs = [document(i, tag=tenant) for i in range(DOCS_PER_TENANT)]
                await api.index(auth, "docs", docs)
                tenants.append((tenant, auth))
            first_tenant, first_auth = tenants[0]
            doomed = await api.key(first_auth, role="reader")  # used before, revoked after
            unseen = await api.key(first_auth, role="reader")  # never used before the outage
            doomed_id = doomed["Authorization"].removeprefix("Bearer ").split("_")[1]

            async def read_all(auth: dict[str, str], tenant: str) -> None:
                """A search and a read by id; each must show this tenant's documents only."""
                r = await api.search(auth, "docs", q="document item1", limit=50)
                assert r.status_code == 200, r.text
                hits = r.json()["hits"]
                assert len(hits) == DOCS_PER_TENANT, hits
                assert {h["document"]["tag"] for h in hits} == {tenant}
                r = await http.get("/v1/collections/docs/documents/d00003", headers=auth)
                assert r.status_code == 200, r.text
                assert r.json()["tag"] == tenant

            for tenant, auth in tenants:
                await read_all(auth, tenant)
            await read_all(doomed, first_tenant)

            reads = 0
            degraded: dict[str, Any] = {}
            stale_age = 0.0
            await asyncio.to_thread(durable_postgres.kill)
            down_at = time.monotonic()
            try:
                while time.monotonic() - down_at < M1_DOWN_SECONDS:
                    for tenant, auth in tenants:
                        await read_all(auth, tenant)
                        reads += 1
                    await read_all(doomed, first_tenant)
                    r = await http.put(
                        "/v1/collections/docs/documents/late", json={"n": 1}, headers=first_auth
                    )
                    assert r.status_code == 503, r.text
                    assert r.headers["content-type"] == "application/problem+json"
                    assert int(r.headers["Retry-After"]) >= 1
                    r = await api.search(unseen, "docs", q="document")
                    assert r.status_code == 503, r.text  # never verified: no guess
                    if time.monotonic() - down_at > M1_DOWN_SECONDS * 0.75 and not degraded:
                        r = await http.get("/readyz")
                        assert r.status_code == 200, r.text
                        degraded = r.json()
                        r = await http.get("/metrics", headers=api.admin)
                        assert r.status_code == 200, r.text
                        stale_age = metric(r.text, "tenantsearch_metadata_stale_seconds")
                    await asyncio.sleep(0.2)
            finally:
                await asyncio.to_thread(durable_postgres.start)
            back_at = time.monotonic()
            assert reads >= TENANTS * 50, reads
            # Seen during the outage: ready for reads, degraded, serving metadata this old.
            assert degraded["status"] == "degraded", degraded
            assert degraded["unavailable"] == ["metadata"], degraded
            assert M1_DOWN_SECONDS / 2 <= stale_age <= M1_DOWN_SECONDS + 10, stale_age

            async def write_accepted() -> bool:
                r = await http.put(
                    "/v1/collections/docs/documents/late", json={"n": 2}, headers=first_auth
                )
                assert r.status_code in (202, 503), r.text
                return r.status_code == 202

            await eventually(write_accepted, timeout=30, what="a write accepted again")
            resumed_after = time.monotonic() - back_at
            assert resumed_after < 15, resumed_after

            r = await http.delete(f"/v1/keys/{doomed_id}", headers=first_auth)
            assert r.status_code == 204, r.text
            r = await api.search(doomed, "docs", q="document")
            assert r.status_code == 401, r.text
            r = await api.search(unseen, "docs", q="document")
            assert r.status_code == 200, r.text
            for tenant, auth in tenants:
                await read_all(auth, tenant)
