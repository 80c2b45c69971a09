"""Function-level authorization, generated from the route table and ``auth/rbac.py``'s MATRIX.

Every API route names exactly one action (``Depends(Requires(action))``) unless it is public.
Then every route is called as every kind of principal: a role whose MATRIX entry lacks the
route's action gets 403 ``forbidden``; a role that has it is never refused (a key limited to other
collections gets 404 on a collection-scoped route instead, and 403 on the tenant's audit log).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tenantsearch.auth.rbac import MATRIX, Action
from tenantsearch.store.records import Role
from tests.security.world import (
    FIELDS,
    RouteInfo,
    TenantWorld,
    build_tenant,
    call,
    create_key,
    expect,
    made_up,
    mint_token,
    required_actions,
    route_table,
)
from tests.support.api import Api, bearer, unique
from tests.support.oidc_issuer import OidcIssuer

pytestmark = pytest.mark.timeout(120)
in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the shared app's loop

PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
# Outside the role matrix but not public: /metrics checks its own credential (the metrics token
# or the platform admin), see test_metrics_name_tenants_only_to_the_operator.
SELF_GUARDED = {("GET", "/metrics")}
# The platform admin holds these actions but no tenant: tenant-scoped routes answer 403
# tenant_key_required (docs/security.md), not data of some tenant.
TENANT_SCOPED_FOR_PLATFORM_ADMIN = {("GET", "/v1/tasks")}

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_every_route_declares_exactly_one_action() -> None:
    table = route_table()
    served = {r.key for r in table}
    assert served >= PUBLIC, f"stale public allow-list entries: {PUBLIC - served}"
    for route in table:
        actions = required_actions(route.dependant)
        if route.key in PUBLIC:
            assert actions == [], f"{route} is public but requires {actions}"
            continue
        assert route.is_api_route, f"{route} is neither public nor an API route with a rule"
        assert len(actions) == 1, f"{route} must declare exactly one Requires(action): {actions}"
    # Every action is used by some route, and every role is in the matrix.
    used = {a for r in table for a in required_actions(r.dependant)}
    assert used == set(Action), f"actions no route performs: {set(Action) - used}"
    assert set(MATRIX) == set(Role)


def test_security_doc_matrix_agrees_with_the_code() -> None:
    lines = SECURITY_DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*action\s*\|", line))
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows: dict[str, dict[str, bool]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.match(r"`([^`]+)`", cells[0])
        assert match, f"a matrix row without an `action`: {line}"
        rows[match.group(1)] = {
            role: cell.lower().startswith("yes")
            for role, cell in zip(header[1:], cells[1:], strict=True)
        }
    assert set(header[1:]) == {r.value for r in Role}, header
    assert set(rows) == {a.value for a in Action}, sorted(rows)
    for action, by_role in rows.items():
        for role, allowed in by_role.items():
            in_code = Action(action) in MATRIX[Role(role)]
            assert allowed == in_code, f"docs say {role} {'may' if allowed else 'may not'} {action}"


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    auth: dict[str, str]
    limited: bool = False  # a key limited to collections other than the world's main one


@in_module_loop
async def test_every_route_as_every_role(
    sec_client: httpx.AsyncClient, sec_api: Api, issuer: OidcIssuer
) -> None:
    client, api = sec_client, sec_api
    world = await build_tenant(api)
    _, limited_reader = await create_key(api, world.admin, role="reader", collections=[world.other])
    callers = [
        Caller("platform admin key", Role.PLATFORM_ADMIN, api.admin),
        Caller("platform admin JWT", Role.PLATFORM_ADMIN, jwt(issuer, None, "platform-admin")),
        Caller("admin key", Role.ADMIN, world.admin),
        Caller("admin JWT", Role.ADMIN, jwt(issuer, world.id, "admin")),
        Caller("writer key", Role.WRITER, world.writer),
        Caller("writer JWT", Role.WRITER, jwt(issuer, world.id, "writer")),
        Caller("reader key", Role.READER, world.reader),
        Caller("reader JWT", Role.READER, jwt(issuer, world.id, "reader")),
        Caller("tenant token", Role.TENANT_TOKEN, world.token),
        Caller("limited admin key", Role.ADMIN, world.limited, limited=True),
        Caller("limited reader key", Role.READER, bearer(limited_reader), limited=True),
    ]
    fresh = Fresh(api, world)
    table = [r for r in route_table() if r.key not in PUBLIC]
    for route in table:
        (action,) = required_actions(route.dependant)
        # Without credentials, or with a wrong one: 401 everywhere.
        expect(await call(client, route, fresh.guess(route), None), 401, "missing_credentials")
        garbage = bearer("ts_" + "a" * 16 + "_" + "A" * 43)
        expect(await call(client, route, fresh.guess(route), garbage), 401)

        for caller in callers:
            allowed = action in MATRIX[caller.role]
            values = await fresh.values(route, caller) if allowed else fresh.guess(route)
            r = await call(client, route, values, caller.auth)
            where = f"{route} as {caller.name}: {r.status_code} {r.text[:300]}"
            assert r.status_code < 500, where
            if not allowed:
                expect(r, 403, "forbidden")
            elif caller.limited and "name" in route.params:
                expect(r, 404, "collection_not_found")
            elif caller.limited and route.key == ("POST", "/v1/keys"):
                # The sample body asks for an unlimited key: more than a limited key may grant.
                expect(r, 403, "collections_exceed_creator")
            elif caller.limited and route.key == ("GET", "/v1/audit"):
                # The tenant's events name keys and collections beyond a limited key's reach.
                expect(r, 403, "collections_limited")
            elif caller.role is Role.PLATFORM_ADMIN and route.key in (
                TENANT_SCOPED_FOR_PLATFORM_ADMIN
            ):
                expect(r, 403, "tenant_key_required")
            else:
                assert r.status_code not in (401, 403), where


def jwt(issuer: OidcIssuer, tenant: str | None, role: str) -> dict[str, str]:
    return bearer(issuer.mint(tenant_id=tenant, roles=[role], sub=f"{role}-user"))


class Fresh:
    """Path parameter values: the world's real objects, and disposable ones for deletions."""

    def __init__(self, api: Api, world: TenantWorld) -> None:
        self.api = api
        self.world = world

    def guess(self, route: RouteInfo) -> dict[str, str]:
        params = route.params
        real = {
            "name": self.world.collection,
            "doc_id": "d1",
            "task_id": self.world.task_id,
            "key_id": self.world.key_ids["reader"],
            "token_id": self.world.token_id,
            "tenant_id": self.world.id,
        }
        return {p: real.get(p) or made_up(p) for p in params}

    async def values(self, route: RouteInfo, caller: Caller) -> dict[str, str]:
        values = self.guess(route)
        method = route.method
        if method != "DELETE" and not (method == "PUT" and "doc_id" in values):
            return values
        # Deleting or overwriting: a disposable object, so the world stays as built.
        world, api = self.world, self.api
        if "doc_id" in values:
            values["doc_id"] = unique("disposable")
        elif "name" in values:
            values["name"] = unique("disposable")
            await api.collection(world.admin, values["name"], FIELDS)
        if "key_id" in values:
            values["key_id"], _ = await create_key(
                api, world.admin, role="reader", collections=[world.other]
            )
        if "token_id" in values:
            values["token_id"], _ = await mint_token(api, world.admin, [world.other])
        if "tenant_id" in values:
            values["tenant_id"], _ = await api.tenant()
        return values


@in_module_loop
async def test_public_routes_answer_without_credentials(
    sec_client: httpx.AsyncClient, sec_api: Api
) -> None:
    world = await build_tenant(sec_api, collection="secret-plans", other="more-plans")
    for method, path in sorted(PUBLIC - SELF_GUARDED):
        r = await sec_client.request(method, path)
        assert r.status_code == 200, (path, r.text[:200])
        for secret in (*world.secrets, world.collection, world.other, "alpha quick fox"):
            assert secret not in r.text, (path, secret)


@in_module_loop
async def test_metrics_name_tenants_only_to_the_operator(
    sec_client: httpx.AsyncClient, sec_api: Api
) -> None:
    """Per-tenant figures are the operator's: no credential, or a tenant's, sees none of them."""
    world = await build_tenant(sec_api)
    assert (await sec_client.get("/metrics")).status_code == 401
    r = await sec_client.get("/metrics", headers=world.admin)
    assert r.status_code == 403
    assert world.id not in r.text
    r = await sec_client.get("/metrics", headers=sec_api.admin)
    assert r.status_code == 200
    assert world.id in r.text
