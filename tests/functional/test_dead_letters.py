"""Dead letters through the platform admin API and the CLI: inspect, replay, purge."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from tenantsearch.api.deps import Services
from tenantsearch.app import create_app, indexer_config
from tenantsearch.ingest.indexer import Indexer
from tenantsearch.settings import Settings, load_settings
from tests.support.api import ADMIN_KEY, Api


@pytest.fixture
def quiet_settings(tmp_path: Path) -> Settings:
    return load_settings(
        environ={}, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, log_level="warning"
    )


@pytest.fixture
async def app(quiet_settings: Settings) -> AsyncIterator[FastAPI]:
    """The API without its indexer: the test plays the indexer's part step by step."""
    app = create_app(quiet_settings, run_indexer=False)
    async with LifespanManager(app):
        yield app


async def test_inspect_replay_and_purge(app: FastAPI, quiet_settings: Settings) -> None:
    services: Services = app.state.services
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        api = Api(client)
        _, auth = await api.tenant()
        await api.collection(auth, "c")
        r = await client.post(
            "/v1/collections/c/documents", json=[{"id": "a", "title": "x"}], headers=auth
        )
        task_id = r.json()["id"]
        # The indexer gives up on the write.
        (delivery,) = await services.queue.receive(1, 1.0)
        await services.store.fail_task(task_id, "simulated engine refusal")
        await services.queue.dead_letter(delivery, "simulated engine refusal")
        await services.queue.publish(b"not a message", tenant="other", documents=0)
        (garbage,) = await services.queue.receive(1, 1.0)
        await services.queue.dead_letter(garbage, "cannot decode message")

        r = await client.get("/v1/admin/dead-letters", headers=api.admin)
        assert r.status_code == 200
        letters: list[dict[str, Any]] = r.json()["dead_letters"]
        mine = next(d for d in letters if d["task_id"] == task_id)
        assert mine["reason"] == "simulated engine refusal"
        assert mine["document_ids"] == ["a"]
        assert (await client.get("/v1/admin/dead-letters", headers=auth)).status_code == 403

        r = await client.post(f"/v1/admin/dead-letters/{mine['id']}/replay", headers=api.admin)
        assert r.status_code == 200
        assert (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()["status"] == "queued"
        indexer = Indexer(
            services.queue, services.backend, services.store, indexer_config(quiet_settings)
        )
        assert await indexer.run_once(wait_seconds=1.0) == 1
        task = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
        assert (task["status"], task["indexed"], task["failed"]) == ("succeeded", 1, 0)
        r = await client.get("/v1/collections/c/documents/a", headers=auth)
        assert r.json() == {"id": "a", "title": "x"}

        r = await client.get(f"/v1/admin/dead-letters/{mine['id']}", headers=api.admin)
        assert r.status_code == 404
        r = await client.delete("/v1/admin/dead-letters?tenant=other", headers=api.admin)
        assert r.json() == {"purged": 1}
        assert (await client.get("/v1/admin/dead-letters", headers=api.admin)).json() == {
            "dead_letters": []
        }


async def test_cli_lists_dead_letters(app: FastAPI, quiet_settings: Settings) -> None:
    services: Services = app.state.services
    await services.queue.publish(b"junk", tenant="t1", documents=0)
    (delivery,) = await services.queue.receive(1, 1.0)
    await services.queue.dead_letter(delivery, "cannot decode message")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTSEARCH_")}
    env["TENANTSEARCH_DATA_DIR"] = str(quiet_settings.data_dir)
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tenantsearch", "dead-letters", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "tenant=t1" in out.stdout
    assert "reason=cannot decode message" in out.stdout
    assert "1 dead letter(s)" in out.stderr
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tenantsearch", "dead-letters", "replay", "999999"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "not found" in out.stderr
