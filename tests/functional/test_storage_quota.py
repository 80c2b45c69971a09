"""The stored-bytes quota (``max_stored_bytes``) and ``stored_bytes`` in ``GET /v1/usage``."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.support.api import Api


def _doc(doc_id: str) -> dict[str, Any]:
    return {"id": doc_id, "title": "a stored document ✓", "tag": "quota"}


async def _usage(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    r = await client.get("/v1/usage", headers=auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _post(
    client: httpx.AsyncClient, auth: dict[str, str], docs: list[dict[str, Any]]
) -> httpx.Response:
    # The body is sent exactly as orjson writes it, so its size is known to the byte.
    return await client.post(
        "/v1/collections/c/documents?wait=true",
        content=orjson.dumps(docs),
        headers={**auth, "Content-Type": "application/json"},
    )


async def test_storage_quota_refuses_writes_past_the_limit(
    api: Api, client: httpx.AsyncClient
) -> None:
    tenant, auth = await api.tenant()
    await api.collection(auth, "c")
    usage = await _usage(client, auth)
    assert usage["limits"]["max_stored_bytes"] == 10_000_000_000  # the standard plan
    assert usage["usage"]["stored_bytes"] == 0

    first = [_doc("d0"), _doc("d1")]
    await api.index(auth, "c", first)
    stored = sum(len(orjson.dumps(doc)) for doc in first)
    usage = await _usage(client, auth)
    assert usage["usage"]["documents"] == 2
    assert usage["usage"]["stored_bytes"] == stored

    # Room for two more one-document requests, not three (a request counts its body's bytes).
    body_size = len(orjson.dumps([_doc("d2")]))
    limit = stored + 2 * body_size + body_size // 2
    r = await client.patch(
        f"/v1/tenants/{tenant}", json={"limits": {"max_stored_bytes": limit}}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    statuses = [(await _post(client, auth, [_doc(f"d{i}")])).status_code for i in (2, 3)]
    assert statuses == [200, 200]
    r = await _post(client, auth, [_doc("d4")])
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "storage_quota_exceeded"

    usage = await _usage(client, auth)
    assert usage["limits"]["max_stored_bytes"] == limit
    assert usage["usage"]["documents"] == 4
    assert usage["usage"]["stored_bytes"] == stored + 2 * len(orjson.dumps(_doc("d2")))

    # Deletes pass a full quota, and free room for more writes.
    for doc_id in ("d0", "d1"):
        r = await client.delete(f"/v1/collections/c/documents/{doc_id}?wait=true", headers=auth)
        assert r.status_code == 200, r.text
    usage = await _usage(client, auth)
    assert usage["usage"]["documents"] == 2
    assert usage["usage"]["stored_bytes"] == 2 * len(orjson.dumps(_doc("d2")))
    assert (await _post(client, auth, [_doc("d4")])).status_code == 200


async def test_storage_quota_overrides_are_validated(api: Api, client: httpx.AsyncClient) -> None:
    tenant, auth = await api.tenant()
    for bad in (0, -1, "big", 1.5):
        r = await client.patch(
            f"/v1/tenants/{tenant}", json={"limits": {"max_stored_bytes": bad}}, headers=api.admin
        )
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["errors"][0]["path"] == "/limits/max_stored_bytes"
    r = await client.patch(
        f"/v1/tenants/{tenant}", json={"limits": {"max_stored_bytes": None}}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    assert (await _usage(client, auth))["limits"]["max_stored_bytes"] is None
