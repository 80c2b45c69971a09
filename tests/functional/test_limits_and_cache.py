"""Rate limits, quotas, usage, and the tenant-isolated search result cache, through HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tenantsearch.app import create_app
from tenantsearch.settings import load_settings
from tests.support.api import ADMIN_KEY, Api, bearer


async def _limits(api: Api, tenant: str, **limits: int | None) -> None:
    r = await api.client.patch(f"/v1/tenants/{tenant}", json={"limits": limits}, headers=api.admin)
    assert r.status_code == 200, r.text


async def test_rate_limit_headers_429_and_retry_after(api: Api, client: httpx.AsyncClient) -> None:
    tenant, auth = await api.tenant()
    await api.collection(auth, "c")
    r = await api.search(auth, "c")
    assert int(r.headers["RateLimit-Limit"]) == 300  # the standard plan: 100/s + 200 burst
    assert int(r.headers["RateLimit-Remaining"]) < 300
    await _limits(api, tenant, search_rate=1, search_burst=2)
    # The search above left the budget's next-allowed time up to 10 ms ahead (100/s); carried
    # into the new 1/s rate it would cost the burst its third request on a fast run.
    await asyncio.sleep(0.02)
    statuses = [(await api.search(auth, "c")).status_code for _ in range(4)]
    assert statuses[:3] == [200, 200, 200]
    r = await api.search(auth, "c")
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "rate_limited"
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= 2
    assert r.headers["RateLimit-Remaining"] == "0"
    # Budgets are separate: writes still pass while searches are refused.
    r = await client.put("/v1/collections/c/documents/1", json={}, headers=auth)
    assert r.status_code == 202
    await asyncio.sleep(wait)
    assert (await api.search(auth, "c")).status_code == 200


async def test_a_flooding_tenant_does_not_spend_another_tenants_budget(api: Api) -> None:
    flood, flood_auth = await api.tenant()
    _, calm_auth = await api.tenant()
    for auth in (flood_auth, calm_auth):
        await api.collection(auth, "c")
    await _limits(api, flood, search_rate=1, search_burst=0, search_period=3600)
    flooded = [(await api.search(flood_auth, "c")).status_code for _ in range(10)]
    assert flooded.count(200) == 1
    assert [(await api.search(calm_auth, "c")).status_code for _ in range(10)] == [200] * 10


async def test_daily_quota_document_quota_and_usage(api: Api, client: httpx.AsyncClient) -> None:
    tenant, auth = await api.tenant()
    await api.collection(auth, "c")
    await _limits(api, tenant, max_documents=3)
    await api.index(auth, "c", [{"id": "1"}, {"id": "2"}])
    r = await client.post(
        "/v1/collections/c/documents", json=[{"id": "3"}, {"id": "4"}], headers=auth
    )
    assert r.status_code == 403
    assert r.json()["code"] == "document_quota_exceeded"
    r = await client.get("/v1/usage", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["plan"] == "standard"
    assert body["limits"]["max_documents"] == 3
    assert body["usage"]["documents"] == 2
    assert body["usage"]["requests_today"] >= 1

    await _limits(api, tenant, daily_requests=body["usage"]["requests_today"] + 2)
    statuses = [(await client.get("/v1/collections", headers=auth)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = await client.get("/v1/collections", headers=auth)
    assert r.json()["code"] == "daily_quota_exceeded"
    assert int(r.headers["Retry-After"]) > 0

    r = await client.patch(
        f"/v1/tenants/{tenant}", json={"limits": {"bogus": 1}}, headers=api.admin
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["path"] == "/limits/bogus"
    r = await client.patch(f"/v1/tenants/{tenant}", json={"plan": "platinum"}, headers=api.admin)
    assert r.status_code == 400


async def test_cached_results_never_cross_tenants_or_filters_and_never_go_stale(
    api: Api, client: httpx.AsyncClient
) -> None:
    _, a = await api.tenant()
    _, b = await api.tenant()
    for auth, owner in ((a, "alice"), (b, "bob")):
        await api.collection(
            auth, "c", {"title": {"type": "text", "language": "en"}, "owner": {"type": "keyword"}}
        )
        await api.index(
            auth,
            "c",
            [
                {"id": "1", "title": "shared words", "owner": owner},
                {"id": "2", "title": "shared words", "owner": "other"},
            ],
        )
    query = {"q": "shared", "facets": ["owner"]}
    first_a = (await api.search(a, "c", **query)).json()
    again_a = (await api.search(a, "c", **query)).json()
    assert first_a == again_a
    b_result = (await api.search(b, "c", **query)).json()
    assert b_result["facets"]["owner"] == {"bob": 1, "other": 1}

    r = await client.post(
        "/v1/tokens", json={"collections": ["c"], "filter": {"owner": {"eq": "alice"}}}, headers=a
    )
    token = bearer(r.json()["token"])
    tok = (await api.search(token, "c", **query)).json()
    assert tok["total"] == 1
    assert tok["facets"]["owner"] == {"alice": 1}

    await api.index(a, "c", [{"id": "3", "title": "shared words", "owner": "alice"}])
    fresh = (await api.search(a, "c", **query)).json()
    assert fresh["total"] == 3
    assert (await api.search(token, "c", **query)).json()["total"] == 2
    assert (await api.search(b, "c", **query)).json()["total"] == 2

    metrics = (await client.get("/metrics", headers=api.admin)).text
    assert 'tenantsearch_search_cache_requests_total{outcome="hit"' in metrics


@pytest.fixture
async def unreachable_redis_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        limiter_backend="redis",
        redis_url="redis://127.0.0.1:9/0",  # the discard port: nothing answers
    )
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_limiter_outage_fails_open_for_search_and_closed_for_admin(
    unreachable_redis_client: httpx.AsyncClient,
) -> None:
    api = Api(unreachable_redis_client)
    _, auth = await api.tenant()  # the platform admin is not metered
    r = await unreachable_redis_client.get("/v1/collections", headers=auth)
    assert r.status_code == 200
    assert "RateLimit-Limit" not in r.headers
    r = await unreachable_redis_client.post("/v1/keys", json={"role": "reader"}, headers=auth)
    assert r.status_code == 503
    assert r.json()["code"] == "rate_limiter_unavailable"
    metrics = (await unreachable_redis_client.get("/metrics", headers=api.admin)).text
    assert "tenantsearch_rate_limiter_unavailable_total" in metrics
