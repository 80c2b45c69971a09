"""Backpressure: a tenant over its backlog limit gets 429 + Retry-After; others write on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tenantsearch.app import create_app
from tenantsearch.settings import load_settings
from tests.support.api import ADMIN_KEY, Api


@pytest.fixture
async def no_indexer_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API without an indexer, so that writes stay queued."""
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        max_tenant_backlog_documents=25,
    )
    app = create_app(settings, run_indexer=False)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_a_flooding_tenant_is_refused_and_others_are_not(
    no_indexer_client: httpx.AsyncClient,
) -> None:
    api = Api(no_indexer_client)
    _, flood = await api.tenant()
    _, calm = await api.tenant()
    for auth in (flood, calm):
        await api.collection(auth, "c")
    statuses = []
    for batch in range(6):
        docs = [{"id": f"{batch}-{i}", "title": "x"} for i in range(10)]
        r = await no_indexer_client.post("/v1/collections/c/documents", json=docs, headers=flood)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "tenant_backlog_full"
            assert int(r.headers["Retry-After"]) > 0
    assert statuses[:2] == [202, 202]
    assert 429 in statuses
    r = await no_indexer_client.post(
        "/v1/collections/c/documents", json=[{"id": "1", "title": "y"}], headers=calm
    )
    assert r.status_code == 202
