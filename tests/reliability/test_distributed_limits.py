"""Rate limits across API processes sharing one Redis, and through a Redis restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import bearer
from tests.support.server import ServerProcess
from tests.support.services import redis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ADMIN = "distributed-limits-admin-key"


def _env(redis_url: str) -> dict[str, str]:
    return {
        "TENANTSEARCH_ADMIN_KEY": ADMIN,
        "TENANTSEARCH_LIMITER_BACKEND": "redis",
        "TENANTSEARCH_REDIS_URL": redis_url,
        "TENANTSEARCH_LIMITER_TIMEOUT_SECONDS": "0.5",  # a cold burst opens many connections
    }


@pytest.fixture
def two_api_processes(tmp_path: Path, redis_url: str) -> Iterator[list[ServerProcess]]:
    data = tmp_path / "data"
    servers = [ServerProcess(data, _env(redis_url), command="api") for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _setup(server: ServerProcess, tenant: str, limits: dict[str, int]) -> dict[str, str]:
    admin = bearer(ADMIN)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert (
            c.post("/v1/tenants", json={"id": tenant, "name": tenant}, headers=admin).status_code
            == 201
        )
        key = c.post(f"/v1/tenants/{tenant}/keys", json={"role": "admin"}, headers=admin)
        auth = bearer(key.json()["key"])
        assert (
            c.put(
                "/v1/collections/c", json={"fields": {"t": {"type": "keyword"}}}, headers=auth
            ).status_code
            == 201
        )
        r = c.patch(f"/v1/tenants/{tenant}", json={"limits": limits}, headers=admin)
        assert r.status_code == 200, r.text
    return auth


async def _burst(urls: list[str], auth: dict[str, str], n: int) -> Counter[int]:
    limits = httpx.Limits(max_connections=100)
    clients = [httpx.AsyncClient(base_url=u, timeout=30, limits=limits) for u in urls]
    try:
        responses = await asyncio.gather(
            *(
                clients[i % len(clients)].post("/v1/collections/c/search", json={}, headers=auth)
                for i in range(n)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    return Counter(r.status_code for r in responses)


def test_two_processes_admit_exactly_the_limit(two_api_processes: list[ServerProcess]) -> None:
    first, second = two_api_processes
    auth = _setup(first, "flood", {"search_rate": 100, "search_burst": 0, "search_period": 3600})
    statuses = asyncio.run(_burst([first.url, second.url], auth, 500))
    assert statuses == Counter({200: 100, 429: 400})
    # Another tenant's budget is untouched by the flood.
    calm = _setup(second, "calm", {"search_rate": 50, "search_burst": 0, "search_period": 3600})
    assert asyncio.run(_burst([first.url, second.url], calm, 60)) == Counter({200: 50, 429: 10})


def test_a_redis_restart_costs_at_most_one_burst_and_no_5xx(tmp_path: Path) -> None:
    with redis(tmp_path / "private") as server:
        api = ServerProcess(tmp_path / "data", _env(server.url), command="api")
        api.start()
        try:
            auth = _setup(
                api, "restart", {"search_rate": 20, "search_burst": 0, "search_period": 3600}
            )
            assert asyncio.run(_burst([api.url], auth, 40)) == Counter({200: 20, 429: 20})
            server.stop()
            during = asyncio.run(_burst([api.url], auth, 20))
            assert during == Counter({200: 20})  # searches fail open while Redis is down
            server.start()
            after = asyncio.run(_burst([api.url], auth, 60))
            assert set(after) <= {200, 429}
            assert after[200] <= 20  # the lost state gives back one burst, no more
        finally:
            api.stop()
