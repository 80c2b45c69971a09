"""Broken object-level authorization: every route that names an object, with another tenant's ids.

The list of routes comes from the app's route table, so a new route with a path parameter is
attacked automatically (and fails here until it hides other tenants' objects, or until this file
learns a value for its new parameter).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tenantsearch.auth.rbac import MATRIX
from tenantsearch.store.records import Role
from tests.security.world import (
    TenantWorld,
    build_tenant,
    call,
    expect,
    made_up,
    required_actions,
    route_table,
    search_ids,
)
from tests.support.api import Api, bearer
from tests.support.oidc_issuer import OidcIssuer

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

# Routes that create the named object in the caller's own tenant when it does not exist there:
# another tenant's name is then simply a free name. They must not touch the other tenant's object.
CREATES_IN_CALLERS_TENANT = {("PUT", "/v1/collections/{name}")}


async def snapshot(client: httpx.AsyncClient, admin_key: dict[str, str], world: TenantWorld) -> Any:
    """Everything of a tenant an attacker could change, as its own admin sees it."""
    auth = world.admin
    collections = expect(await client.get("/v1/collections", headers=auth), 200)["collections"]
    documents = {
        c["name"]: sorted(
            (h["id"], h["document"])
            for h in (await search_ids(client, auth, c["name"], limit=100))["hits"]
        )
        for c in collections
    }
    keys = expect(await client.get("/v1/keys", headers=auth), 200)["keys"]
    tokens = expect(await client.get("/v1/tokens", headers=auth), 200)["tokens"]
    tenant = expect(await client.get(f"/v1/tenants/{world.id}", headers=admin_key), 200)
    task = expect(await client.get(f"/v1/tasks/{world.task_id}", headers=auth), 200)
    seen_by_token = await search_ids(client, world.token, world.collection, limit=100)
    return {
        "collections": [(c["name"], c["fields"]) for c in collections],
        "documents": documents,
        "keys": sorted((k["id"], k["role"], str(k["collections"])) for k in keys),
        "tokens": sorted((t["id"], str(t["filter"])) for t in tokens),
        "tenant": (tenant["id"], tenant["name"], tenant["status"]),
        "task": (task["id"], task["status"], task["indexed"]),
        "token sees": sorted(h["id"] for h in seen_by_token["hits"]),
        # Every credential of the tenant still works.
        "credentials": [
            (await client.get("/v1/collections", headers=h)).status_code
            for h in (world.admin, world.writer, world.reader, world.limited)
        ],
    }


def normalized(response: httpx.Response, values: dict[str, str]) -> dict[str, Any]:
    """The problem body with the ids that were asked for blanked out, and no request id."""
    body: dict[str, Any] = response.json()
    body.pop("request_id", None)
    detail = str(body.get("detail", ""))
    for value in sorted(values.values(), key=len, reverse=True):
        detail = detail.replace(value, "<id>")
    body["detail"] = detail
    return body


async def test_every_route_with_a_path_parameter_hides_other_tenants_objects(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    client = sec_client
    a = await build_tenant(sec_api, collection="a-docs", other="a-other")
    b = await build_tenant(sec_api, collection="b-docs", other="b-other")
    before = await snapshot(client, sec_api.admin, a)

    # A's real object ids, by path parameter name.
    theirs: dict[str, str] = {
        "name": a.collection,
        "doc_id": "d1",
        "task_id": a.task_id,
        "key_id": a.key_ids["reader"],
        "token_id": a.token_id,
        "tenant_id": a.id,
    }
    # Every kind of credential tenant B holds.
    attackers: dict[str, tuple[Role, dict[str, str]]] = {
        "B admin key": (Role.ADMIN, b.admin),
        "B writer key": (Role.WRITER, b.writer),
        "B reader key": (Role.READER, b.reader),
        "B limited admin key": (Role.ADMIN, b.limited),
        "B tenant token": (Role.TENANT_TOKEN, b.token),
        "B admin JWT": (Role.ADMIN, bearer(issuer.mint(tenant_id=b.id, roles=["admin"]))),
        "B reader JWT": (Role.READER, bearer(issuer.mint(tenant_id=b.id, roles=["reader"]))),
    }

    routes = [r for r in route_table() if r.params]
    assert len(routes) >= 14, [str(r) for r in routes]
    # Routes that may create something in B's namespace go last.
    routes.sort(key=lambda r: r.key in CREATES_IN_CALLERS_TENANT)
    checked = 0
    for route in routes:
        (action,) = required_actions(route.dependant)
        if any(action in MATRIX[role] for role, _ in attackers.values()):
            missing_params = [p for p in route.params if p not in theirs]
            assert not missing_params, f"{route}: give tenant A a real value for {missing_params}"
        for who, (role, auth) in attackers.items():
            real = {p: theirs.get(p) or made_up(p) for p in route.params}
            fake = {p: made_up(p) for p in route.params}
            r_real = await call(client, route, real, auth)
            r_fake = await call(client, route, fake, auth)
            where = f"{route} as {who}: {r_real.status_code} {r_real.text[:300]}"
            if action not in MATRIX[role]:
                assert r_real.status_code == r_fake.status_code == 403, where
            elif route.key in CREATES_IN_CALLERS_TENANT:
                # A free name in B's tenant: created there (or 404 for a key limited elsewhere).
                assert r_real.status_code in (200, 201, 404), where
                assert (r_real.status_code == 404) == (r_fake.status_code == 404), where
                continue
            else:
                assert r_real.status_code == r_fake.status_code == 404, where
            assert r_real.headers["content-type"] == "application/problem+json", where
            # Same code, same words: nothing tells "exists elsewhere" from "does not exist".
            assert normalized(r_real, real) == normalized(r_fake, fake), where
            checked += 1
    assert checked >= len(routes) * (len(attackers) - 1)

    # Nothing of A's changed, and B's collection named like A's (if B created one) is B's own.
    assert await snapshot(client, sec_api.admin, a) == before
    r = await client.get(f"/v1/collections/{a.collection}", headers=b.admin)
    if r.status_code == 200:
        assert (await search_ids(client, b.admin, a.collection))["total"] == 0


async def test_object_references_in_bodies_and_queries(
    sec_client: httpx.AsyncClient, sec_api: Api
) -> None:
    """Ids travel in bodies and query strings too: a token minted for A's collection name, A's
    tasks listed by status, A's audit trail asked for by tenant."""
    client = sec_client
    a = await build_tenant(sec_api, collection="a-docs", other="a-other")
    b = await build_tenant(sec_api, collection="b-docs", other="b-other")
    for names in ([a.collection], [b.collection, a.collection]):
        r = await client.post("/v1/tokens", json={"collections": names}, headers=b.admin)
        expect(r, 404, "collection_not_found")
    tasks = expect(await client.get("/v1/tasks?limit=1000", headers=b.admin), 200)["tasks"]
    assert a.task_id not in {t["id"] for t in tasks}
    assert {t["collection"] for t in tasks} <= {b.collection, b.other}
    events = expect(await client.get(f"/v1/audit?tenant={a.id}", headers=b.admin), 200)["events"]
    assert events
    assert {e["tenant_id"] for e in events} == {b.id}
    # An Idempotency-Key A used is B's own: B's write lands as a new task in B.
    docs = [{"id": "i1", "title": "a's write"}]
    headers = {**a.admin, "Idempotency-Key": "same-key"}
    r = await client.post(f"/v1/collections/{a.collection}/documents", json=docs, headers=headers)
    task_a = expect(r, 202)["id"]
    headers = {**b.admin, "Idempotency-Key": "same-key"}
    r = await client.post(f"/v1/collections/{b.collection}/documents", json=docs, headers=headers)
    replayed = expect(r, 202)
    assert replayed["id"] != task_a
    assert replayed["collection"] == b.collection
    # A key of B limited to A's collection names reaches nothing of A's.
    key = await sec_api.key(b.admin, role="reader", collections=[a.collection])
    r = await client.post(f"/v1/collections/{a.collection}/search", json={}, headers=key)
    expect(r, 404, "collection_not_found")
    assert expect(await client.get("/v1/collections", headers=key), 200)["collections"] == []
