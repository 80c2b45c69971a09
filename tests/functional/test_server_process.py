"""A real ``tenantsearch serve`` process over TCP: first start, restart, and kill -9 after a 202."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantsearch.auth.keys import parse_token
from tests.support.api import bearer
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


def test_first_start_prints_admin_key_once_and_data_survives_restart(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, {"TENANTSEARCH_LOG_LEVEL": "info"})
    servers.append(server)
    server.start()
    keys = re.findall(r"ts_[a-z2-7]{16}_[A-Za-z0-9_-]{43}", server.output())
    assert len(keys) == 1
    admin = bearer(keys[0])
    # The key is not in the logs or data files in clear.
    assert not any(keys[0].encode() in p.read_bytes() for p in data.rglob("*") if p.is_file())

    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert (
            c.post("/v1/tenants", json={"id": "acme", "name": "Acme"}, headers=admin).status_code
            == 201
        )
        key = c.post("/v1/tenants/acme/keys", json={"role": "admin"}, headers=admin).json()["key"]
        auth = bearer(key)
        assert (
            c.put(
                "/v1/collections/books",
                json={"fields": {"title": {"type": "text", "language": "en"}}},
                headers=auth,
            ).status_code
            == 201
        )
        r = c.post(
            "/v1/collections/books/documents?wait=true",
            json=[{"id": "1", "title": "persistent fox"}],
            headers=auth,
        )
        assert r.status_code == 200
    assert server.stop()
    _assert_structured_logs(server.output(), secrets=[keys[0], key])

    again = ServerProcess(data)
    servers.append(again)
    again.start()
    assert not re.findall(r"ts_[a-z2-7]{16}_", again.output())  # generated once only
    with httpx.Client(base_url=again.url, timeout=30) as c:
        r = c.post("/v1/collections/books/search", json={"q": "fox"}, headers=auth)
        assert [h["id"] for h in r.json()["hits"]] == ["1"]


def test_writes_acknowledged_before_kill_9_are_applied_after_restart(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    env = {
        "TENANTSEARCH_ADMIN_KEY": "kill-test-admin-key",
        # A long linger keeps the first batch leased but not applied when the process dies.
        "TENANTSEARCH_INDEXER_LINGER_MS": "10000",
    }
    server = ServerProcess(data, env)
    servers.append(server)
    server.start()
    admin = bearer("kill-test-admin-key")
    acknowledged: set[str] = set()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.post("/v1/tenants", json={"id": "k9", "name": "k9"}, headers=admin)
        auth = bearer(
            c.post("/v1/tenants/k9/keys", json={"role": "admin"}, headers=admin).json()["key"]
        )
        c.put("/v1/collections/c", json={"fields": {"n": {"type": "integer"}}}, headers=auth)
        for batch in range(20):
            docs: list[dict[str, Any]] = [{"id": f"{batch}-{i}", "n": i} for i in range(50)]
            r = c.post("/v1/collections/c/documents", json=docs, headers=auth)
            assert r.status_code == 202
            acknowledged.update(d["id"] for d in docs)
        tasks = c.get("/v1/tasks?limit=100", headers=auth).json()["tasks"]
        assert any(t["status"] != "succeeded" for t in tasks), "nothing was pending at the kill"
    server.kill()

    env["TENANTSEARCH_INDEXER_LINGER_MS"] = "0"
    again = ServerProcess(data, env)
    servers.append(again)
    again.start()
    with httpx.Client(base_url=again.url, timeout=30) as c:
        for _ in range(300):
            tasks = c.get("/v1/tasks?limit=100", headers=auth).json()["tasks"]
            if all(t["status"] == "succeeded" for t in tasks):
                break
            time.sleep(0.1)
        seen: set[str] = set()
        cursor = None
        while True:
            response = c.post(
                "/v1/collections/c/search", json={"limit": 500, "cursor": cursor}, headers=auth
            )
            assert response.status_code == 200, response.text
            r = response.json()
            seen.update(h["id"] for h in r["hits"])
            cursor = r["next_cursor"]
            if cursor is None:
                break
        assert r["total"] == len(acknowledged)
        assert seen == acknowledged


def _assert_structured_logs(output: str, secrets: list[str]) -> None:
    """Every log line is one JSON object; request lines carry request id and tenant; no secret
    appears anywhere but in the one-time admin key banner."""
    banner, _, logs = output.partition("TENANTSEARCH_ADMIN_KEY_FILE) to use your own instead.")
    assert secrets[0] in banner
    lines = [line for line in logs.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    requests = [e for e in events if e.get("event") == "request"]
    assert len(requests) >= 5
    assert all(e["request_id"] and "tenant" in e and "level" in e for e in requests)
    assert any(e["tenant"] == "acme" for e in requests)
    assert {e["event"] for e in events} >= {"started", "tenant_created", "write_accepted"}
    for token in secrets:
        parsed = parse_token(token)
        assert parsed is not None
        assert token not in logs
        assert parsed[1] not in logs  # the secret part alone
