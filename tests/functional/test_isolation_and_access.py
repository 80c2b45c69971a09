"""Tenancy and access: the tenant comes from the key only; other tenants' things are 404."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.support.api import Api, bearer


async def _two_tenants_with_same_names(api: Api) -> tuple[dict[str, str], dict[str, str], str]:
    _, auth_a = await api.tenant()
    _, auth_b = await api.tenant()
    for auth, title in ((auth_a, "alpha secret"), (auth_b, "beta public")):
        await api.collection(auth, "shared")
        task = await api.index(auth, "shared", [{"id": "doc1", "title": title, "tag": "x"}])
    return auth_a, auth_b, task["id"]


async def test_same_collection_and_ids_do_not_collide(api: Api) -> None:
    auth_a, auth_b, _ = await _two_tenants_with_same_names(api)
    a = (await api.search(auth_a, "shared")).json()
    b = (await api.search(auth_b, "shared")).json()
    assert [h["document"]["title"] for h in a["hits"]] == ["alpha secret"]
    assert [h["document"]["title"] for h in b["hits"]] == ["beta public"]
    assert (await api.search(auth_b, "shared", q="alpha")).json()["total"] == 0
    assert (await api.search(auth_b, "shared", facets=["tag"])).json()["facets"]["tag"] == {"x": 1}


async def test_other_tenants_resources_answer_404_like_missing_ones(
    api: Api, client: httpx.AsyncClient
) -> None:
    _, auth_a = await api.tenant()
    _, auth_b = await api.tenant()
    await api.collection(auth_a, "private")
    task = await api.index(auth_a, "private", [{"id": "d1", "title": "mine"}])
    r = await client.post("/v1/keys", json={"role": "reader"}, headers=auth_a)
    key_a = r.json()["id"]

    attempts = [
        ("GET", "/v1/collections/private", None),
        ("PUT", "/v1/collections/private/documents/d1", {"title": "overwrite"}),
        ("GET", "/v1/collections/private/documents/d1", None),
        ("DELETE", "/v1/collections/private/documents/d1", None),
        ("POST", "/v1/collections/private/documents", [{"id": "d2"}]),
        ("POST", "/v1/collections/private/search", {"q": "mine"}),
        ("DELETE", "/v1/collections/private", None),
        ("GET", f"/v1/tasks/{task['id']}", None),
        ("DELETE", f"/v1/keys/{key_a}", None),
    ]
    for method, path, body in attempts:
        theirs = await client.request(method, path, json=body, headers=auth_b)
        missing = await client.request(
            method,
            path.replace("private", "nothere")
            .replace(key_a, "x" * 16)
            .replace(task["id"], "0" * 32),
            json=body,
            headers=auth_b,
        )
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert missing.status_code == 404, (method, path, missing.text)
        assert theirs.json()["code"] == missing.json()["code"], (method, path)
        assert theirs.headers["content-type"] == "application/problem+json"
    # And nothing of A's changed.
    r = await api.search(auth_a, "private")
    assert [h["document"] for h in r.json()["hits"]] == [{"id": "d1", "title": "mine"}]
    assert key_a in {k["id"] for k in (await client.get("/v1/keys", headers=auth_a)).json()["keys"]}


async def test_x_tenant_id_header_is_ignored(api: Api, client: httpx.AsyncClient) -> None:
    tenant_a, auth_a = await api.tenant()
    _, auth_b = await api.tenant()
    await api.collection(auth_a, "c")
    await api.index(auth_a, "c", [{"id": "1", "title": "a's"}])
    r = await api.client.post(
        "/v1/collections/c/search", json={}, headers={**auth_b, "X-Tenant-Id": tenant_a}
    )
    assert r.status_code == 404
    r = await client.get("/v1/collections", headers={"X-Tenant-Id": tenant_a})
    assert r.status_code == 401


async def test_credentials_are_checked(api: Api, client: httpx.AsyncClient) -> None:
    _, auth = await api.tenant()
    token = auth["Authorization"].removeprefix("Bearer ")
    for header in (
        None,
        "Bearer",
        "Basic abc",
        f"Bearer {token[:-1]}",
        f"Bearer {token}x",
        f"Bearer {token[:-2]}AA",
        "Bearer ts_aaaaaaaaaaaaaaaa_" + "A" * 43,
    ):
        headers = {"Authorization": header} if header else {}
        r = await client.get("/v1/collections", headers=headers)
        assert r.status_code == 401, header
        assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/collections", headers=auth)).status_code == 200


async def test_roles(api: Api, client: httpx.AsyncClient) -> None:
    _, admin = await api.tenant()
    await api.collection(admin, "c")
    reader = await api.key(admin, role="reader")
    writer = await api.key(admin, role="writer")
    doc = {"title": "t"}
    assert (
        await client.put("/v1/collections/c/documents/1", json=doc, headers=reader)
    ).status_code == 403
    assert (
        await client.put("/v1/collections/c/documents/1?wait=true", json=doc, headers=writer)
    ).status_code == 200
    assert (await api.search(reader, "c")).json()["total"] == 1
    for auth in (reader, writer):
        assert (
            await client.put("/v1/collections/d", json={"fields": {}}, headers=auth)
        ).status_code == 403
        assert (await client.delete("/v1/collections/c", headers=auth)).status_code == 403
        assert (
            await client.post("/v1/keys", json={"role": "admin"}, headers=auth)
        ).status_code == 403
        assert (await client.get("/v1/tenants", headers=auth)).status_code == 403
    # The platform admin manages tenants but holds no tenant data.
    assert (await client.get("/v1/collections", headers=api.admin)).status_code == 403


async def test_key_limited_to_collections_and_expiry(api: Api, client: httpx.AsyncClient) -> None:
    _, admin = await api.tenant()
    for name in ("open", "closed"):
        await api.collection(admin, name)
        await api.index(admin, name, [{"id": "1", "title": name}])
    limited = await api.key(admin, role="reader", collections=["open"])
    assert (await api.search(limited, "open")).status_code == 200
    assert (await api.search(limited, "closed")).status_code == 404
    r = await client.get("/v1/collections", headers=limited)
    assert [c["name"] for c in r.json()["collections"]] == ["open"]

    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    r = await client.post("/v1/keys", json={"role": "reader", "expires_at": past}, headers=admin)
    assert r.status_code == 400
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await client.post("/v1/keys", json={"role": "reader", "expires_at": soon}, headers=admin)
    assert r.status_code == 201
    assert r.json()["expires_at"] is not None


async def test_key_listing_and_revocation(api: Api, client: httpx.AsyncClient) -> None:
    _, admin = await api.tenant()
    r = await client.post("/v1/keys", json={"role": "reader"}, headers=admin)
    created = r.json()
    reader = bearer(created["key"])
    assert (await client.get("/v1/collections", headers=reader)).status_code == 200
    listing = (await client.get("/v1/keys", headers=admin)).json()["keys"]
    assert created["id"] in {k["id"] for k in listing}
    assert all("key" not in k and "secret_hash" not in k for k in listing)
    assert (await client.delete(f"/v1/keys/{created['id']}", headers=admin)).status_code == 204
    assert (await client.get("/v1/collections", headers=reader)).status_code == 401


async def test_tenant_erasure_removes_everything(api: Api, client: httpx.AsyncClient) -> None:
    tenant, auth = await api.tenant()
    await api.collection(auth, "c")
    await api.index(auth, "c", [{"id": "1", "title": "personal data"}])
    r = await client.delete(f"/v1/tenants/{tenant}", headers=api.admin)
    assert r.status_code == 202
    task_id = r.json()["id"]
    assert (await client.get("/v1/collections", headers=auth)).status_code == 401
    for _ in range(200):
        task = (await client.get(f"/v1/tasks/{task_id}", headers=api.admin)).json()
        if task["status"] == "succeeded":
            break
        await _sleep()
    assert task["status"] == "succeeded"
    assert (await client.get(f"/v1/tenants/{tenant}", headers=api.admin)).status_code == 404
    # The id is free again, and a new tenant under it sees nothing of the old one.
    _, auth2 = await api.tenant(tenant)
    assert (await client.get("/v1/collections", headers=auth2)).json()["collections"] == []


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.02)
