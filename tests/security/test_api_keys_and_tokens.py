"""API keys and tenant tokens under attack: forged, cut, revoked, expired, and reaching too far."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from tenantsearch.auth.service import CREDENTIAL_CACHE_SECONDS
from tenantsearch.auth.tenant_tokens import CACHE_SECONDS as TOKEN_CACHE_SECONDS
from tests.security.world import (
    FIELDS,
    TenantWorld,
    build_tenant,
    create_key,
    expect,
    mint_token,
    poll,
    running,
    search_ids,
    security_settings,
)
from tests.support.api import Api, bearer, unique
from tests.support.oidc_issuer import b64url_json, forge, hs256_signer

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

PROBE = "/v1/collections"


@pytest.fixture(scope="module")
def client(plain_client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The shared app without OIDC (API keys and tenant tokens only)."""
    return plain_client


@pytest.fixture(scope="module")
def api(plain_api: Api) -> Api:
    return plain_api


@pytest_asyncio.fixture(loop_scope="module")
async def world(api: Api) -> TenantWorld:
    return await build_tenant(api)


def secret_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def refused(client: httpx.AsyncClient, token: str, code: str, path: str = PROBE) -> None:
    r = await client.get(path, headers=bearer(token))
    assert r.status_code == 401, (token[:90], r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code, (token[:90], r.text)
    assert token not in r.text  # the credential is never echoed


# -- API keys ------------------------------------------------------------------------------------


async def test_malformed_truncated_and_wrongly_prefixed_keys(
    client: httpx.AsyncClient, api: Api
) -> None:
    _, admin = await api.tenant()
    key = secret_of(admin)
    key_id, secret = key[3:19], key[20:]
    assert key == f"ts_{key_id}_{secret}"
    expect(await client.get(PROBE, headers=admin), 200)
    candidates = [
        "ts_",
        "ts__",
        f"ts_{key_id}",
        f"ts_{key_id}_",
        key[:-1],
        key[:20],
        key + "A",
        key[:-1] + ("A" if key[-1] != "A" else "B"),
        f"ts_{key_id.upper()}_{secret}",
        f"ts_{key_id}-{secret}",
        f"tx_{key_id}_{secret}",
        f"TS_{key_id}_{secret}",
        f"{key_id}_{secret}",
        f"ts_{secret}_{key_id}",
        f"ts_{key_id}_{secret}_{secret}",
        f"ts_{key_id}_{'=' * 43}",
        f"ts_{'a' * 16}_{secret}",
        "ts_" + "a" * 10_000,
    ]
    for candidate in candidates:
        await refused(client, candidate, "invalid_credentials")
    for header in (f"Basic {key}", f"Token {key}", key, f"Bearer{key}"):
        r = await client.get(PROBE, headers={"Authorization": header})
        expect(r, 401, "invalid_credentials")


async def test_another_tenants_key_id_with_a_wrong_secret(
    client: httpx.AsyncClient, api: Api
) -> None:
    _, admin_a = await api.tenant()
    _, admin_b = await api.tenant()
    key_a, key_b = secret_of(admin_a), secret_of(admin_b)
    a_id_b_secret = f"ts_{key_a[3:19]}_{key_b[20:]}"
    b_id_a_secret = f"ts_{key_b[3:19]}_{key_a[20:]}"
    missing_id = f"ts_{'a' * 16}_{key_a[20:]}"
    bodies = []
    for token in (a_id_b_secret, b_id_a_secret, missing_id):
        r = await client.get(PROBE, headers=bearer(token))
        body = expect(r, 401, "invalid_credentials")
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    # Indistinguishable: a wrong secret for an existing id reads like an id that does not exist.
    assert bodies[0] == bodies[1] == bodies[2]


async def test_revocation_is_immediate_here_and_within_a_second_elsewhere(
    tmp_path: Path,
) -> None:
    settings = security_settings(tmp_path / "data", None)
    async with running(settings) as one, running(settings, run_indexer=False) as two:
        api = Api(one)
        _, admin = await api.tenant()
        key_id, key = await create_key(api, admin, role="reader")
        for process in (one, two):  # both processes have the key record cached now
            expect(await process.get(PROBE, headers=bearer(key)), 200)
        expect(await one.delete(f"/v1/keys/{key_id}", headers=admin), 204)
        await refused(one, key, "invalid_credentials")  # at once, on the process that revoked

        async def refused_elsewhere() -> bool:
            return (await two.get(PROBE, headers=bearer(key))).status_code == 401

        took = await poll(refused_elsewhere, timeout=CREDENTIAL_CACHE_SECONDS + 0.5)
        assert took <= CREDENTIAL_CACHE_SECONDS + 0.5
        await refused(two, key, "invalid_credentials")
        # Revoking twice, or revoking an unknown id: 404, not 204.
        expect(await one.delete(f"/v1/keys/{key_id}", headers=admin), 404, "key_not_found")


async def test_an_expired_key_is_refused(client: httpx.AsyncClient, api: Api) -> None:
    _, admin = await api.tenant()
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    _, key = await create_key(api, admin, role="reader", expires_at=expires_at.isoformat())
    expect(await client.get(PROBE, headers=bearer(key)), 200)

    async def expired() -> bool:
        return (await client.get(PROBE, headers=bearer(key))).status_code == 401

    await poll(expired, timeout=4.0)
    assert datetime.now(UTC) >= expires_at  # not early
    await refused(client, key, "expired_credentials")


# -- tenant tokens: the credential itself --------------------------------------------------------


def split_token(token: str) -> tuple[str, str, str]:
    assert token.startswith("tt_")
    header, payload, signature = token[3:].split(".")
    return header, payload, signature


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token[3:], options={"verify_signature": False}))


