"""Repeated batch requests with the same Idempotency-Key return the original task."""

from __future__ import annotations

import httpx

from tests.support.api import Api


async def test_idempotency_key_returns_the_original_task(
    api: Api, client: httpx.AsyncClient
) -> None:
    _, auth = await api.tenant()
    await api.collection(auth, "c")
    headers = {**auth, "Idempotency-Key": "batch-42"}
    first = await client.post(
        "/v1/collections/c/documents?wait=true", json=[{"id": "1", "title": "a"}], headers=headers
    )
    again = await client.post(
        "/v1/collections/c/documents?wait=true", json=[{"id": "1", "title": "a"}], headers=headers
    )
    assert first.json()["id"] == again.json()["id"]
    tasks = (await client.get("/v1/tasks", headers=auth)).json()["tasks"]
    assert len([t for t in tasks if t["kind"] == "documents"]) == 1
