"""Keys limited to some collections: other collections, and the keys and tokens reaching them,
are as if they did not exist (docs/security.md: "left out of listings")."""

from __future__ import annotations

import httpx
import pytest
import pytest_asyncio

from tests.security.world import (
    TenantWorld,
    build_tenant,
    create_key,
    expect,
    mint_token,
)
from tests.support.api import Api, bearer

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def client(plain_client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The shared app without OIDC (API keys and tenant tokens only)."""
    return plain_client


@pytest.fixture(scope="module")
def api(plain_api: Api) -> Api:
    return plain_api


@pytest_asyncio.fixture(loop_scope="module")
async def world(api: Api) -> TenantWorld:
    """``limited`` is an admin key limited to ``other``; the main collection is hidden from it."""
    return await build_tenant(api, collection="hidden-coll", other="open-coll")


async def test_a_limited_admin_revokes_only_keys_within_its_reach(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    hidden_id, hidden = await create_key(
        api, world.admin, role="reader", collections=[world.collection]
    )
    mixed_id, mixed = await create_key(
        api, world.admin, role="reader", collections=[world.collection, world.other]
    )
    narrow_id, narrow = await create_key(api, world.admin, role="reader", collections=[world.other])
    missing = expect(await client.delete("/v1/keys/abcdefghijklmnop", headers=world.limited), 404)
    for key_id in (world.key_ids["reader"], world.key_ids["writer"], hidden_id, mixed_id):
        r = await client.delete(f"/v1/keys/{key_id}", headers=world.limited)
        body = expect(r, 404, "key_not_found")
        assert body["detail"].replace(key_id, "x") == missing["detail"].replace(
            "abcdefghijklmnop", "x"
        )
    for auth in (world.reader, world.writer, bearer(hidden), bearer(mixed), world.admin):
        expect(await client.get("/v1/collections", headers=auth), 200)
    expect(await client.delete(f"/v1/keys/{narrow_id}", headers=world.limited), 204)
    expect(await client.get("/v1/collections", headers=bearer(narrow)), 401)
    # The unlimited admin still revokes anything.
    expect(await client.delete(f"/v1/keys/{hidden_id}", headers=world.admin), 204)


async def test_a_limited_admin_sees_and_revokes_only_tokens_within_its_reach(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    own_id, own = await mint_token(api, world.limited, [world.other])
    listed = expect(await client.get("/v1/tokens", headers=world.limited), 200)["tokens"]
    assert [t["id"] for t in listed] == [own_id]
    assert world.collection not in str(listed)
    everything = expect(await client.get("/v1/tokens", headers=world.admin), 200)["tokens"]
    assert {t["id"] for t in everything} == {own_id, world.token_id}

    r = await client.delete(f"/v1/tokens/{world.token_id}", headers=world.limited)
    expect(r, 404, "token_not_found")
    path = f"/v1/collections/{world.collection}/search"
    expect(await client.post(path, json={}, headers=world.token), 200)
    expect(await client.delete(f"/v1/tokens/{own_id}", headers=world.limited), 204)
    r = await client.post(f"/v1/collections/{world.other}/search", json={}, headers=bearer(own))
    expect(r, 401, "revoked_token")


async def test_a_limited_key_never_reaches_hidden_collections(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    hidden = world.collection
    listed = expect(await client.get("/v1/collections", headers=world.limited), 200)
    assert [c["name"] for c in listed["collections"]] == [world.other]
    tasks = expect(await client.get("/v1/tasks", headers=world.limited), 200)["tasks"]
    assert hidden not in {t["collection"] for t in tasks}
    expect(await client.get(f"/v1/tasks/{world.task_id}", headers=world.limited), 404)
    # A limited key cannot mint a wider key or token, nor widen a key by naming more.
    for body in ({"role": "reader"}, {"role": "reader", "collections": [hidden, world.other]}):
        r = await client.post("/v1/keys", json=body, headers=world.limited)
        expect(r, 403, "collections_exceed_creator")
    for names in ([hidden], [hidden, world.other]):
        r = await client.post("/v1/tokens", json={"collections": names}, headers=world.limited)
        expect(r, 404, "collection_not_found")


async def test_a_limited_admin_lists_only_keys_within_its_reach(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    await create_key(api, world.admin, role="reader", collections=[world.collection])
    narrow_id, _ = await create_key(api, world.admin, role="reader", collections=[world.other])
    listed = expect(await client.get("/v1/keys", headers=world.limited), 200)["keys"]
    assert world.collection not in str(listed)
    assert {k["id"] for k in listed} == {world.key_ids["limited"], narrow_id}


async def test_an_idempotency_key_replay_stays_within_the_callers_collections(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    headers = {**world.admin, "Idempotency-Key": "shared-key"}
    r = await client.post(
        f"/v1/collections/{world.collection}/documents", json=[{"id": "h1"}], headers=headers
    )
    expect(r, 202)
    _, writer = await create_key(api, world.admin, role="writer", collections=[world.other])
    headers = {**bearer(writer), "Idempotency-Key": "shared-key"}
    r = await client.post(
        f"/v1/collections/{world.other}/documents", json=[{"id": "o2"}], headers=headers
    )
    assert r.status_code in (202, 409), r.text
    assert world.collection not in r.text