async def test_forged_and_malformed_tenant_tokens(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    other = await build_tenant(api)
    token = secret_of(world.token)
    path = f"/v1/collections/{world.collection}/search"
    expect(await client.post(path, json={}, headers=world.token), 200)
    header, payload, signature = split_token(token)
    claims = claims_of(token)
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    candidates = [
        "tt_",
        "tt_garbage",
        "tt_a.b.c",
        token[:-1],
        token[:-8],
        token[: len(token) // 2],
        f"tt_{header}.{payload}.",
        f"tt_{header}.{payload}.{flipped}",
        f"tt_{header}.{payload}.{signature}{signature}",
        f"tt_{header}.{b64url_json({**claims, 'ten': other.id})}.{signature}",
        f"tt_{header}.{b64url_json({**claims, 'jti': other.token_id})}.{signature}",
        f"tt_{header}.{b64url_json({**claims, 'exp': claims['exp'] + 86_400})}.{signature}",
        "tt_" + forge({"alg": "none", "typ": "JWT"}, claims),
        "tt_" + forge({"alg": "HS256", "typ": "JWT"}, claims, hs256_signer(b"secret")),
        "tt_" + forge({"alg": "HS256", "typ": "JWT"}, claims, hs256_signer(b"")),
        "tt_" + "A" * 5000,
    ]
    for candidate in candidates:
        r = await client.post(path, json={}, headers=bearer(candidate))
        assert r.status_code == 401, (candidate[:90], r.text)
        assert r.json()["code"] == "invalid_token", candidate[:90]
    # Wrong prefixes: not a tenant token any more, so not accepted as anything else either.
    for candidate in ("TT_" + token[3:], "ts_" + token[3:], token[3:], "tt-" + token[3:]):
        r = await client.post(path, json={}, headers=bearer(candidate))
        assert r.status_code == 401, (candidate[:90], r.text)
    # The original still works after all that.
    expect(await client.post(path, json={}, headers=world.token), 200)


async def test_a_revoked_tenant_token_is_refused_within_a_second(tmp_path: Path) -> None:
    settings = security_settings(tmp_path / "data", None)
    async with running(settings) as one, running(settings, run_indexer=False) as two:
        world = await build_tenant(Api(one))
        path = f"/v1/collections/{world.collection}/search"
        for process in (one, two):
            expect(await process.post(path, json={}, headers=world.token), 200)
        expect(await one.delete(f"/v1/tokens/{world.token_id}", headers=world.admin), 204)
        body = expect(await one.post(path, json={}, headers=world.token), 401)
        assert body["code"] == "revoked_token"

        async def refused_elsewhere() -> bool:
            return (await two.post(path, json={}, headers=world.token)).status_code == 401

        took = await poll(refused_elsewhere, timeout=1.5)
        assert took <= TOKEN_CACHE_SECONDS + 0.5
        expect(await two.post(path, json={}, headers=world.token), 401, "revoked_token")
        listed = expect(await one.get("/v1/tokens", headers=world.admin), 200)["tokens"]
        assert world.token_id not in {t["id"] for t in listed}
        r = await one.delete(f"/v1/tokens/{world.token_id}", headers=world.admin)
        expect(r, 404, "token_not_found")


async def test_an_expired_tenant_token_is_refused(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    _, token = await mint_token(api, world.admin, [world.collection], expires_in=1)
    path = f"/v1/collections/{world.collection}/search"
    expect(await client.post(path, json={}, headers=bearer(token)), 200)

    async def expired() -> bool:
        r = await client.post(path, json={}, headers=bearer(token))
        return r.status_code == 401

    await poll(expired, timeout=3.0)
    expect(await client.post(path, json={}, headers=bearer(token)), 401, "expired_token")


async def test_a_tenant_token_dies_with_the_key_that_minted_it(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    minter_id, minter = await create_key(api, world.admin, role="admin")
    _, token = await mint_token(api, bearer(minter), [world.collection])
    _, sibling = await mint_token(api, world.admin, [world.collection])
    path = f"/v1/collections/{world.collection}/search"
    expect(await client.post(path, json={}, headers=bearer(token)), 200)
    expect(await client.delete(f"/v1/keys/{minter_id}", headers=world.admin), 204)
    expect(await client.post(path, json={}, headers=bearer(token)), 401, "revoked_token")
    # Tokens minted by other keys live on.
    expect(await client.post(path, json={}, headers=bearer(sibling)), 200)


async def test_a_tenant_token_dies_with_its_tenant(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    path = f"/v1/collections/{world.collection}/search"
    expect(await client.post(path, json={}, headers=world.token), 200)
    expect(await client.delete(f"/v1/tenants/{world.id}", headers=api.admin), 202)
    expect(await client.post(path, json={}, headers=world.token), 401, "invalid_token")


# -- tenant tokens: what they reach --------------------------------------------------------------


async def test_a_token_never_reads_outside_its_filter(
    client: httpx.AsyncClient, world: TenantWorld
) -> None:
    """The token's filter is owner == u1: documents d1 and d4 of four."""
    token, name = world.token, world.collection
    mine = {"d1", "d4"}

    async def found(**body: Any) -> Any:
        return await search_ids(client, token, name, **body)

    everything = await found(facets=["tag", "owner"], limit=100)
    assert {h["id"] for h in everything["hits"]} == mine
    assert everything["total"] == 2
    assert everything["facets"] == {"tag": {"red": 1, "green": 1}, "owner": {"u1": 2}}
    assert all(h["document"]["owner"] == "u1" for h in everything["hits"])

    attempts: list[tuple[dict[str, Any], set[str]]] = [
        ({"q": "quick"}, mine),  # d3 is quick too, but u2's
        ({"q": "lazy"}, set()),
        ({"q": "beta"}, set()),
        ({"filter": {"owner": {"eq": "u2"}}}, set()),
        ({"filter": {"owner": {"in": ["u1", "u2"]}}}, mine),
        ({"filter": {"or": [{"owner": {"eq": "u2"}}, {"owner": {"eq": "u1"}}]}}, mine),
        ({"filter": {"not": {"owner": {"eq": "u1"}}}}, set()),
        ({"filter": {"not": {"owner": {"eq": "nobody"}}}}, mine),
        ({"filter": {"or": [{"tag": {"eq": "blue"}}, {"price": {"gte": 0}}]}}, mine),
        ({"filter": {"tag": {"eq": "blue"}}}, set()),
        ({"filter": {"price": {"gte": 2, "lt": 4}}}, set()),  # d2, d3 are u2's
        ({"q": "quick", "highlight": True}, mine),
        ({"sort": [{"price": "desc"}]}, mine),
    ]
    for body, expected in attempts:
        result = await found(facets=["owner", "tag"], **body)
        assert {h["id"] for h in result["hits"]} == expected, body
        assert result["total"] == len(expected), body
        assert set(result["facets"]["owner"]) <= {"u1"}, body
        assert sum(result["facets"]["tag"].values()) == len(expected), body

    # Paging walks only the token's documents.
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = await found(limit=1, cursor=cursor, sort=[{"price": "asc"}])
        seen += [h["id"] for h in page["hits"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["d1", "d4"]

    # Get by id: outside the filter reads exactly like a document that does not exist.
    expect(await client.get(f"/v1/collections/{name}/documents/d1", headers=token), 200)
    bodies = []
    for doc_id in ("d2", "d3", "nothere"):
        r = await client.get(f"/v1/collections/{name}/documents/{doc_id}", headers=token)
        bodies.append(expect(r, 404, "document_not_found")["title"])
    assert len(set(bodies)) == 1


async def test_a_token_reaches_only_its_collections_and_no_write_or_admin_endpoint(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    token, name, other = world.token, world.collection, world.other
    for path in (f"/v1/collections/{other}/documents/o1", "/v1/collections/nothere/documents/o1"):
        expect(await client.get(path, headers=token), 404, "collection_not_found")
    for coll in (other, "nothere"):
        r = await client.post(f"/v1/collections/{coll}/search", json={}, headers=token)
        expect(r, 404, "collection_not_found")

    forbidden: list[tuple[str, str, Any]] = [
        ("GET", "/v1/collections", None),
        ("GET", f"/v1/collections/{name}", None),
        ("PUT", f"/v1/collections/{name}", {"fields": {"title": {"type": "text"}}}),
        ("DELETE", f"/v1/collections/{name}", None),
        ("PUT", f"/v1/collections/{name}/documents/d2", {"title": "mine now", "owner": "u1"}),
        ("POST", f"/v1/collections/{name}/documents", [{"id": "x", "owner": "u1"}]),
        ("DELETE", f"/v1/collections/{name}/documents/d1", None),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"role": "admin"}),
        ("DELETE", f"/v1/keys/{world.key_ids['reader']}", None),
        ("GET", "/v1/tokens", None),
        ("POST", "/v1/tokens", {"collections": [name, other]}),
        ("DELETE", f"/v1/tokens/{world.token_id}", None),
        ("GET", "/v1/tasks", None),
        ("GET", f"/v1/tasks/{world.task_id}", None),
        ("GET", "/v1/audit", None),
        ("GET", "/v1/tenants", None),
        ("POST", "/v1/tenants", {"id": unique("t"), "name": "x"}),
        ("GET", f"/v1/tenants/{world.id}", None),
        ("DELETE", f"/v1/tenants/{world.id}", None),
    ]
    for method, path, body in forbidden:
        r = await client.request(method, path, json=body, headers=token)
        expect(r, 403, "forbidden")
    # Nothing changed: every document is there as written, the token still works.
    result = await search_ids(client, world.admin, name, limit=100)
    assert sorted(h["document"]["id"] for h in result["hits"]) == ["d1", "d2", "d3", "d4"]
    assert {h["id"]: h["document"] for h in result["hits"]} == {d["id"]: d for d in world.docs}
    expect(await client.post(f"/v1/collections/{name}/search", json={}, headers=token), 200)
    assert world.token_id in {
        t["id"] for t in expect(await client.get("/v1/tokens", headers=world.admin), 200)["tokens"]
    }


async def test_a_token_of_one_tenant_with_another_tenants_collection_name(
    client: httpx.AsyncClient, api: Api
) -> None:
    a = await build_tenant(api, collection="shared", other="a-only")
    b = await build_tenant(api, collection="shared", other="b-only")
    # A's token for "shared" sees A's documents only, under its filter.
    result = await search_ids(client, a.token, "shared", facets=["origin"], limit=100)
    assert {h["document"]["origin"] for h in result["hits"]} == {a.id}
    assert result["facets"]["origin"] == {a.id: 2}
    # B's collection names mean nothing to A: no token for them, and A's token cannot reach them.
    r = await client.post("/v1/tokens", json={"collections": ["b-only"]}, headers=a.admin)
    expect(r, 404, "collection_not_found")
    r = await client.post("/v1/collections/b-only/search", json={}, headers=a.token)
    expect(r, 404, "collection_not_found")
    r = await client.get("/v1/collections/b-only/documents/o1", headers=a.token)
    expect(r, 404, "collection_not_found")
    # And B's token (same collection name, same document ids) sees B's.
    result = await search_ids(client, b.token, "shared", limit=100)
    assert {h["document"]["origin"] for h in result["hits"]} == {b.id}
    doc = expect(await client.get("/v1/collections/shared/documents/d1", headers=b.token), 200)
    assert doc["origin"] == b.id


async def test_minting_is_checked(client: httpx.AsyncClient, api: Api, world: TenantWorld) -> None:
    name = world.collection
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({"collections": [name], "filter": {"unknown": {"eq": "x"}}}, 400, "invalid_filter"),
        ({"collections": [name], "filter": {"owner": {"regex": ".*"}}}, 400, "invalid_filter"),
        ({"collections": [name], "filter": {"owner": "u1"}}, 400, "invalid_filter"),
        ({"collections": [name], "filter": {"price": {"eq": "cheap"}}}, 400, "invalid_filter"),
        ({"collections": [name], "expires_in": 0}, 400, "invalid_input"),
        ({"collections": [name], "expires_in": 86_401}, 400, "invalid_input"),
        ({"collections": []}, 400, "invalid_input"),
        ({"collections": [name], "role": "admin"}, 400, "invalid_input"),
        ({"collections": [name], "tenant": "other"}, 400, "invalid_input"),
        ({"collections": ["nothere"]}, 404, "collection_not_found"),
        ({"collections": [name, "nothere"]}, 404, "collection_not_found"),
        ({"collections": ["../x"]}, 400, "invalid_collection_name"),
    ]
    for body, status, code in bad:
        r = await client.post("/v1/tokens", json=body, headers=world.admin)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    # Only a tenant admin mints; a key limited to some collections mints only for those.
    for auth in (world.writer, world.reader, world.token, api.admin):
        r = await client.post("/v1/tokens", json={"collections": [name]}, headers=auth)
        expect(r, 403)
    r = await client.post("/v1/tokens", json={"collections": [name]}, headers=world.limited)
    expect(r, 404, "collection_not_found")
    r = await client.post("/v1/tokens", json={"collections": [world.other]}, headers=world.limited)
    expect(r, 201)


async def test_get_by_id_and_search_agree_under_every_token_filter(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    """Search enforces a token's filter in the engine, get-by-id in Python: the two must agree,
    including on multi-valued and missing fields."""
    await api.collection(world.admin, "mixed", {"owner": {"type": "keyword"}, **FIELDS})
    docs: list[dict[str, Any]] = [
        {"id": "m1", "owner": ["u1", "u2"], "tag": "red", "price": 1.0},
        {"id": "m2", "owner": "u2", "price": 5.0},
        {"id": "m3", "tag": "blue"},
        {"id": "m4", "owner": "u1", "tag": ["red", "blue"], "price": 3.5},
    ]
    await api.index(world.admin, "mixed", docs)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"owner": {"eq": "u1"}}, {"m1", "m4"}),
        ({"owner": {"in": ["u2"]}}, {"m1", "m2"}),
        ({"not": {"owner": {"eq": "u1"}}}, {"m2", "m3"}),
        ({"price": {"gte": 1, "lt": 4}}, {"m1", "m4"}),
        ({"not": {"price": {"gte": 0}}}, {"m3"}),
        ({"or": [{"tag": {"eq": "blue"}}, {"owner": {"eq": "u2"}}]}, {"m1", "m2", "m3", "m4"}),
        ({"and": [{"tag": {"eq": "red"}}, {"not": {"owner": {"eq": "u2"}}}]}, {"m4"}),
        ({"tag": {"eq": "RED"}}, set()),
        ({"owner": {"eq": "u1 "}}, set()),
    ]
    for token_filter, expected in cases:
        _, token = await mint_token(api, world.admin, ["mixed"], token_filter)
        found = await search_ids(client, bearer(token), "mixed", limit=100)
        assert {h["id"] for h in found["hits"]} == expected, token_filter
        for doc in docs:
            r = await client.get(
                f"/v1/collections/mixed/documents/{doc['id']}", headers=bearer(token)
            )
            assert r.status_code == (200 if doc["id"] in expected else 404), (token_filter, doc)


async def test_no_privilege_escalation_through_key_creation(
    client: httpx.AsyncClient, api: Api, world: TenantWorld
) -> None:
    other = await build_tenant(api)
    for body in (
        {"role": "platform-admin"},
        {"role": "tenant-token"},
        {"role": "owner"},
        {"role": "reader", "tenant_id": other.id},
        {"role": "reader", "tenant": other.id},
        {"role": "reader", "secret_hash": "0" * 64},
        {"role": "reader", "id": "aaaaaaaaaaaaaaaa"},
    ):
        r = await client.post("/v1/keys", json=body, headers=world.admin)
        expect(r, 400, "invalid_input")
    tenant_key_bodies: list[dict[str, Any]] = [
        {"role": "platform-admin"},
        {"role": "admin", "collections": None, "x": 1},
    ]
    for tenant_key_body in tenant_key_bodies:
        r = await client.post(
            f"/v1/tenants/{world.id}/keys", json=tenant_key_body, headers=api.admin
        )
        expect(r, 400, "invalid_input")
    r = await client.post("/v1/tenants/nothere/keys", json={"role": "admin"}, headers=api.admin)
    expect(r, 404, "tenant_not_found")
    # Writers and readers create no keys at all; a created key never reaches another tenant.
    for auth in (world.writer, world.reader):
        expect(await client.post("/v1/keys", json={"role": "reader"}, headers=auth), 403)
    _, key = await create_key(api, world.admin, role="admin")
    r = await client.get(f"/v1/collections/{other.collection}/documents/d1", headers=bearer(key))
    assert r.status_code == 200
    assert r.json()["origin"] == world.id  # its own tenant's d1, never the other's
    # A tenant admin cannot create, read, rename or erase tenants.
    tenant_calls: list[tuple[str, str, Any]] = [
        ("POST", "/v1/tenants", {"id": "mine", "name": "x"}),
        ("GET", f"/v1/tenants/{world.id}", None),
        ("PATCH", f"/v1/tenants/{world.id}", {"name": "x"}),
        ("POST", f"/v1/tenants/{other.id}/keys", {"role": "admin"}),
        ("DELETE", f"/v1/tenants/{other.id}", None),
    ]
    for method, path, call_body in tenant_calls:
        r = await client.request(method, path, json=call_body, headers=bearer(key))
        expect(r, 403, "forbidden")
