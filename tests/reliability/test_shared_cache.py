"""API and indexer as separate processes sharing a Redis result cache: no stale results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.api import bearer
from tests.support.opensearch import drop_prefix, new_prefix
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ADMIN = "shared-cache-admin-key"


def test_a_separate_indexer_invalidates_the_api_processes_cache(
    tmp_path: Path, redis_url: str, opensearch_url: str
) -> None:
    prefix = new_prefix()
    env = {
        "TENANTSEARCH_ADMIN_KEY": ADMIN,
        "TENANTSEARCH_SEARCH_BACKEND": "opensearch",
        "TENANTSEARCH_OPENSEARCH_URL": opensearch_url,
        "TENANTSEARCH_OPENSEARCH_INDEX_PREFIX": prefix,
        "TENANTSEARCH_OPENSEARCH_REPLICAS": "0",
        "TENANTSEARCH_CACHE_BACKEND": "redis",
        "TENANTSEARCH_REDIS_URL": redis_url,
    }
    data = tmp_path / "data"
    api = ServerProcess(data, env, command="api")
    api.start()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTSEARCH_")}
    child_env.update(env, TENANTSEARCH_DATA_DIR=str(data), TENANTSEARCH_LOG_LEVEL="warning")
    with (tmp_path / "indexer.log").open("wb") as log:
        indexer = subprocess.Popen(
            [sys.executable, "-m", "tenantsearch", "indexer"],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=api.url, timeout=60) as c:
            admin = bearer(ADMIN)
            c.post("/v1/tenants", json={"id": "sc", "name": "sc"}, headers=admin)
            auth = bearer(
                c.post("/v1/tenants/sc/keys", json={"role": "admin"}, headers=admin).json()["key"]
            )
            c.put("/v1/collections/c", json={"fields": {"t": {"type": "text"}}}, headers=auth)

            def write(doc_id: str) -> None:
                r = c.put(
                    f"/v1/collections/c/documents/{doc_id}?wait=true",
                    json={"t": "cached words"},
                    headers=auth,
                )
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "succeeded"

            def total() -> int:
                r = c.post("/v1/collections/c/search", json={"q": "cached"}, headers=auth)
                assert r.status_code == 200, r.text
                count: int = r.json()["total"]
                return count

            write("1")
            assert total() == 1
            assert total() == 1  # now answered from the cache
            write("2")
            assert total() == 2  # the indexer process bumped the tenant's generation
            metrics = c.get("/metrics", headers=admin).text
            assert 'outcome="hit"' in metrics
    finally:
        indexer.terminate()
        indexer.wait(timeout=30)
        api.stop()
        drop_prefix(opensearch_url, prefix)
